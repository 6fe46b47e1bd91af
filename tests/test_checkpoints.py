"""Teacher/student I/O: every supported format round trips; unsafe or broken files are refused."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from pucli.checkpoints import load_model, save_model, sidecar_config_path
from pucli.errors import TeacherFormatError, UsageError


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def lenet() -> torch.nn.Module:
    torch.manual_seed(1)
    return timm.create_model("lenet5", num_classes=10).eval()


def test_safetensors_round_trip_keeps_weights_and_config(tmp_path: Path, lenet: torch.nn.Module) -> None:
    path = save_model(lenet, tmp_path / "teacher.safetensors", label_names=[f"c{i}" for i in range(10)])
    assert sidecar_config_path(path) == tmp_path / "teacher.config.json"
    loaded = load_model(path)
    assert _same_weights(loaded.model, lenet)
    assert loaded.config.architecture == "lenet5"
    assert loaded.config.num_classes == 10 and loaded.config.in_chans == 1
    assert loaded.config.input_size == (1, 28, 28)
    assert loaded.config.label_names == tuple(f"c{i}" for i in range(10))
    assert loaded.source_format == "safetensors"


def test_safetensors_metadata_alone_names_the_architecture(tmp_path: Path, lenet: torch.nn.Module) -> None:
    path = save_model(lenet, tmp_path / "t.safetensors", label_names=list("abcdefghij"))
    sidecar_config_path(path).unlink()
    loaded = load_model(path)
    assert loaded.config.architecture == "lenet5" and loaded.config.label_names == tuple("abcdefghij")
    assert _same_weights(loaded.model, lenet)


def test_safetensors_with_flat_sidecar_config_json(tmp_path: Path) -> None:
    model = timm.create_model("resnet18", num_classes=4, in_chans=1)
    save_file(model.state_dict(), str(tmp_path / "weights.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "architecture": "resnet18", "num_classes": 4, "input_size": [1, 32, 32],
        "mean": [0.5], "std": [0.25], "label_names": ["a", "b", "c", "d"],
    }))
    loaded = load_model(tmp_path / "weights.safetensors")
    assert loaded.config.input_size == (1, 32, 32)
    assert loaded.config.mean == (0.5,) and loaded.config.std == (0.25,)
    assert loaded.config.label_names == ("a", "b", "c", "d")
    assert _same_weights(loaded.model, model)


def test_timm_train_checkpoint_uses_args_model_for_the_variant(tmp_path: Path, lenet: torch.nn.Module) -> None:
    # timm's train.py stores the class name in "arch" and the variant in args.model.
    checkpoint = {
        "epoch": 12,
        "arch": "lenet5",
        "state_dict": {f"module.{k}": v for k, v in lenet.state_dict().items()},
        "optimizer": {"state": {}, "param_groups": []},
        "version": 2,
        "args": argparse.Namespace(model="lenet5", num_classes=10, input_size=None, mean=None, std=None),
        "metric": 98.9,
    }
    torch.save(checkpoint, tmp_path / "model_best.pth.tar")
    loaded = load_model(tmp_path / "model_best.pth.tar")
    assert loaded.source_format == "timm-checkpoint"
    assert loaded.config.architecture == "lenet5"
    assert _same_weights(loaded.model, lenet)


def test_bare_state_dict_needs_arch_and_infers_classes_and_channels(tmp_path: Path) -> None:
    model = timm.create_model("resnet18", num_classes=7, in_chans=1)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(UsageError, match="`arch=NAME`"):
        load_model(tmp_path / "bare.pth")
    loaded = load_model(tmp_path / "bare.pth", arch="resnet18")
    assert loaded.config.num_classes == 7 and loaded.config.in_chans == 1
    assert loaded.config.input_size == (1, 224, 224) and len(loaded.config.mean) == 1
    assert _same_weights(loaded.model, model)


def test_pickled_module_is_refused_with_state_dict_advice(tmp_path: Path, lenet: torch.nn.Module) -> None:
    torch.save(lenet, tmp_path / "whole.pt")
    with pytest.raises(TeacherFormatError, match=r"never unpickles.*state_dict\(\)"):
        load_model(tmp_path / "whole.pt", arch="lenet5")


def test_unknown_architecture_lists_close_timm_names(tmp_path: Path, lenet: torch.nn.Module) -> None:
    torch.save(lenet.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(UsageError, match="closest timm names: .*lenet5") as info:
        load_model(tmp_path / "bare.pth", arch="lenet-5")
    assert "\n" not in str(info.value)


def test_weights_of_another_architecture_are_a_clear_error(tmp_path: Path, lenet: torch.nn.Module) -> None:
    torch.save(lenet.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(TeacherFormatError, match="do not fit architecture 'resnet18'"):
        load_model(tmp_path / "bare.pth", arch="resnet18")


def test_truncated_safetensors_is_a_clear_error(tmp_path: Path, lenet: torch.nn.Module) -> None:
    path = save_model(lenet, tmp_path / "t.safetensors")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(TeacherFormatError, match="not a valid safetensors file"):
        load_model(path)


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")


def test_save_model_refuses_other_suffixes_and_missing_folders(tmp_path: Path, lenet: torch.nn.Module) -> None:
    with pytest.raises(UsageError, match="safetensors"):
        save_model(lenet, tmp_path / "student.pth")
    with pytest.raises(UsageError, match="does not exist"):
        save_model(lenet, tmp_path / "missing" / "student.safetensors")


def test_student_loads_back_through_timm_pretrained_file_overlay(tmp_path: Path) -> None:
    student = timm.create_model("resnet18", num_classes=10, in_chans=1).eval()
    teacher_data = {"input_size": (1, 28, 28), "mean": (0.1307,), "std": (0.3081,), "interpolation": "bilinear", "crop_pct": 1.0}
    path = save_model(student, tmp_path / "student.safetensors", label_names=[str(i) for i in range(10)], data_config=teacher_data)
    reloaded = timm.create_model(
        "resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10), num_classes=10, in_chans=1
    )
    assert _same_weights(reloaded, student)
    config = json.loads(sidecar_config_path(path).read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 10
    assert config["pretrained_cfg"]["input_size"] == [1, 28, 28]
    assert config["pretrained_cfg"]["mean"] == [0.1307]


def test_model_safetensors_layout_loads_with_timm_local_dir(tmp_path: Path, lenet: torch.nn.Module) -> None:
    save_model(lenet, tmp_path / "model.safetensors", label_names=[str(i) for i in range(10)])
    assert (tmp_path / "config.json").is_file()
    reloaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert _same_weights(reloaded, lenet)
    assert reloaded.pretrained_cfg["label_names"] == [str(i) for i in range(10)]


def test_output_stem_keeps_inner_dots_and_treats_pth_tar_as_one_suffix() -> None:
    from pucli.paths import output_stem
    from pucli.report import report_path_for

    assert output_stem("runs/model_best.pth.tar") == "model_best"
    assert output_stem("teacher.v2.pth") == "teacher.v2"
    assert report_path_for(Path("out/index.v2.tsv")) == Path("out/index.v2.report.json")


def _train_py_args(**overrides: object) -> argparse.Namespace:
    """The args timm's train.py stores in its checkpoints (the ones pucli reads), at their defaults."""
    args = {"model": "test_resnet", "num_classes": 3, "in_chans": 1, "input_size": None, "img_size": None, "mean": None,
            "std": None, "interpolation": "", "crop_pct": None, "gp": None, "drop": 0.0, "drop_path": None,
            "drop_block": None, "bn_momentum": None, "bn_eps": None, "model_kwargs": {}}
    return argparse.Namespace(**{**args, **overrides})


