"""A model file means the same in pucli and in timm (issue 14): the preprocessing pucli evaluates
with is the one its config declares and timm applies, the way timm's ``validate.py`` does it
(``resolve_model_data_config`` + ``create_transform`` + the model on an ``ImageDataset``).

Nothing is trained: a teacher and a student (as ``pucli distill`` writes one) are saved from
freshly initialised tiny models, and their top-1 is compared on the same folder of tiny images of
several sizes, with a ``crop_pct`` below 1 so that every image is resized and cropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import write_png
from typer.testing import CliRunner

from pucli.checkpoints import load_model, save_model, sidecar_config_path, student_provenance
from pucli.cli import app

CLASSES = ("ant", "bee", "cat")
SIZES = ((28, 28), (36, 30), (20, 44), (31, 31))
TEACHER_DATA = {"input_size": (1, 28, 28), "mean": (0.45,), "std": (0.22,), "interpolation": "bicubic",
                "crop_pct": 0.875, "crop_mode": "center"}


@pytest.fixture
def test_folder(tmp_path: Path) -> Path:
    root = tmp_path / "test"
    for k, name in enumerate(CLASSES):
        for i, size in enumerate(SIZES * 2):
            write_png(root / name / f"{i}.png", size=size, seed=31 * k + i)
    return root


@pytest.fixture
def teacher_and_student(tmp_path: Path) -> tuple[Path, Path]:
    import timm

    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", num_classes=len(CLASSES), in_chans=1).eval()
    teacher_path = save_model(teacher, tmp_path / "teacher.safetensors", label_names=CLASSES, data_config=TEACHER_DATA)
    loaded = load_model(teacher_path)
    student = timm.create_model("lenet5_half", num_classes=len(CLASSES), in_chans=1).eval()
    (tmp_path / "student").mkdir()
    # As pucli distill writes it: the teacher's preprocessing, pucli's provenance.
    student_path = save_model(
        student, tmp_path / "student" / "model.safetensors", label_names=CLASSES, data_config=loaded.config.data_config(),
        provenance=student_provenance(student="lenet5_half", teacher=teacher_path, teacher_digest=loaded.digest,
                                      data=tmp_path / "expanded", loss="robust-kd"))
    return teacher_path, student_path


def _timm_model(path: Path) -> torch.nn.Module:
    """The model as docs/models.md tells timm users to load it."""
    import timm

    if path.name == "model.safetensors":
        return timm.create_model(f"local-dir:{path.parent}", pretrained=True)
    config = json.loads(sidecar_config_path(path).read_text())
    return timm.create_model(config["architecture"], pretrained=True,
                             pretrained_cfg_overlay=dict(config["pretrained_cfg"], file=str(path)),
                             **config.get("model_args", {}))


def _timm_validate_top1(path: Path, folder: Path) -> float:
    """timm's validate.py on ``folder``: its data config, its eval transform, its dataset."""
    from timm.data import ImageDataset, create_transform, resolve_model_data_config

    model = _timm_model(path).eval()
    data_config = resolve_model_data_config(model)
    mode = "L" if data_config["input_size"][0] == 1 else "RGB"
    dataset = ImageDataset(str(folder), input_img_mode=mode, transform=create_transform(**data_config))
    correct = 0
    with torch.inference_mode():
        for image, target in dataset:
            correct += int(model(image[None]).argmax(1).item() == target)
    return 100.0 * correct / len(dataset)


