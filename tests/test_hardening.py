"""Hardening (issue 7) through the real commands: bad input, interruptions and --resume,
determinism, and terminal manners.

In-process runs use Typer's CliRunner; what needs a real process (signals from outside the
command, environment variables read at start-up, stdin that is not a terminal) runs ``python -m
pucli`` in a subprocess. Every image is a tiny PNG written by the test.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, write_png
from PIL import Image
from typer.testing import CliRunner

from pucli.cli import app
from pucli.data.index import IndexEntry, format_index, read_index

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
FAST = ["--epochs", "2", "--ensemble", "2", "--batch-size", "4", "--train-batch-size", "8", "--workers", "0",
        "--threads", "1", "--augment-positives", "0"]


@pytest.fixture
def inputs(tiny_teacher: Path, make_class_folder: Callable[..., Path], make_pool: Callable[..., Path]) -> dict[str, Path]:
    return {"positive": make_class_folder("pos", per_class=2), "unlabeled": make_pool("pool", count=24),
            "teacher": tiny_teacher}


def _select(inputs: dict[str, Path], *extra: str, **override: Path | str) -> list[str]:
    given = {**inputs, **override}
    return ["select", "--positive", str(given["positive"]), "--unlabeled", str(given["unlabeled"]),
            "--teacher", str(given["teacher"]), "--prior", "0.3", *FAST, *extra]


# A progress log line (stderr not a terminal): "stage: 12/30 (40 %), ..., elapsed 0:00:01[, ETA ...]".
PROGRESS_LINE = re.compile(r"^[\w .-]+: (started|[\d,]+(/[\d,]+ \(\d+ %\))?), (.+, )?elapsed \d+:\d\d:\d\d(, ETA \d+:\d\d:\d\d)?$")


def _message_lines(stderr: str) -> list[str]:
    """The non-empty lines of ``stderr`` that are not progress log lines (which a command writes
    before it fails, as it would in CI)."""
    return [line for line in stderr.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]


def _one_line_error(result, code: int, *needles: str) -> None:  # noqa: ANN001 - click's Result
    """Exit ``code``, one non-empty line on stderr (besides progress log lines) naming every
    needle, no traceback."""
    assert result.exit_code == code, result.output
    lines = _message_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output


# --- bad input -------------------------------------------------------------------------------


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir(exist_ok=True)
    return tmp_path / "empty"


def _class_folders_without_images(tmp_path: Path) -> Path:
    for name in ("0", "1", "2"):
        (tmp_path / "noimg" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "noimg" / name / "notes.txt").write_text("not an image")
    return tmp_path / "noimg"


def _wrong_classes(tmp_path: Path) -> Path:
    for name in ("cat", "dog", "0"):
        write_png(tmp_path / "wrong" / name / "a.png")
    return tmp_path / "wrong"


def _unreadable_pool(tmp_path: Path) -> Path:
    pool = tmp_path / "bad-pool"
    pool.mkdir()
    (pool / "zero.png").write_bytes(b"")
    (pool / "text.png").write_text("not a picture")
    return pool


def _path_list_with_nul(tmp_path: Path) -> Path:
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"/data/a.png\n/data/b\x00.png\n")
    return listing


def _pickled_teacher(tmp_path: Path) -> Path:
    import timm

    torch.save(timm.create_model("lenet5", num_classes=3, in_chans=1), tmp_path / "whole.pt")
    return tmp_path / "whole.pt"


def _truncated_teacher(tmp_path: Path) -> Path:
    source = tmp_path / "teacher.safetensors"
    (tmp_path / "cut.safetensors").write_bytes(source.read_bytes()[:200])
    return tmp_path / "cut.safetensors"


def _bare_state_dict(tmp_path: Path) -> Path:
    import timm

    torch.save(timm.create_model("lenet5", num_classes=3, in_chans=1).state_dict(), tmp_path / "bare.pth")
    return tmp_path / "bare.pth"


SELECT_CASES = [
    # (id, override builder, extra args, exit code, words the message must hold)
    ("positive-missing", {"positive": lambda t: t / "nowhere"}, [], 2, ["--positive", "does not exist"]),
    ("positive-empty", {"positive": _empty}, [], 1, ["--positive", "no class subfolders"]),
    ("positive-no-images", {"positive": _class_folders_without_images}, [], 1, ["--positive", "holds no image files"]),
    ("positive-classes-not-the-teachers", {"positive": _wrong_classes}, [], 1, ["--positive", "not classes of the teacher", "--classes"]),
    ("unlabeled-missing", {"unlabeled": lambda t: t / "nowhere"}, [], 2, ["--unlabeled", "does not exist"]),
    ("unlabeled-empty", {"unlabeled": _empty}, [], 1, ["--unlabeled", "names no image file"]),
    ("unlabeled-nothing-readable", {"unlabeled": _unreadable_pool}, [], 1, ["none of the 2 images of --unlabeled could be read", "text.png: not an image", "check --unlabeled"]),
    ("unlabeled-list-with-nul", {"unlabeled": _path_list_with_nul}, [], 1, ["--unlabeled", "line 2", "NUL"]),
    ("teacher-missing", {"teacher": lambda t: t / "none.safetensors"}, [], 2, ["--teacher", "does not exist"]),
    ("teacher-pickled-module", {"teacher": _pickled_teacher}, ["--arch", "lenet5"], 1, ["never unpickles", "state_dict()"]),
    ("teacher-truncated-safetensors", {"teacher": _truncated_teacher}, [], 1, ["not a valid safetensors file"]),
    ("teacher-unknown-architecture", {"teacher": _bare_state_dict}, ["--arch", "lenet-5"], 2, ["lenet-5", "closest timm names"]),
    ("prior-negative", {}, ["--prior", "-0.2"], 2, ["--prior"]),
    ("budget-negative", {}, ["--budget", "-3"], 2, ["--budget", ">= 1"]),
    ("budget-larger-than-pool", {}, ["--budget", "25"], 2, ["--budget 25", "larger than the pool (24 images)"]),
    ("out-folder-missing", {}, ["--out", "{tmp}/no/such/dir/x.tsv"], 2, ["--out", "does not exist", "create it"]),
    ("resume-without-cache", {}, ["--resume", "--no-cache"], 2, ["--resume", "--no-cache"]),
]


@pytest.mark.parametrize(("overrides", "extra", "code", "words"), [c[1:] for c in SELECT_CASES], ids=[c[0] for c in SELECT_CASES])
def test_select_bad_input_is_one_line_with_the_right_exit_code(inputs, tmp_path, overrides, extra, code, words) -> None:
    given = {name: make(tmp_path) for name, make in overrides.items()}
    extra = [arg.format(tmp=tmp_path) for arg in extra]
    if "--out" not in extra:
        extra += ["--out", str(tmp_path / "index.tsv")]
    # --prior given twice: the last wins, as with any click option.
    _one_line_error(runner.invoke(app, _select(inputs, *extra, **given)), code, *words)


def test_debug_shows_the_traceback_that_is_otherwise_hidden(inputs, tmp_path) -> None:
    args = _select(inputs, "--out", str(tmp_path / "x.tsv"), unlabeled=tmp_path / "nowhere")
    assert "Traceback" not in runner.invoke(app, args).output
    result = runner.invoke(app, ["--debug", *args])
    assert result.exit_code == 2 and "Traceback" in result.stderr and "UsageError" in result.stderr


def test_read_only_output_folder_is_a_usage_error(inputs, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
    else:  # root writes anywhere: pretend the folder is read-only
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == folder else real_access(p, mode, **kw))
    try:
        result = runner.invoke(app, _select(inputs, "--out", str(folder / "x.tsv")))
    finally:
        folder.chmod(0o755)
    _one_line_error(result, 2, "--out", "not writable", "choose another location")


def _short_png(width: int, height: int) -> bytes:
    """A PNG whose image data ends early ('Not enough image data'): torchvision 0.29 crashes on it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1) * 2))
            + chunk(b"IEND", b""))


