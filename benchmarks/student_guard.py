"""Student guard (issue 30): does the default pipeline still train as good a student as recorded?

Runs the quickstart pipeline, every option at its default, on a fixed pool and compares the
student's MNIST test top-1 with the figure recorded in the repository
(``benchmarks/results/student_guard.json``). Run it before every change to ``select``, ``expand``
or ``distill``; it is a benchmark check, not a timed test, and not part of pytest
(``tests/test_student_guard.py`` checks its argument parsing and comparison only).

The pipeline, with the code of ``--pucli-root`` (default: this checkout)::

    pucli select TEACHER --positive P --unlabeled POOL --prior 0.2 --out - \\
      | pucli expand TEACHER --positive P --index - --out expanded
    pucli distill TEACHER --data expanded --student lenet5_half --out student-s<seed>.safetensors [--seed S]
    pucli evaluate TEACHER student-s0.safetensors ... --data <MNIST t10k>

with ``--threads 1`` on every command (results depend on the thread count; one thread keeps them
identical from run to run and machine to machine with the same torch build) and a fresh, empty
pucli cache and state folder for the run (no descriptor cache of another version is read).

The fixed pool is an issue-30 pool (``benchmarks/regression_pool_data.py --seed 3``): 20,000
images, 4,000 MNIST digits (MNIST train 30,000..59,999, never seen by the teacher) among 16,000
Fashion-MNIST and KMNIST images, drawn from the mnist-pu PNGs; the class prior 0.20 is given.
Of the four draws measured for issue 30 (seeds 0-3) it is the one on which the recipe before the fix
(a 3 % learning-rate warm-up) lost second-stage channels at distill seeds 0, 1 and 2 (97.03 / 97.44 /
97.46 % against 97.74 / 97.81 / 97.99 % with it), so the guard is known to catch that failure;
``P`` is mnist-pu's ``positive/nl10-seed0`` (10 labeled digits per class); the teacher is mnist-pu's
LeNet-5 (``benchmarks/train_teacher.py``, the quickstart's recipe) trained with one thread. All of
it is built from ``../shared/data`` on first use and cached under
``<pucli cache>/benchmarks/`` (mnist-pu's root is the quickstart's; the teacher and the pool lists
are the guard's own): nothing is downloaded.

Why several seeds. A LeNet-5-half student on a 4,100-image set lands anywhere in about 96.9-98.0 %
with the same recipe: whether a few of its 8 second-stage ReLU channels die in the first epochs
depends on the batch order, which a different seed -- or merely the same images in another order
in the index -- re-draws (issue 30: that, not a worse recipe, was the 0.5-0.9-point "drop"). One
run therefore says little about a change; the guard distils with seeds 0, 1 and 2 (seed 0 is
what a user gets) and judges the mean, which moves by well under 0.3 points between harmless
re-orderings. ``--seeds 0`` gives the single default run when a quick look is enough.

Verdict: ``ok`` when the mean top-1 is at least the recorded mean minus ``--tolerance`` (0.3
points), ``DROP`` (exit 1) otherwise; ``not comparable`` (exit 2) when the teacher, the pool or the
labeled set differ from the recorded ones (another torch build can train another teacher: look,
then re-record), or when no recorded seed was run. stdout gets one verdict line, then the run's
JSON record on one line; progress goes to stderr.

Usage::

    python benchmarks/student_guard.py                        # this checkout, seeds 0 1 2
    python benchmarks/student_guard.py --pucli-root /tmp/wt   # another checkout's pucli
    python benchmarks/student_guard.py --seeds 0 --jobs 2     # one seed; or distil two at once
    python benchmarks/student_guard.py --write-record         # measure and (re)write the record

Options: ``--record PATH`` (the recorded figure), ``--tolerance POINTS``, ``--python EXE`` (the
interpreter that runs pucli; default this one), ``--data-dir DIR`` (the shared data; default
``$PUCLI_SHARED_DATA`` or ``<repo>/../shared/data``), ``--teacher FILE`` (skip training one),
``--work DIR`` (keep the run's files there; default a temporary folder, removed afterwards),
``--jobs N`` (distillations at a time, each on one thread).

Time on 2 CPU cores: about 5 minutes (select 20 s, expand 5 s, 3 x distill 60-80 s, evaluate
15 s), plus about 2.5 minutes the first time (mnist-pu's PNGs, the teacher).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
DEFAULT_RECORD = BENCHMARKS / "results" / "student_guard.json"
RECORD_FORMAT = "pucli-student-guard"
RECORD_VERSION = 1
DEFAULT_TOLERANCE = 0.3
DEFAULT_SEEDS = (0, 1, 2)
POOL_SEED = 3
PRIOR = "0.2"
POSITIVE = "positive/nl10-seed0"
STUDENT = "lenet5_half"
THREADS = "1"

EXIT_OK, EXIT_DROP, EXIT_NOT_COMPARABLE = 0, 1, 2


def _stderr(message: str) -> None:
    print(f"student_guard: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of the module docstring."""
    parser = argparse.ArgumentParser(
        description="Run the default pipeline on the issue-30 pool and compare the student with the recorded figure.")
    parser.add_argument("--pucli-root", type=Path, default=REPO,
                        help="checkout whose pucli runs the pipeline (default: this one)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs pucli (default: this one)")
    parser.add_argument("--record", type=Path, default=DEFAULT_RECORD,
                        help="the recorded figure (default: benchmarks/results/student_guard.json)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="points the mean top-1 may fall below the record (default: 0.3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                        help="distill seeds; the verdict is on their mean (default: 0 1 2; 0 is the default)")
    parser.add_argument("--jobs", type=int, default=1, help="distillations at a time, one thread each (default: 1)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="shared data folder (default: $PUCLI_SHARED_DATA or <repo>/../shared/data)")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="teacher weights to use instead of the guard's one-thread LeNet-5")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the run's files in this folder (default: a temporary one, removed)")
    parser.add_argument("--write-record", action="store_true",
                        help="measure, then write the record instead of comparing with it")
    args = parser.parse_args(argv)
    if args.tolerance < 0:
        parser.error("--tolerance must be >= 0")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds: give each seed once")
    return args


# ----------------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Verdict:
    """The guard's answer: ``status`` ok | DROP | not comparable, its exit code and one line."""

    status: str
    exit_code: int
    line: str
    recorded_mean: float | None = None
    measured_mean: float | None = None


#: Inputs that must match the record for the figures to be compared.
COMPARABLE_KEYS = ("teacher_sha256", "pool_sha256", "positive_sha256", "student", "prior")


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def compare(measured: dict[str, Any], record: dict[str, Any], tolerance: float = DEFAULT_TOLERANCE) -> Verdict:
    """Compare a run's record with the recorded one, over the seeds both ran.

    Both hold ``inputs`` (the :data:`COMPARABLE_KEYS`) and ``top1`` ({seed as str: percent}).
    ``DROP`` when the measured mean over the common seeds is more than ``tolerance`` points below
    the recorded mean over the same seeds; ``not comparable`` when an input differs or no seed is
    common.
    """
    differing = [key for key in COMPARABLE_KEYS
                 if measured.get("inputs", {}).get(key) != record.get("inputs", {}).get(key)]
    if differing:
        return Verdict("not comparable", EXIT_NOT_COMPARABLE,
                       f"student guard: not comparable: {', '.join(differing)} differ from the record "
                       "(check them, then --write-record)")
    seeds = sorted(set(measured.get("top1", {})) & set(record.get("top1", {})), key=int)
    if not seeds:
        return Verdict("not comparable", EXIT_NOT_COMPARABLE,
                       f"student guard: not comparable: no common seed (ran {sorted(measured.get('top1', {}))}, "
                       f"recorded {sorted(record.get('top1', {}))})")
    now = mean([float(measured["top1"][s]) for s in seeds])
    then = mean([float(record["top1"][s]) for s in seeds])
    change = now - then
    per_seed = ", ".join(f"s{s} {float(measured['top1'][s]):.2f}" for s in seeds)
    detail = (f"mean top-1 {now:.2f} % over seeds {','.join(seeds)} vs recorded {then:.2f} % "
              f"({change:+.2f} points, tolerance -{tolerance:g}; {per_seed})")
    if change < -tolerance - 1e-9:
        return Verdict("DROP", EXIT_DROP, f"student guard: DROP: {detail}", then, now)
    return Verdict("ok", EXIT_OK, f"student guard: ok: {detail}", then, now)


def read_record(path: Path) -> dict[str, Any]:
    """The recorded figure; raises SystemExit (exit 2) with one line when it is missing or not one."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SystemExit(f"student guard: cannot read the record {path}: {error}; run with --write-record") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise SystemExit(f"student guard: {path} is not a student-guard record")
    return record


# ------------------------------------------------------------------------------------ the run


def _tensor_digest(path: Path) -> str:
    """sha256 over a safetensors file's tensors (sorted names, dtypes, shapes, bytes), not its
    metadata: the same weights saved by another pucli version give the same digest."""
    from safetensors.numpy import load_file

    digest = hashlib.sha256()
    for name, array in sorted(load_file(str(path)).items()):
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode("utf-8"))
        digest.update(array.tobytes())
    return digest.hexdigest()


def _sha256_relative_list(paths: Sequence[str], root: Path) -> str:
    """sha256 of a path list with ``root`` taken off each path (the same pool wherever it is built)."""
    prefix = str(root).rstrip("/") + "/"
    text = "".join((p[len(prefix):] if p.startswith(prefix) else p) + "\n" for p in paths)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _folder_digest(folder: Path) -> str:
    """sha256 over the sorted relative paths and contents of the files under ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode("utf-8") + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _run(command: list[str], *, env: dict[str, str] | None = None, stdin: Any = None, stdout: Any = None,
         log: Path | None = None, preexec_fn: Any = None, cwd: Path | None = None) -> None:
    log_handle = open(log, "w", encoding="utf-8") if log else None
    try:
        result = subprocess.run(command, env=env, cwd=cwd, stdin=stdin,
                                stdout=stdout if stdout is not None else subprocess.PIPE,
                                stderr=log_handle if log_handle else subprocess.PIPE, preexec_fn=preexec_fn,
                                check=False)
    finally:
        if log_handle:
            log_handle.close()
    if result.returncode != 0:
        where = f"; see {log}" if log else ""
        raise SystemExit(f"student guard: failed ({result.returncode}): {' '.join(command)}{where}")


def _guard_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the guard's own data scripts: this checkout's pucli."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra or {})
    return env


def _cache_root() -> Path:
    sys.path.insert(0, str(REPO))
    from pucli.paths import cache_dir

    return cache_dir() / "benchmarks"


def _one_cpu() -> None:
    """preexec_fn: pin the child to one CPU, so ``train_teacher.py`` uses one thread."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def prepare_inputs(python: str, data_dir: Path | None, teacher: Path | None) -> dict[str, Path]:
    """mnist-pu's root, the issue-30 pool and the teacher, built on first use (guard's own code)."""
    cache = _cache_root()
    data_args = ["--data-dir", str(data_dir)] if data_dir else []
    started = time.perf_counter()
    done = subprocess.run([python, str(BENCHMARKS / "mnist_pu_data.py"), *data_args], env=_guard_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"student guard: building mnist-pu failed: {done.stderr.strip().splitlines()[-1:]}")
    root = Path(done.stdout.strip().splitlines()[-1])
    pool_dir = cache / "student-guard" / "pool"
    done = subprocess.run([python, str(BENCHMARKS / "regression_pool_data.py"), "--root", str(root), "--out",
                           str(pool_dir), "--seed", str(POOL_SEED)], env=_guard_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"student guard: drawing the pool failed: {done.stderr.strip()}")
    pool = Path(done.stdout.strip().splitlines()[-1])
    if teacher is None:
        teacher = cache / "student-guard" / "teacher" / "lenet5.safetensors"
        if not teacher.is_file():
            _stderr(f"training the one-thread LeNet-5 teacher (about 2 min) into {teacher}")
            teacher.parent.mkdir(parents=True, exist_ok=True)
            _run([python, str(BENCHMARKS / "train_teacher.py"), *data_args, "--out", str(teacher)],
                 env=_guard_env(), log=teacher.with_suffix(".log"), preexec_fn=_one_cpu)
    _stderr(f"inputs ready in {time.perf_counter() - started:.0f} s: {root}, {pool}, {teacher}")
    return {"root": root, "pool": pool, "teacher": teacher, "positive": root / POSITIVE, "test": root / "test"}


def _checkout_description(root: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"path": str(root), "commit": git("rev-parse", "HEAD") or None,
            "modified_files": len([line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
                                   if line.strip()])}


def run_pipeline(args: argparse.Namespace, inputs: dict[str, Path], work: Path) -> dict[str, Any]:
    """select | expand, distill per seed, evaluate, with ``--pucli-root``'s code; returns the record."""
    pucli_root = Path(os.path.abspath(args.pucli_root))
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(pucli_root), "PUCLI_CACHE_DIR": str(work / "pucli-cache"),
                "PUCLI_STATE_DIR": str(work / "pucli-state"), "OMP_NUM_THREADS": THREADS})
    found = subprocess.run([args.python, "-c", "import pucli; print(pucli.__file__)"], env=env, cwd=work,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    module = Path(found.stdout.strip()) if found.returncode == 0 else None
    if module is None or pucli_root not in module.resolve().parents:
        raise SystemExit(f"student guard: {args.python} does not import pucli from {pucli_root} "
                         f"(got {found.stdout.strip() or found.stderr.strip()[-200:]})")
    pucli = [args.python, "-m", "pucli"]
    # `python -m` puts the working directory first on sys.path: every pucli command runs in ``work``
    # (no pucli package there), so PYTHONPATH's checkout is the one imported, as checked above.
    here = {"env": env, "cwd": work}
    teacher, positive = str(inputs["teacher"]), str(inputs["positive"])
    timings: dict[str, float] = {}
    load_start = os.getloadavg()[0]

    started = time.perf_counter()
    index = work / "index.tsv"
    with open(index, "wb") as handle:
        _run([*pucli, "select", "--teacher", teacher, "--positive", positive, "--unlabeled", str(inputs["pool"]),
              "--prior", PRIOR, "--out", "-", "--threads", THREADS], **here, stdout=handle, log=work / "select.log")
    timings["select"] = time.perf_counter() - started
    started = time.perf_counter()
    with open(index, "rb") as handle:
        _run([*pucli, "expand", "--teacher", teacher, "--positive", positive, "--index", "-", "--out",
              str(work / "expanded"), "--threads", THREADS], **here, stdin=handle, log=work / "expand.log")
    timings["expand"] = time.perf_counter() - started

    def distill(seed: int) -> Path:
        out = work / f"student-s{seed}.safetensors"
        seed_args = [] if seed == 0 else ["--seed", str(seed)]  # seed 0: exactly the user's command
        _run([*pucli, "distill", teacher, "--data", str(work / "expanded"), "--student", STUDENT, "--out", str(out),
              "--threads", THREADS, *seed_args], **here, log=work / f"distill-s{seed}.log")
        return out

    started = time.perf_counter()
    _stderr(f"distilling {len(args.seeds)} student(s), {args.jobs} at a time")
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        students = list(pool.map(distill, args.seeds))
    timings["distill"] = time.perf_counter() - started
    started = time.perf_counter()
    evaluation = work / "evaluate.json"
    with open(evaluation, "wb") as handle:
        _run([*pucli, "evaluate", teacher, *map(str, students), "--data", str(inputs["test"]), "--threads", THREADS,
              "--json"], **here, stdout=handle, log=work / "evaluate.log")
    timings["evaluate"] = time.perf_counter() - started
    models = json.loads(evaluation.read_text(encoding="utf-8"))["models"]

    kept = [line.split("\t", 1)[0] for line in index.read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#") and not line.startswith("path\t")]
    truth_path = inputs["pool"].with_suffix(".truth.tsv")
    truth = [line.split("\t") for line in truth_path.read_text(encoding="utf-8").splitlines()[1:]]
    positives = {row[0] for row in truth if row[1] == "1"}
    true_kept = len(set(kept) & positives)
    precision, recall = true_kept / max(1, len(kept)), true_kept / max(1, len(positives))
    pool_paths = inputs["pool"].read_text(encoding="utf-8").splitlines()
    top1 = {str(seed): float(model["top1"]) for seed, model in zip(args.seeds, models[1:])}
    return {
        "format": RECORD_FORMAT, "format_version": RECORD_VERSION,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "pipeline": (f"select --prior {PRIOR} --out - | expand --index -; distill --student {STUDENT} [--seed S]; "
                     f"evaluate; --threads {THREADS}, other options default"),
        "checkout": _checkout_description(pucli_root),
        "inputs": {
            "teacher_sha256": _tensor_digest(inputs["teacher"]),
            "pool_sha256": _sha256_relative_list(pool_paths, inputs["root"]),
            "positive_sha256": _folder_digest(inputs["positive"]),
            "student": STUDENT, "prior": PRIOR,
        },
        "pool": f"issue30 seed {POOL_SEED} (benchmarks/regression_pool_data.py): {len(pool_paths)} images",
        "teacher_top1": float(models[0]["top1"]),
        "selection": {"kept": len(kept), "precision": round(precision, 4), "recall": round(recall, 4),
                      "f1": round(2 * precision * recall / max(1e-12, precision + recall), 4),
                      "index_sha256": _sha256_relative_list(kept, inputs["root"])},
        "top1": top1,
        "top1_mean": round(mean(list(top1.values())), 3),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    record = None if args.write_record else read_record(args.record)
    started = time.perf_counter()
    inputs = prepare_inputs(args.python, args.data_dir, args.teacher)
    work = Path(os.path.abspath(args.work)) if args.work else Path(tempfile.mkdtemp(prefix="pucli-student-guard-"))
    if args.work:
        for stale in ("expanded", "pucli-cache", "pucli-state"):
            shutil.rmtree(work / stale, ignore_errors=True)
        for stale in work.glob("student-s*"):
            stale.unlink()
    work.mkdir(parents=True, exist_ok=True)
    try:
        measured = run_pipeline(args, inputs, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    measured["timings_s"]["total"] = round(time.perf_counter() - started, 1)
    if args.write_record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(measured, indent=2) + "\n", encoding="utf-8")
        print(f"student guard: recorded mean top-1 {measured['top1_mean']:.2f} % "
              f"({', '.join(f's{s} {v:.2f}' for s, v in measured['top1'].items())}) in {args.record}")
        print(json.dumps(measured))
        return EXIT_OK
    verdict = compare(measured, record, args.tolerance)
    measured["verdict"] = {"status": verdict.status, "recorded_mean": verdict.recorded_mean,
                           "measured_mean": verdict.measured_mean, "tolerance": args.tolerance,
                           "record": str(args.record)}
    print(verdict.line)
    print(json.dumps(measured))
    return verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())
