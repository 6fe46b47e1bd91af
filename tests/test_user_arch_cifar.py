"""The CIFAR-10 ResNets of akamaster/pytorch_resnet_cifar10 from their own file, on real data
(issue 26): the published test accuracy, and the whole pipeline on a small slice.

Slow: they read ``../shared/models/resnet-cifar10`` and ``../shared/data/cifar10`` (skipped
when those are missing)."""

from __future__ import annotations

import json
import random
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pucli.cli import app
from tests.conftest import REPO_ROOT, SHARED_DATA

MODELS = REPO_ROOT.parent / "shared" / "models" / "resnet-cifar10"
CIFAR10 = SHARED_DATA / "cifar10"
PREPROCESSING = ["--input-size", "3", "32", "32", "--mean", "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODELS / "resnet.py").is_file() or not (CIFAR10 / "cifar10-test.tar").is_file(),
                       reason="needs ../shared/models/resnet-cifar10 and ../shared/data/cifar10"),
]


def _run(*args: object) -> object:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize(("name", "weights", "top1"), [("resnet20", "resnet20-12fca82f.th", 91.73),
                                                       ("resnet56", "resnet56-4bfd9763.th", 93.39)])
def test_cifar_resnet_from_its_file_scores_the_published_accuracy_on_the_test_tar(name: str, weights: str,
                                                                                  top1: float) -> None:
    """What a plain PyTorch loop (ToTensor, Normalize, the model) gives on the same 10,000 PNGs."""
    result = _run("evaluate", MODELS / weights, "--arch", f"{MODELS / 'resnet.py'}:{name}", *PREPROCESSING,
                  "--data", CIFAR10 / "cifar10-test.tar", "--threads", "1", "--workers", "1", "--json")
    row = json.loads(result.stdout)["models"][0]  # type: ignore[attr-defined]
    assert (row["images"], row["top1"], row["architecture"]) == (10_000, top1, f"resnet.py:{name}")


def test_cifar_resnet56_teacher_and_resnet20_student_through_the_pipeline(tmp_path: Path) -> None:
    """select, expand, distill (a ResNet-20 student from the same file), recalibrate, quantize and
    export on 50 labeled positives and a 300-image pool of tar members; prune refuses in one line."""
    rng = random.Random(0)
    train = CIFAR10 / "cifar10-train-10k.tar"
    with tarfile.open(train) as archive:
        members = sorted(m.name for m in archive.getmembers() if m.isfile() and m.name.endswith(".png"))
        rng.shuffle(members)
        by_class: dict[str, list[str]] = {}
        for name in members:
            by_class.setdefault(name.split("/")[-2], []).append(name)
        for cls, names in by_class.items():
            for name in names[:5]:
                (tmp_path / "positive" / cls).mkdir(parents=True, exist_ok=True)
                (tmp_path / "positive" / cls / Path(name).name).write_bytes(archive.extractfile(name).read())  # type: ignore[union-attr]
    pool = [f"{train}#{name}" for names in by_class.values() for name in names[5:20]]
    (tmp_path / "pool.txt").write_text("\n".join(pool) + "\n")
    teacher, code = MODELS / "resnet56-4bfd9763.th", MODELS / "resnet.py"
    model = ["--arch", f"{code}:resnet56", *PREPROCESSING]
    run = ["--threads", "1", "--workers", "0", "--force"]
    index, expanded, student = tmp_path / "sel.tsv", tmp_path / "expanded", tmp_path / "r20.safetensors"
    _run("select", teacher, *model, "--positive", tmp_path / "positive", "--unlabeled", tmp_path / "pool.txt",
         "--out", index, "--prior", "0.5", *run)
    taps = json.loads((tmp_path / "sel.report.json").read_text())["results"]["taps"]
    assert [t["node"] for t in taps] == ["layer1.8.relu_1", "layer2.8.relu_1", "layer3.8.relu_1", "view"]
    _run("expand", teacher, *model, "--positive", tmp_path / "positive", "--index", index, "--out", expanded, *run)
    _run("distill", teacher, *model, "--data", expanded, "--student", f"{code}:resnet20", "--epochs", "1",
         "--out", student, *run)
    student_arch = ["--arch", f"{code}:resnet20"]  # no preprocessing flags from here on: the config has them
    _run("recalibrate", student, *student_arch, "--data", tmp_path / "pool.txt", "--images", "100",
         "--out", tmp_path / "r20-bn.safetensors", *run)
    _run("quantize", student, *student_arch, "--weight-bits", "4", "--out", tmp_path / "r20-4bit.safetensors", "--force")
    exported = _run("export", student, *student_arch, "--out", tmp_path / "r20.onnx", "--calibration",
                    tmp_path / "pool.txt", "--json", "--force")
    assert json.loads(exported.stdout)["check"]["max_abs_diff"] <= 1e-4  # type: ignore[attr-defined]
    pruned = CliRunner().invoke(app, [str(a) for a in ("prune", teacher, *model, "--ratio", "0.3",
                                                       "--out", tmp_path / "pruned.safetensors")])
    assert pruned.exit_code == 1 and "Torch-Pruning cannot prune resnet.py:resnet56" in pruned.output
    assert len(pruned.output.strip().splitlines()) == 1