def _odd_images(pool: Path) -> None:
    rng = np.random.default_rng(0)
    colour = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8), "RGB")
    colour.convert("CMYK").save(pool / "cmyk.jpg")
    colour.convert("RGBA").save(pool / "rgba.png")
    colour.convert("P").save(pool / "palette.png")
    colour.save(pool / "colour.gif")
    colour.save(pool / "colour.webp")
    Image.fromarray(rng.integers(0, 65535, (20, 20)).astype(np.uint16)).save(pool / "grey16.png")
    Image.new("L", (1, 1), 200).save(pool / "one-pixel.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    colour.save(pool / "exif-rotated.jpg", exif=exif)
    # Headers that announce 30,000 x 30,000 pixels over a few bytes: PIL's decompression-bomb guard.
    jpeg = bytearray((pool / "exif-rotated.jpg").read_bytes())
    frame = jpeg.find(b"\xff\xc0")
    jpeg[frame + 5:frame + 9] = struct.pack(">HH", 30000, 30000)
    (pool / "bomb.jpg").write_bytes(bytes(jpeg))
    (pool / "bomb.png").write_bytes(_short_png(30000, 30000))


def _damaged_files(pool: Path) -> None:
    good = (pool / "part0" / "u000.png").read_bytes()
    (pool / "zero.png").write_bytes(b"")
    (pool / "truncated.png").write_bytes(good[: len(good) // 2])
    (pool / "corrupt.png").write_bytes(good[:40] + bytes(range(256)) * 4)
    (pool / "not-an-image.jpg").write_text("hello")
    (pool / "short-data.png").write_bytes(_short_png(64, 64))  # decodable by PIL (missing rows), never a crash


def test_select_skips_counts_and_lists_damaged_files_and_reads_odd_images(inputs, tmp_path) -> None:
    pool = inputs["unlabeled"]
    _odd_images(pool)
    _damaged_files(pool)
    out = tmp_path / "index.tsv"
    result = runner.invoke(app, _select(inputs, "--out", str(out), "--all", "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    report = json.loads((tmp_path / "index.report.json").read_text())
    reasons = {Path(item["path"]).name: item["reason"] for item in report["skipped"]["files"]}
    assert set(reasons) == {"zero.png", "truncated.png", "corrupt.png", "not-an-image.jpg", "bomb.jpg", "bomb.png"}
    assert reasons["zero.png"] == "empty file" and reasons["not-an-image.jpg"] == "not an image"
    assert "decompression-bomb" in reasons["bomb.jpg"] and "decompression-bomb" in reasons["bomb.png"]
    assert summary["skipped"] == 6 and report["skipped"]["count"] == 6
    kept = {entry.path.name for entry in read_index(out)}
    odd = {"cmyk.jpg", "rgba.png", "palette.png", "colour.gif", "colour.webp", "grey16.png", "one-pixel.png",
           "exif-rotated.jpg", "short-data.png"}
    assert odd <= kept and summary["unlabeled"] == 24 + len(odd)
    assert "skipped 6 unreadable file(s)" in result.stderr


def test_expand_refuses_an_index_naming_missing_files(inputs, tmp_path) -> None:
    pool = sorted(inputs["unlabeled"].rglob("*.png"))
    entries = [IndexEntry(p, 1.0) for p in pool[:3]] + [IndexEntry(tmp_path / "gone" / "x.png", 0.5)]
    (tmp_path / "index.tsv").write_text("".join(format_index(entries)))
    result = runner.invoke(app, ["expand", "--positive", str(inputs["positive"]), "--index", str(tmp_path / "index.tsv"),
                                 "--teacher", str(inputs["teacher"]), "--out", str(tmp_path / "expanded")])
    _one_line_error(result, 1, "--index", "1 of the 4 selected files do not exist", "gone/x.png", "pucli select")


@pytest.mark.parametrize(("content", "words"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["line 1", "not a text index"]),
    (b"#pucli-index v1\npath\tscore\n/a\x00.png\t1\n", ["line 3", "NUL byte"]),
    (b"#pucli-index v9\npath\tscore\n", ["unsupported index version", "upgrade pucli"]),
    (b"#pucli-index v1\npath\tscore\n/a.png\tlots\n", ["line 3", "score 'lots' is not a number"]),
    (b"", ["is empty or has no header"]),
], ids=["binary", "nul-byte", "future-version", "bad-score", "empty"])
def test_expand_malformed_index_is_a_data_error(inputs, tmp_path, content, words) -> None:
    (tmp_path / "index.tsv").write_bytes(content)
    result = runner.invoke(app, ["expand", "--positive", str(inputs["positive"]), "--index", str(tmp_path / "index.tsv"),
                                 "--teacher", str(inputs["teacher"]), "--out", str(tmp_path / "expanded")])
    _one_line_error(result, 1, "--index", *words)


@pytest.fixture
def expanded(inputs, tmp_path) -> Path:
    pool = sorted(inputs["unlabeled"].rglob("*.png"))
    index = "".join(format_index([IndexEntry(p, 1.0) for p in pool[:6]]))
    out = tmp_path / "expanded"
    result = runner.invoke(app, ["expand", "--positive", str(inputs["positive"]), "--index", "-", "--teacher",
                                 str(inputs["teacher"]), "--out", str(out), "--quiet", "--threads", "1"], input=index)
    assert result.exit_code == 0, result.output
    return out


def _distill(inputs, data: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", str(inputs["teacher"]), "--data", str(data), "--student", "lenet5_half", "--out", str(out),
            "--epochs", "3", "--batch-size", "4", "--workers", "0", "--threads", "1", "--checkpoint-interval", "0",
            *extra]


def test_distill_refuses_a_manifest_naming_missing_files(inputs, expanded, tmp_path) -> None:
    manifest = expanded / "manifest.tsv"
    lines = manifest.read_text().splitlines()
    lines[3] = str(tmp_path / "moved.png") + "\t" + lines[3].split("\t", 1)[1]
    manifest.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, _distill(inputs, expanded, tmp_path / "s.safetensors"))
    _one_line_error(result, 1, "--data", "1 image(s) listed in manifest.tsv do not exist", "moved.png")


def test_distill_malformed_manifest_is_a_data_error(inputs, expanded, tmp_path) -> None:
    manifest = expanded / "manifest.tsv"
    manifest.write_text(manifest.read_text().replace("\tpositive\t0\t", "\tpositive\tzero\t", 1))
    result = runner.invoke(app, _distill(inputs, expanded, tmp_path / "s.safetensors"))
    _one_line_error(result, 1, "--data", "manifest.tsv line 3", "label 'zero' is not an integer")


# --- overwriting ----------------------------------------------------------------------------


def test_existing_outputs_are_kept_outside_a_terminal_unless_forced(inputs, expanded, tmp_path) -> None:
    index = tmp_path / "index.tsv"
    index.write_text("precious\n")
    student = tmp_path / "student.safetensors"
    student.write_text("precious\n")
    cases = [
        (_select(inputs, "--out", str(index)), index),
        (["expand", "--positive", str(inputs["positive"]), "--index", "-", "--teacher", str(inputs["teacher"]),
          "--out", str(expanded)], expanded),
        (_distill(inputs, expanded, student), student),
    ]
    for args, path in cases:
        _one_line_error(runner.invoke(app, args, input=""), 2, f"--out {path} exists", "--force")
    assert index.read_text() == "precious\n" and student.read_text() == "precious\n"
    assert (expanded / "manifest.tsv").is_file()
    forced = runner.invoke(app, _select(inputs, "--out", str(index), "--force", "--quiet"))
    assert forced.exit_code == 0, forced.output
    assert index.read_text().startswith("#pucli-index v1")


def test_on_a_terminal_overwriting_is_asked_and_no_keeps_the_file(inputs, tmp_path, monkeypatch) -> None:
    from pucli.cli import _prompts

    monkeypatch.setattr(_prompts, "is_interactive", lambda: True)
    index = tmp_path / "index.tsv"
    index.write_text("precious\n")
    refused = runner.invoke(app, _select(inputs, "--out", str(index)), input="n\n")
    assert refused.exit_code == 2 and "replace it? [y/N]" in refused.stderr and "was kept" in refused.stderr
    assert index.read_text() == "precious\n"
    accepted = runner.invoke(app, _select(inputs, "--out", str(index), "--quiet"), input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert read_index(index)


def test_on_a_terminal_missing_required_options_are_asked_for(inputs, tmp_path) -> None:
    import typer
    from click.testing import CliRunner as ClickRunner

    from pucli.cli._prompts import enable_prompts

    command = enable_prompts(typer.main.get_command(app))
    args = ["select", "--positive", str(inputs["positive"]), "--unlabeled", str(inputs["unlabeled"]), "--prior", "0.3",
            *FAST, "--quiet"]
    out = tmp_path / "asked.tsv"
    result = ClickRunner().invoke(command, args, input=f"{inputs['teacher']}\n{out}\n")
    assert result.exit_code == 0, result.output
    # The teacher (the TEACHER argument, first) and the --out option, asked in that order.
    assert re.search(r"TEACHER \(.*\): .*--out \(", result.stderr, re.DOTALL) and result.stdout == ""
    assert read_index(out)


def _pucli(*args: str, env: dict[str, str] | None = None, stdin: bytes = b"", timeout: float = 120,
           wrapper: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """``python -m pucli ARGS`` (or the interrupting wrapper) in a fresh process, stdin a pipe."""
    command = [sys.executable, str(wrapper), *args] if wrapper else [sys.executable, "-m", "pucli", *args]
    return subprocess.run(command, input=stdin, capture_output=True, timeout=timeout, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})})


def test_in_a_pipeline_a_missing_option_is_an_error_never_a_prompt(inputs) -> None:
    done = _pucli("select", str(inputs["teacher"]), "--positive", str(inputs["positive"]), "--prior", "0.3", timeout=60)
    assert done.returncode == 2
    # Every missing option in one line (issue 14), never a prompt.
    assert b"Missing options '--unlabeled' and '--out'" in done.stderr and done.stdout == b""
    # One line, like pucli's own errors, and it says where the help is.
    assert done.stderr.decode().strip().count("\n") == 0
    assert b"pucli select --help" in done.stderr
    # The teacher (the TEACHER argument, or --teacher) left out: the same.
    done = _pucli("select", "--positive", str(inputs["positive"]), "--prior", "0.3", timeout=60)
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr.decode().strip() == "error: Missing argument 'TEACHER'. (see 'pucli select --help')"


def test_an_unknown_option_is_one_line_with_exit_code_2(inputs) -> None:
    done = _pucli("select", "--positive", str(inputs["positive"]), "--bogus", "1", timeout=60)
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "--bogus" in lines[0] and "Traceback" not in lines[0]


def test_under_torchrun_pucli_never_prompts(monkeypatch) -> None:
    from pucli.cli import _prompts

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _prompts.is_interactive() is False


def test_no_color_removes_colour(inputs, tmp_path) -> None:
    colour = re.compile(rb"\x1b\[[0-9;]*(3[0-7]|9[0-7]|38;)[0-9;]*m")
    args = [*_select(inputs, "--out", str(tmp_path / "x.tsv")), "--budget", "0"]  # fails before torch loads
    forced = _pucli(*args, env={"FORCE_COLOR": "1", "TERM": "xterm-256color"})
    plain = _pucli(*args, env={"FORCE_COLOR": "1", "TERM": "xterm-256color", "NO_COLOR": "1"})
    assert forced.returncode == plain.returncode == 2
    assert colour.search(forced.stderr), forced.stderr  # so the check below can fail
    assert not colour.search(plain.stderr), plain.stderr


def test_progress_bars_draw_on_a_terminal_only_and_log_lines_elsewhere(monkeypatch) -> None:
    from rich.console import Console

    from pucli.cli import _output

    for terminal in (True, False):
        screen = io.StringIO()
        monkeypatch.setattr(_output, "console", Console(file=screen, force_terminal=terminal, width=100))
        with _output.progress_bars() as progress:
            progress("extract", 5, 10, img_s=123.0)
        drawn = screen.getvalue()
        assert ("━" in drawn) is terminal  # a bar on a terminal only
        lines = drawn.splitlines()
        assert terminal or (len(lines) == 1 and PROGRESS_LINE.match(lines[0]) and "extract: 5/10 (50 %)" in lines[0])
    for quiet_terminal in (True, False):
        screen = io.StringIO()
        monkeypatch.setattr(_output, "console", Console(file=screen, force_terminal=quiet_terminal, width=100))
        with _output.progress_bars(quiet=True) as progress:
            progress("extract", 10, 10)
        assert screen.getvalue() == ""


def test_quiet_leaves_stderr_empty_and_json_is_the_only_stdout(inputs, expanded, tmp_path) -> None:
    selected = runner.invoke(app, _select(inputs, "--out", str(tmp_path / "q.tsv"), "--quiet", "--json"))
    assert selected.exit_code == 0 and selected.stderr == "" and json.loads(selected.stdout)["unlabeled"] == 24
    student = tmp_path / "q.safetensors"
    distilled = runner.invoke(app, _distill(inputs, expanded, student, "--quiet", "--json"))
    assert distilled.exit_code == 0 and distilled.stderr == "" and json.loads(distilled.stdout)["epochs"] == 3
    evaluated = runner.invoke(app, ["evaluate", str(inputs["teacher"]), str(student), "--data", str(inputs["positive"]),
                                    "--quiet", "--json", "--threads", "1", "--workers", "0"])
    assert evaluated.exit_code == 0 and evaluated.stderr == "" and len(json.loads(evaluated.stdout)["models"]) == 2


def test_shell_completion_is_available_and_documented() -> None:
    result = runner.invoke(app, ["--show-completion", "bash"])
    assert result.exit_code == 0 and "pucli" in result.stdout
    readme = (REPO_ROOT / "README.md").read_text()
    assert "pucli --install-completion" in readme


# --- interruptions, --resume and determinism ------------------------------------------------

# Runs the real CLI (`python -m pucli` in effect) and sends itself SIGNAL once the engine reports
# progress COMPLETED of STAGE: a real signal in the middle of a real run, at a moment the test
# chooses, from outside the command.
INTERRUPTER = '''
import os, signal, sys

stage, at, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import pucli.kd.distill, pucli.pu.descriptors, pucli.pu.selection

pucli.pu.descriptors.DESCRIPTOR_PART_IMAGES = 8  # several parts on a tiny pool

def interrupting(function):
    def wrapped(*args, run, **kwargs):
        progress = run.progress
        def watch(stage_name, completed, total, **metrics):
            progress(stage_name, completed, total, **metrics)
            if stage_name == stage and completed >= at and not getattr(watch, "fired", False):
                watch.fired = True
                os.kill(os.getpid(), getattr(signal, name))
        return function(*args, run=run.with_(progress=watch), **kwargs)
    return wrapped

pucli.pu.selection.run_selection = interrupting(pucli.pu.selection.run_selection)
pucli.kd.distill.distill = interrupting(pucli.kd.distill.distill)
sys.argv = ["pucli", *sys.argv[4:]]
from pucli.cli import main
main()
'''


@pytest.fixture
def interrupter(tmp_path: Path) -> Path:
    path = tmp_path / "interrupter.py"
    path.write_text(INTERRUPTER)
    return path


@pytest.fixture
def small_parts(monkeypatch) -> list[int]:
    """Parts of 8 images, as in the interrupter; returns the sizes of the lists extracted."""
    import pucli.pu.descriptors as descriptors

    monkeypatch.setattr(descriptors, "DESCRIPTOR_PART_IMAGES", 8)
    extracted: list[int] = []
    extract = descriptors.extract_descriptors

    def counting(extractor, paths, *args, **kwargs):  # noqa: ANN001, ANN202
        extracted.append(len(paths))
        return extract(extractor, paths, *args, **kwargs)

    monkeypatch.setattr(descriptors, "extract_descriptors", counting)
    return extracted


def _interrupt_here(monkeypatch, module, function: str, stage: str, at: int, signum: int) -> None:  # noqa: ANN001
    """Make ``module.function`` send ``signum`` to this very process at progress (stage, at)."""
    engine = getattr(module, function)

    def wrapped(*args, run, **kwargs):  # noqa: ANN002, ANN003, ANN202
        progress = run.progress

        def watch(name: str, completed: int, total: int | None, **metrics: float) -> None:
            progress(name, completed, total, **metrics)
            if name == stage and completed >= at and not getattr(watch, "fired", False):
                watch.fired = True
                os.kill(os.getpid(), signum)

        return engine(*args, run=run.with_(progress=watch), **kwargs)

    monkeypatch.setattr(module, function, wrapped)


def _check_stopped(code: int, stderr: str, expected: int) -> None:
    assert code == expected, stderr
    lines = _message_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--resume" in lines[0], stderr
    assert "Traceback" not in stderr, stderr


@pytest.fixture
def reference_index(inputs, tmp_path, small_parts, monkeypatch) -> bytes:
    """An uninterrupted run with its own cache."""
    out = tmp_path / "reference.tsv"
    monkeypatch.setenv("PUCLI_CACHE_DIR", str(tmp_path / "cache-ref"))
    result = runner.invoke(app, _select(inputs, "--out", str(out), "--all", "--quiet"))
    assert result.exit_code == 0, result.output
    small_parts.clear()
    monkeypatch.setenv("PUCLI_CACHE_DIR", str(tmp_path / "cache"))
    return out.read_bytes()


def test_sigterm_during_extraction_then_resume_gives_the_same_index(inputs, tmp_path, interrupter, small_parts,
                                                                    reference_index) -> None:
    out = tmp_path / "index.tsv"
    args = _select(inputs, "--out", str(out), "--all")
    # 6 positives, then the 24 pool images in parts of 8: stop in the third part, two being saved.
    stopped = _pucli("extract", str(6 + 16 + 1), "SIGTERM", *args, wrapper=interrupter,
                     env={"PUCLI_CACHE_DIR": str(tmp_path / "cache")})
    _check_stopped(stopped.returncode, stopped.stderr.decode(), 143)
    assert not out.exists()  # nothing half written
    resumed = runner.invoke(app, [*args, "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert out.read_bytes() == reference_index
    assert small_parts == [8]  # the positives come from their own cache entry; only the pool's last part is extracted


@pytest.mark.parametrize(("stage", "at", "signum"), [("train", 7, signal.SIGINT), ("score", 24, signal.SIGTERM)])
def test_a_signal_during_training_or_scoring_then_resume_gives_the_same_index(inputs, tmp_path, small_parts, reference_index,
                                                                             monkeypatch, stage, at, signum) -> None:
    import pucli.pu.selection as selection
    import pucli.pu.training as training

    out = tmp_path / "index.tsv"
    args = _select(inputs, "--out", str(out), "--all")
    with monkeypatch.context() as patch:
        # train: 2 members x 2 epochs x 3 steps; step 7 is in the second member, once the first is saved.
        _interrupt_here(patch, selection, "run_selection", stage, at, signum)
        stopped = runner.invoke(app, args)
    _check_stopped(stopped.exit_code, stopped.stderr, 128 + signum)
    assert not out.exists()
    small_parts.clear()
    trained: list[int] = []
    member = training._train_head_member
    monkeypatch.setattr(training, "_train_head_member",
                        lambda *a, **k: trained.append(1) or member(*a, **k))
    resumed = runner.invoke(app, [*args, "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert out.read_bytes() == reference_index and small_parts == []  # descriptors from the cache
    if stage == "train":
        assert len(trained) == 1  # the first of the 2 members was saved and loaded, not retrained


def test_same_inputs_and_seed_give_a_byte_identical_index_in_another_process(inputs, tmp_path, reference_index) -> None:
    out = tmp_path / "again.tsv"
    args = _select(inputs, "--out", str(out), "--all", "--no-cache")
    args[args.index("--workers") + 1] = "2"  # decoding in worker processes changes nothing
    done = _pucli(*args)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == reference_index
    # stderr is a pipe: the summary and messages, never a progress bar; stdout stays empty.
    assert "━".encode() not in done.stderr and b"\r" not in done.stderr and done.stdout == b""
    assert b"index: " + str(out).encode() in done.stderr


def test_sigterm_during_distill_then_resume_gives_the_same_student(inputs, expanded, tmp_path, interrupter) -> None:
    from safetensors.torch import load_file

    reference = tmp_path / "reference.safetensors"
    assert runner.invoke(app, _distill(inputs, expanded, reference, "--quiet")).exit_code == 0
    out = tmp_path / "student.safetensors"
    steps_per_epoch = 3  # 12 items (6 positives, 6 selected) in batches of 4
    stopped = _pucli("distill", str(steps_per_epoch + 1), "SIGTERM", *_distill(inputs, expanded, out), wrapper=interrupter)
    _check_stopped(stopped.returncode, stopped.stderr.decode(), 143)
    assert b"holds epoch 1" in stopped.stderr and not out.exists()
    resumed = runner.invoke(app, _distill(inputs, expanded, out, "--resume", "--json"))
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["resumed_from"] == 1
    mine, theirs = load_file(out), load_file(reference)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
