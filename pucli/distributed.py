"""Runs over several processes, launched by ``torchrun``: the process group and the collectives pucli uses.

``torchrun --nproc_per_node=N pucli select ...`` (PyTorch's launcher, also
``python -m torch.distributed.run``) starts N copies of the same command with ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment. A command calls
:func:`setup` once: with ``WORLD_SIZE`` > 1 it joins the process group (``nccl`` on CUDA, ``gloo``
on the CPU, https://pytorch.org/docs/stable/distributed.html) and gives each process its GPU
(``cuda:LOCAL_RANK``); without torchrun nothing changes and every helper here is a no-op for one
process, so the engine calls them unconditionally.

How the stages split the work:

- ``select`` (frozen descriptors) and ``expand``: each rank reads and runs the teacher on one
  contiguous block of whole batches of the pool (:func:`batch_block`), so every image passes
  through the network in the same batch as in a one-process run and gets the same bits; the rows
  are gathered in pool order. The selector head (seconds of work) is trained by rank 0 alone,
  which also writes the outputs.
- ``distill``: DistributedDataParallel, each rank training on its part of every batch.

Only rank 0 (:func:`is_main`) reports progress and writes files.
"""

from __future__ import annotations

import atexit
import datetime
import math
import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "launched",
    "setup",
    "teardown",
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "batch_block",
    "batch_share",
    "gather_rows",
    "gather_objects",
    "broadcast_object",
    "all_reduce_sum",
    "barrier",
]

T = TypeVar("T")

# Rank 0 trains the selector head and writes outputs while the others wait in a collective:
# minutes on a large pool, far above the usual 10-minute NCCL watchdog.
TIMEOUT = datetime.timedelta(hours=2)
# Bytes per rank in one collective of gather_rows.
GATHER_BYTES = 256 * 2**20


def launched() -> bool:
    """True when this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group when launched by it; returns the device this rank runs on.

    ``device`` is the one the user asked for: a CUDA device without an index becomes
    ``cuda:LOCAL_RANK`` (one GPU per process); ``nccl`` is used with CUDA, ``gloo`` otherwise.
    A single process (no torchrun, or ``--nproc_per_node=1``) gets ``device`` back unchanged.
    """
    if not launched() or dist.is_initialized():
        return device
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    atexit.register(teardown)
    return device


def teardown() -> None:
    """Leave the process group (registered at exit by :func:`setup`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without torchrun)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, the process that reports progress and writes outputs."""
    return rank() == 0


def batch_block(count: int, batch_size: int) -> tuple[int, int]:
    """``(start, end)``: this rank's contiguous share of ``count`` items, in whole batches.

    The ``ceil(count / batch_size)`` batches of a one-process pass are dealt out in contiguous
    runs, the first ranks taking one more when they do not divide evenly, so each batch is the
    same set of items as in a one-process run (a network then gives bit-identical outputs).
    """
    batches = -(-count // batch_size)
    share, extra = divmod(batches, world_size())
    first = rank() * share + min(rank(), extra)
    last = first + share + (rank() < extra)
    return min(count, first * batch_size), min(count, last * batch_size)


def batch_share(positions: torch.Tensor) -> torch.Tensor:
    """This rank's part of one batch, given as the (B,) positions of its items: a contiguous slice,
    the slices' sizes differing by at most one (empty when B < world size); all of it for one process."""
    if not is_distributed():
        return positions
    return positions.tensor_split(world_size())[rank()]


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(index: torch.Tensor, rows: torch.Tensor, *, to_all: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Concatenate every rank's ``index`` (n_r,) int64 and ``rows`` (n_r, ...) in rank order.

    Ranks may hold different numbers of rows (unreadable images are dropped). The result lands on
    rank 0, where other ranks get None, or with ``to_all`` on every rank; tensors come back on the
    CPU with their dtypes. Rows travel in pieces of at most :data:`GATHER_BYTES` per rank, so a
    GPU only ever holds ``world_size`` such pieces for the exchange. One process: the inputs are
    returned as they are.
    """
    if not is_distributed():
        return index, rows
    device = _comm_device()
    count = torch.tensor([len(index)], dtype=torch.int64, device=device)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    receive = to_all or is_main()
    results = []
    for tensor in (index, rows):
        # From the shape, not the data: a rank with no rows must cut the same pieces as the others.
        row_bytes = max(1, math.prod(tensor.shape[1:]) * tensor.element_size())
        step = max(1, GATHER_BYTES // row_bytes)
        pieces: list[list[torch.Tensor]] = [[] for _ in sizes]
        for offset in range(0, max(sizes), step):
            width = min(step, max(sizes) - offset)
            piece = torch.zeros((width, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
            mine = tensor[offset:offset + width]
            piece[: len(mine)] = mine.to(device)
            parts = [torch.empty_like(piece) for _ in sizes] if receive else None
            if to_all:
                dist.all_gather(parts, piece)
            else:
                dist.gather(piece, parts, dst=0)
            if parts is not None:
                for source, part in enumerate(parts):
                    keep = max(0, min(width, sizes[source] - offset))
                    if keep:
                        pieces[source].append(part[:keep].cpu())
        if receive:
            flat = [piece for per_rank in pieces for piece in per_rank]
            results.append(torch.cat(flat) if flat else tensor.new_empty((0, *tensor.shape[1:])).cpu())
    if not receive:
        return None
    return results[0], results[1]


def gather_objects(value: T) -> list[T]:
    """Every rank's picklable ``value``, in rank order, on every rank (``[value]`` for one process)."""
    if not is_distributed():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_object(value: T) -> T:
    """Rank 0's picklable ``value`` on every rank (what other ranks pass is ignored)."""
    if not is_distributed():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place, and return it (unchanged for one process)."""
    if is_distributed():
        if tensor.device != _comm_device():
            moved = tensor.to(_comm_device())
            dist.all_reduce(moved)
            tensor.copy_(moved)
        else:
            dist.all_reduce(tensor)
    return tensor


def barrier() -> None:
    """Wait until every rank gets here (nothing for one process)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
