"""Device and CPU-thread choices shared by every command that runs a network."""

from __future__ import annotations

import os

import torch

from pucli.errors import OptionError

__all__ = ["autocast_dtype", "resolve_device", "available_cpus", "configure_threads", "cpu_overload",
           "cpu_has_native_bfloat16", "default_workers"]


def available_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise any torch device string.

    Raises:
        OptionError: unknown device string, or CUDA asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise OptionError("device", name, "not a device; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("device", name, "CUDA is not available on this machine; use cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise OptionError("device", name, f"only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` or the CPUs available to this process.

    torch may otherwise size its pool by the host's cores, not the container's share, and
    oversubscribe a small machine. Returns the number set.
    """
    count = threads or available_cpus()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def cpu_overload() -> float | None:
    """The 1-minute load average when it is above the CPUs this process may use (other work fills
    them already), else None; None too where the system does not say (not Unix).

    On such a CPU a network run on several threads can be many times slower than on one: torch's
    OpenMP threads spin-wait for each other at every operation, and a thread the scheduler has
    parked holds up the others (measured: LeNet-5-half training, 2 cores, load 3: 1 thread
    12,800 img/s, 2 threads 1,700 img/s). pucli warns rather than lowering the default, because
    the thread count changes floating-point sums: the same command must give the same student.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    return load if load > available_cpus() else None


def default_workers(num_items: int) -> int:
    """Data-loading worker processes: none for a handful of files (start-up costs more than it
    saves), else one per available CPU, at most 8."""
    return 0 if num_items < 512 else min(8, available_cpus())


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 ``amx_bf16`` or ``avx512_bf16``, read from
    ``/proc/cpuinfo``; False where it cannot be read). Without it, bfloat16 autocast on the CPU is
    emulated and slower than float32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype ``torch.autocast`` runs a training step in for ``precision`` on ``device``, or None
    for float32 throughout (parameters, optimizer state and saved weights stay float32 either way).

    ``auto``: on CUDA, bfloat16 where the GPU supports it, else float16 (with a gradient scaler);
    on the CPU, float32 (the default there stays bit-for-bit as before). ``bfloat16`` on the CPU is
    oneDNN's bfloat16 kernels: several times faster on CPUs with AMX or AVX-512 BF16
    (:func:`cpu_has_native_bfloat16`; docs/benchmarks.md, "bfloat16 on the CPU").

    ``precision`` is one of :data:`pucli.kd.distill.config.PRECISIONS` (checked there).

    Raises:
        OptionError: ``float16`` on the CPU (no float16 autocast kernels there: use bfloat16).
    """
    if precision == "float32":
        return None
    if device.type == "cuda":
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if precision == "bfloat16" else torch.float16
    if precision == "auto":
        return None
    if precision == "float16":
        raise OptionError("precision", precision, "float16 mixed precision needs a CUDA device; use bfloat16 on the CPU")
    return torch.bfloat16
