"""Behaviour unchanged: run one pucli checkout through the pipeline, then compare two such runs.

A refactor that must not change what pucli computes is checked by running the same small jobs with
the code before and after it and comparing what they wrote:

- **quickstart** (benchmarks/quickstart.sh, on a slice of the mnist-pu pool): ``select --prior 0.3
  --out -`` piped into ``expand --index -``, ``distill``, ``evaluate``, and ``show`` of the index and
  of the expanded set;
- **auto**: ``pucli prior`` and ``select --prior auto --all`` on a smaller slice, and ``show`` of
  that index (every pool image, so the rejected groups too);
- **torchrun**: ``select``, ``expand`` and ``distill`` launched with ``torchrun --standalone
  --nproc_per_node=2`` (gloo on the CPU, as tests/test_distributed.py and docs/scaling.md do).

Every command runs with ``--threads 1 --workers 0`` and ``OMP_NUM_THREADS=1``, in its own working
folder, with ``PYTHONPATH`` set to the checkout and ``PUCLI_CACHE_DIR`` / ``PUCLI_STATE_DIR`` inside
the run's folder (two checkouts never share a cache). The run checks that ``pucli`` was imported from
that checkout.

What must be identical (the comparison fails otherwise): the index TSVs (bytes); every file of the
expanded sets (bytes; safetensors by tensors, JSON parsed, paths that name the run folder made
relative); the students (tensors; their configs as parsed JSON without paths); the evaluation
(``--json``, without timings); the selectors' tensors; the contact sheets (bytes); the prior estimate. What is shown for
reading but may differ: the run reports (timings and paths differ; their keys are listed when they
differ) and each command's stderr (messages a refactor may reword).

Usage::

    python benchmarks/behaviour_check.py --run DIR --code CHECKOUT [--pool 2000] [--small-pool 400]
    python benchmarks/behaviour_check.py --base DIR --tree DIR

The first writes DIR (a run of CHECKOUT); the second compares two runs and exits 1 on a difference.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RUN = ["--threads", "1", "--workers", "0"]
#: JSON keys whose values are timings, dates, hosts or versions: they differ between any two runs.
VOLATILE = {"seconds", "elapsed_seconds", "started", "finished", "created", "date", "time", "host", "hostname",
            "pucli_version", "python", "torch", "platform", "duration_seconds", "images_per_second",
            "latency_ms", "throughput", "wall_seconds", "load_average", "pid", "command", "argv", "cwd",
            "timings_s", "started_at", "decode_s", "images_per_s", "epoch_s", "seconds_per_epoch", "train_s", "val_s",
            "img_s"}
#: The stderr lines compared: the messages, not progress lines or tables (their rates and timings vary).
MESSAGES = ("warning:", "error:", "note:", "recommendation:", "  next:", "skipped ")


def _shared_root() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mnist_pu_data import default_out_dir

    return Path(default_out_dir())


def run(out: Path, code: Path, pool: int, small_pool: int, root: Path) -> None:
    """Run the jobs of the module docstring with the checkout ``code``, writing under ``out``."""
    out.mkdir(parents=True, exist_ok=False)
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1",
           "PUCLI_CACHE_DIR": str(out / "cache"), "PUCLI_STATE_DIR": str(out / "state")}
    python = sys.executable
    imported = subprocess.run([python, "-c", "import pucli; print(pucli.__file__)"], env=env, cwd=out,
                              capture_output=True, text=True, check=True).stdout.strip()
    if not Path(imported).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"pucli was imported from {imported}, not from {code}")
    teacher, positive, test = root / "teacher/lenet5.safetensors", root / "positive/nl10-seed0", root / "test"
    lines = (root / "unlabeled.txt").read_text().splitlines()
    (out / "pool.txt").write_text("\n".join(lines[:pool]) + "\n")
    (out / "small_pool.txt").write_text("\n".join(lines[:small_pool]) + "\n")
    log = {"code": str(code), "imported": imported, "pool": pool, "small_pool": small_pool, "steps": []}
    pucli = [python, "-m", "pucli"]
    torchrun = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pucli"]

    def step(name: str, command: list[str] | str, stdout: str | None = None) -> None:
        started = time.perf_counter()
        shell = isinstance(command, str)
        done = subprocess.run(command if shell else [str(c) for c in command], env=env, cwd=out, shell=shell,
                              executable="/bin/bash" if shell else None, capture_output=True, text=True)
        (out / f"{name}.stderr").write_text(done.stderr)
        if stdout:
            (out / stdout).write_text(done.stdout)
        seconds = round(time.perf_counter() - started, 1)
        log["steps"].append({"name": name, "rc": done.returncode, "seconds": seconds})
        print(f"{name}: rc {done.returncode}, {seconds} s", file=sys.stderr)
        if done.returncode != 0:
            (out / "log.json").write_text(json.dumps(log, indent=1))
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")

    q = " ".join(shlex.quote(str(c)) for c in pucli)
    step("quickstart-select-expand", (
        f"set -o pipefail; {q} select --positive {positive} --unlabeled - --teacher {teacher} --prior 0.3 "
        f"--out - --report select.report.json {' '.join(RUN)} < pool.txt | tee index.tsv | {q} expand "
        f"--positive {positive} --index - --teacher {teacher} --out expanded --force {' '.join(RUN)}"))
    step("quickstart-distill", [*pucli, "distill", teacher, "--data", "expanded", "--student", "lenet5_half",
                                "--out", "student.safetensors", "--force", *RUN])
    step("quickstart-evaluate", [*pucli, "evaluate", teacher, "student.safetensors", "--data", test,
                                 "--report", "evaluate.report.json", "--json", *RUN], stdout="evaluate.json")
    step("quickstart-show-index", [*pucli, "show", "index.tsv", "--positive", positive, "--out", "index.sheet.png"])
    step("quickstart-show-expanded", [*pucli, "show", "expanded", "--out", "expanded.sheet.html"])

    step("auto-prior", [*pucli, "prior", teacher, "--positive", positive, "--unlabeled", "small_pool.txt",
                        "--json", *RUN], stdout="prior.json")
    step("auto-select", [*pucli, "select", teacher, "--positive", positive, "--unlabeled", "small_pool.txt",
                         "--all", "--out", "auto.tsv", "--json", *RUN], stdout="auto.json")
    step("auto-show", [*pucli, "show", "auto.tsv", "--out", "auto.sheet.html"])

    step("torchrun-select", [*torchrun, "select", teacher, "--positive", positive, "--unlabeled",
                             "small_pool.txt", "--prior", "0.3", "--all", "--out", "tr.tsv", "--no-cache",
                             "--epochs", "3", *RUN, "-q"])
    step("torchrun-expand", [*torchrun, "expand", teacher, "--positive", positive, "--index", "tr.tsv",
                             "--out", "tr-expanded", *RUN, "-q"])
    step("torchrun-distill", [*torchrun, "distill", teacher, "--data", "tr-expanded", "--student", "lenet5_half",
                              "--out", "tr-student.safetensors", "--epochs", "4", "--json", *RUN, "-q"],
         stdout="tr-distill.json")
    (out / "log.json").write_text(json.dumps(log, indent=1))


# --- comparison -------------------------------------------------------------------------------------

def _strip(value: Any, run_dir: Path) -> Any:
    """``value`` (parsed JSON) without volatile keys, with paths into the run folder made relative."""
    if isinstance(value, dict):
        return {k: _strip(v, run_dir) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v, run_dir) for v in value]
    if isinstance(value, str):
        value = value.replace(str(run_dir.resolve()) + "/", "").replace(str(run_dir) + "/", "")
        return re.sub(r"-\d{8}-\d{6}\.report\.json$", "-STAMP.report.json", value)  # a report in the state folder
    return value


def _tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _same_tensors(a: Path, b: Path) -> str | None:
    import torch

    if not (a.is_file() and b.is_file()):
        return f"missing: {a if not a.is_file() else b}"
    first, second = _tensors(a), _tensors(b)
    if first.keys() != second.keys():
        return f"tensor names differ: {sorted(first.keys() ^ second.keys())}"
    for name in first:
        if first[name].dtype != second[name].dtype or not torch.equal(first[name], second[name]):
            return f"tensor {name} differs"
    return None


def _same_file(a: Path, b: Path, base: Path, tree: Path) -> str | None:
    if a.suffix == ".safetensors":
        return _same_tensors(a, b)
    if a.suffix == ".json":
        first, second = _strip(json.loads(a.read_text()), base), _strip(json.loads(b.read_text()), tree)
        return None if first == second else "JSON differs:\n  " + _json_diff(first, second)
    if a.suffix == ".tsv":
        first = a.read_text().replace(str(base.resolve()) + "/", "")
        second = b.read_text().replace(str(tree.resolve()) + "/", "")
        return None if first == second else "text differs"
    return None if a.read_bytes() == b.read_bytes() else "bytes differ"


def _json_diff(first: Any, second: Any, where: str = "") -> str:
    if isinstance(first, dict) and isinstance(second, dict):
        out = [f"{where}.{k}: only in base" for k in first.keys() - second.keys()]
        out += [f"{where}.{k}: only in tree" for k in second.keys() - first.keys()]
        out += [_json_diff(first[k], second[k], f"{where}.{k}") for k in first.keys() & second.keys()
                if first[k] != second[k]]
        return "\n  ".join(o for o in out if o)
    if isinstance(first, list) and isinstance(second, list) and len(first) == len(second):
        return "\n  ".join(_json_diff(a, b, f"{where}[{i}]") for i, (a, b) in enumerate(zip(first, second))
                           if a != b)
    return f"{where}: {str(first)[:200]!r} != {str(second)[:200]!r}"


def _config_without_paths(path: Path) -> Any:
    def drop(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if "path" not in k and k not in VOLATILE}
        if isinstance(value, list):
            return [drop(v) for v in value]
        return value

    return drop(json.loads(path.read_text()))


def compare(base: Path, tree: Path) -> int:
    """Print one line per compared output; the number of differences in what must be identical."""
    failures = 0

    def check(what: str, problem: str | None) -> None:
        nonlocal failures
        failures += problem is not None
        print(f"{'identical' if problem is None else 'DIFFERENT'}  {what}" + (f": {problem}" if problem else ""))

    for name in ("index.tsv", "auto.tsv", "tr.tsv"):
        check(name, None if (base / name).read_bytes() == (tree / name).read_bytes() else "bytes differ")
    for folder in ("expanded", "tr-expanded"):
        files = sorted(p.relative_to(base / folder) for p in (base / folder).rglob("*") if p.is_file())
        others = sorted(p.relative_to(tree / folder) for p in (tree / folder).rglob("*") if p.is_file())
        if files != others:
            check(f"{folder}/ file list", f"{sorted(set(map(str, files)) ^ set(map(str, others)))}")
            continue
        for rel in files:
            check(f"{folder}/{rel}", _same_file(base / folder / rel, tree / folder / rel, base, tree))
    for student in ("student", "tr-student"):
        check(f"{student}.safetensors (tensors)", _same_tensors(base / f"{student}.safetensors",
                                                                 tree / f"{student}.safetensors"))
        first = _config_without_paths(base / f"{student}.config.json")
        second = _config_without_paths(tree / f"{student}.config.json")
        check(f"{student}.config.json (parsed, no paths)", None if first == second else _json_diff(first, second))
    for name in ("evaluate.json", "prior.json", "tr-distill.json"):
        first, second = (_strip(json.loads((run / name).read_text()), run) for run in (base, tree))
        check(f"{name} (stdout, no timings)", None if first == second else _json_diff(first, second))
    for name in ("select", "auto", "tr"):
        check(f"{name}.selector.safetensors (tensors)", _same_tensors(base / f"{name}.selector.safetensors",
                                                                     tree / f"{name}.selector.safetensors"))
    check("index.sheet.png", _same_file(base / "index.sheet.png", tree / "index.sheet.png", base, tree))
    for name in ("expanded.sheet.html", "auto.sheet.html"):
        first, second = ((run / name).read_text() for run in (base, tree))
        same_bytes = "bytes identical" if first == second else "bytes differ"
        check(f"{name} (content: tags, text, images; {same_bytes})",
              None if _html_content(first) == _html_content(second) else "content differs")

    print("\nshown, may differ (run reports and select --json without timings; stderr):")
    for report in sorted(p.name for p in base.glob("*.report.json")) + ["auto.json"]:
        if not (tree / report).is_file():
            print(f"  {report}: missing in tree")
            continue
        first, second = (_strip(json.loads((run / report).read_text()), run) for run in (base, tree))
        print(f"  {report}: {'same' if first == second else 'differs:' + chr(10) + '    ' + _json_diff(first, second).replace(chr(10), chr(10) + '  ')}")
    for log in sorted(p.name for p in base.glob("*.stderr")):
        first, second = (_messages(run / log, run) for run in (base, tree))
        if first != second:
            print(f"  {log} messages differ:\n    base: {first!r}\n    tree: {second!r}")
        else:
            print(f"  {log}: the same {len(first)} message line(s)")
    print(f"\n{failures} difference(s) in what must be identical")
    return failures


def _html_content(text: str) -> str:
    """An HTML sheet without its styling (the style sheet, ``style`` and ``class`` attributes) and
    without what matplotlib's SVG changes from one process to the next (its date, its clip-path and marker ids)."""
    text = re.sub(r"<dc:date>[^<]*</dc:date>", "", text)
    text = re.sub(r"\b[pm][0-9a-f]{10}\b", "ID", text)
    text = re.sub(r"<style>.*?</style>", "", text, flags=re.S)
    return re.sub(r' (?:style|class)="[^"]*"', "", text)


