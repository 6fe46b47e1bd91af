"""``pucli distill --precision``: float32 against bfloat16 autocast on the CPU, in one run.

Distils the same student on the same expanded set once per precision, one after the other, with
every other option equal (``--epochs``, ``--seed 0``, ``--threads``), evaluates each student and
writes one JSON record: training images per second, wall-clock, top-1, and the 1-minute load
before and after each run. The speed figure to quote is the ratio of the two within this run.

Default set: the cifar-pu study's PU-s1 set (``benchmarks/cifar_pu.py``: mixed pool, n_l = 100,
seed 0; 12,500 images), teacher the CIFAR-10 ResNet-56, student the ResNet-20 of the same
``resnet.py``; ``--augment auto`` picks flip + crop there, so the teacher runs on every batch
and both networks are timed. Any expanded set works (``--data``, ``--teacher``, ``--arch``,
``--student``, ``--test``).

Usage::

    python benchmarks/distill_precision.py --epochs 2
    python benchmarks/distill_precision.py --data EXPANDED --teacher T --arch A --student S --test TEST

bfloat16 needs a CPU with AMX or AVX-512 BF16 to be fast; elsewhere pucli warns and it is slower.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PUCLI_BENCH_ROOT", Path.home() / ".cache/pucli/benchmarks/cifar-pu"))
MODELS = Path(os.environ.get("PUCLI_SHARED_MODELS", ROOT.parent / "shared/models")) / "resnet-cifar10"


def _default_set() -> str | None:
    found = sorted(glob.glob(str(CACHE / "study/cells/mixed-nl100-seed0/sets/pu-s1-*/expanded")))
    return found[0] if found else None


def _pucli(args: list[str], cwd: Path) -> dict:
    command = [sys.executable, "-m", "pucli", *args, "--json"]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"distill_precision: {' '.join(args[:2])} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=_default_set(), help="expanded set [default: cifar-pu study's PU-s1]")
    parser.add_argument("--teacher", default=str(CACHE / "teacher/resnet56-4bfd9763.th"))
    parser.add_argument("--arch", default=f"{MODELS}/resnet.py:resnet56")
    parser.add_argument("--student", default=f"{MODELS}/resnet.py:resnet20")
    parser.add_argument("--test", default=str(CACHE / "test"), help="labeled test set")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/distill_precision.json")
    args = parser.parse_args()
    if not args.data or not Path(args.data).is_dir():
        sys.exit("distill_precision: no expanded set: run benchmarks/cifar_pu.py --rows PU-s1 first, or give --data")
    runs = {}
    with tempfile.TemporaryDirectory(prefix="pucli-precision-") as tmp:
        work = Path(tmp)
        for precision in args.precisions:
            load_before = os.getloadavg()[0]
            started = time.perf_counter()
            result = _pucli(["distill", args.teacher, "--arch", args.arch, "--data", args.data,
                             "--student", args.student, "--out", str(work / f"{precision}.safetensors"),
                             "--epochs", str(args.epochs), "--seed", "0", "--precision", precision,
                             "--threads", str(args.threads), "--force"], work)
            wall = time.perf_counter() - started
            evaluation = _pucli(["evaluate", str(work / f"{precision}.safetensors"), "--arch", args.student,
                                 "--test", args.test, "--threads", str(args.threads)], work)
            runs[precision] = {"images_per_s": round(result["images_per_s"], 2), "distill_wall_s": round(wall, 1),
                               "epochs": result["epochs"], "items": result["items"],
                               "top1": evaluation["models"][0]["top1"],
                               "final_loss": result.get("final_loss"),
                               "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
            print(f"{precision}: {runs[precision]}", file=sys.stderr)
    first, *rest = args.precisions
    record = {"format": "pucli-distill-precision", "command": " ".join(["python", *sys.argv]),
              "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "data": args.data, "student": args.student, "teacher_arch": args.arch, "threads": args.threads,
              "cpus": os.cpu_count(), "runs": runs,
              "speedup_vs_" + first: {p: round(runs[p]["images_per_s"] / runs[first]["images_per_s"], 2) for p in rest}}
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp_out, args.out)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