def _train_py_checkpoint(path: Path, model: torch.nn.Module, args: argparse.Namespace) -> Path:
    torch.save({"epoch": 3, "arch": type(model).__name__, "state_dict": model.state_dict(), "args": args,
                "version": 2}, path)
    return path


def test_train_py_checkpoint_is_built_with_its_model_kwargs_and_gp(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = timm.create_model("test_resnet", num_classes=3, in_chans=1, global_pool="max", stem_width=24).eval()
    path = _train_py_checkpoint(tmp_path / "model_best.pth.tar", trained,
                                _train_py_args(gp="max", model_kwargs={"stem_width": 24}, img_size=40, crop_pct=0.9,
                                               drop_path=0.1))
    loaded = load_model(path)
    assert loaded.config.model_args == {"stem_width": 24, "global_pool": "max", "drop_path_rate": 0.1}
    assert loaded.model.global_pool.pool_type == "max"
    assert loaded.config.input_size == (1, 40, 40) and loaded.config.crop_pct == 0.9
    images = torch.rand(2, 1, 40, 40)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(images), trained(images))


def test_train_py_checkpoint_built_with_unrecorded_arguments_says_to_write_a_sidecar(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = timm.create_model("test_resnet", num_classes=3, in_chans=1, stem_width=24).eval()
    path = _train_py_checkpoint(tmp_path / "model_best.pth.tar", trained, _train_py_args())  # stem_width not in args
    with pytest.raises(TeacherFormatError, match=r"model_best\.config\.json") as info:
        load_model(path)
    assert "--arch" not in str(info.value) and "\n" not in str(info.value)
    # The sidecar config gives the rest, and then it loads.
    (tmp_path / "model_best.config.json").write_text(json.dumps({"model_args": {"stem_width": 24}}))
    assert load_model(path).config.model_args["stem_width"] == 24


def test_model_args_an_architecture_does_not_take_are_a_clear_error(tmp_path: Path, lenet: torch.nn.Module) -> None:
    path = _train_py_checkpoint(tmp_path / "m.pth.tar", lenet,
                                _train_py_args(model="lenet5", num_classes=10, model_kwargs={"no_such_arg": 1}))
    with pytest.raises(TeacherFormatError, match="does not take model_args"):
        load_model(path)