def _messages(path: Path, run_dir: Path) -> list[str]:
    """The message lines of a command's stderr (:data:`MESSAGES`), the run folder written RUN."""
    if not path.is_file():
        return []
    lines = path.read_text().replace(str(run_dir), "RUN").splitlines()
    return [line for line in lines if line.startswith(MESSAGES)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="write a run of --code into this new folder")
    parser.add_argument("--code", type=Path, help="the pucli checkout to run (a folder holding pucli/)")
    parser.add_argument("--pool", type=int, default=2000, help="pool images of the quickstart [2000]")
    parser.add_argument("--small-pool", type=int, default=400, help="pool images of the auto and torchrun jobs [400]")
    parser.add_argument("--root", type=Path, default=None, help="the mnist-pu scenario [benchmarks/mnist_pu_data.py's]")
    parser.add_argument("--base", type=Path, help="a run with the code before")
    parser.add_argument("--tree", type=Path, help="a run with the code after")
    args = parser.parse_args()
    if args.run:
        if not args.code:
            parser.error("--run needs --code")
        run(args.run.resolve(), args.code.resolve(), args.pool, args.small_pool, args.root or _shared_root())
    elif args.base and args.tree:
        raise SystemExit(1 if compare(args.base.resolve(), args.tree.resolve()) else 0)
    else:
        parser.error("give --run DIR --code CHECKOUT, or --base DIR --tree DIR")


if __name__ == "__main__":
    main()