def _pucli_evaluate_top1(paths: list[Path], folder: Path, tmp_path: Path) -> list[float]:
    result = CliRunner().invoke(app, ["evaluate", *map(str, paths), "--data", str(folder), "--json", "--workers", "0",
                                      "--threads", "1", "--device", "cpu", "--report", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    return [row["top1"] for row in json.loads(result.stdout)["models"]]


def test_pucli_evaluate_and_timm_validate_give_the_same_top1(teacher_and_student, test_folder: Path, tmp_path: Path) -> None:
    teacher, student = teacher_and_student
    ours = _pucli_evaluate_top1([teacher, student], test_folder, tmp_path)
    theirs = [_timm_validate_top1(teacher, test_folder), _timm_validate_top1(student, test_folder)]
    assert ours == theirs
    # The run report says which preprocessing each model file was fed.
    report = json.loads((tmp_path / "eval.json").read_text())
    recorded = {Path(entry["file"]).name: entry for entry in report["preprocessing"]}
    assert recorded["teacher.safetensors"]["crop_pct"] == 0.875
    assert recorded["model.safetensors"]["interpolation"] == "bicubic"


def test_pucli_feeds_the_pixels_timm_feeds(teacher_and_student, test_folder: Path) -> None:
    from timm.data import ImageDataset, create_transform, resolve_model_data_config

    from pucli.data.decode import decode_image_file
    from pucli.data.loading import Preprocess

    for path in teacher_and_student:
        loaded = load_model(path)
        model = _timm_model(path)
        data_config = resolve_model_data_config(model)
        assert _as_tuples(loaded.config.data_config()) == _as_tuples(data_config)
        preprocess = Preprocess(loaded.config)
        dataset = ImageDataset(str(test_folder), input_img_mode="L", transform=create_transform(**data_config))
        for index, (image, _) in enumerate(dataset):
            file = Path(dataset.filename(index, absolute=True))
            ours = preprocess.normalize(preprocess.resize(decode_image_file(file, 1))[None])[0]
            torch.testing.assert_close(ours, image, rtol=0, atol=1e-5)


def _as_tuples(config: dict) -> dict:
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in config.items()}


def test_an_image_at_the_input_size_is_cropped_as_its_config_says(tmp_path: Path) -> None:
    """The bug of issue 14: a 28 x 28 image was fed as it was to a model declaring crop_pct 0.875."""
    from pucli.checkpoints import ModelConfig
    from pucli.data.loading import Preprocess

    image = torch.arange(28 * 28, dtype=torch.int64).remainder(256).to(torch.uint8).view(1, 28, 28)
    cropped = Preprocess(ModelConfig("lenet5", 10, 1, (1, 28, 28), (0.5,), (0.5,), "bilinear", 0.875))
    assert not torch.equal(cropped.resize(image), image)
    # crop_pct 1.0 (LeNet's, mnist-pu's): the pixels pass through untouched, as before.
    kept = Preprocess(ModelConfig("lenet5", 10, 1, (1, 28, 28), (0.5,), (0.5,), "bilinear", 1.0))
    assert kept.resize(image) is image


def test_student_config_names_its_teacher_and_data_not_imagenet_weights(teacher_and_student) -> None:
    _, student = teacher_and_student
    config = json.loads(sidecar_config_path(student).read_text())
    pretrained = config["pretrained_cfg"]
    assert "tag" not in pretrained and "license" not in pretrained
    assert "teacher.safetensors" in pretrained["description"] and "pucli" in pretrained["description"]
    assert config["pucli"]["teacher"].endswith("teacher.safetensors")
    assert config["pucli"]["teacher_digest"].startswith("sha256:")
    assert config["pucli"]["data"].endswith("expanded")
    assert pretrained["crop_pct"] == 0.875 and pretrained["input_size"] == [1, 28, 28]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_every_safetensors_pucli_writes_gets_the_umask_mode(tmp_path: Path, umask: int) -> None:
    """safetensors' save_file makes 0600 files; pucli's outputs get 0666 less the umask like any
    other file: the student and its config, the soft targets of an expanded set, cache entries
    (the selector file goes through the same pucli.paths.replace_atomically)."""
    import timm

    from pucli.cache import write_entry
    from pucli.data.manifest import SOFT_TARGETS_NAME, ExpandedSet, write_expanded_set

    old = os.umask(umask)
    try:
        path = save_model(timm.create_model("lenet5_half"), tmp_path / "student.safetensors")
        expanded = ExpandedSet(paths=[tmp_path / "a.png"], origins=["positive"], labels=[0], scores=[None],
                               soft_targets=torch.tensor([[1.0, 0.0]]), temperature=4.0, teacher_digest="sha256:0",
                               class_names=["a", "b"], soft_counts=torch.ones(2, dtype=torch.float64),
                               class_weights=torch.ones(2, dtype=torch.float64), positive_counts=[1, 0],
                               unlabeled_counts=[0, 0])
        (tmp_path / "expanded").mkdir()
        write_expanded_set(expanded, tmp_path / "expanded")
        write_entry(tmp_path / "entry.safetensors", {"x": torch.zeros(2)}, kind="test", version=1)
    finally:
        os.umask(old)
    for file in (path, sidecar_config_path(path), tmp_path / "expanded" / SOFT_TARGETS_NAME, tmp_path / "entry.safetensors"):
        assert file.stat().st_mode & 0o777 == 0o666 & ~umask, file
