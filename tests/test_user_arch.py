"""A teacher or student from the user's own code (``--arch PATH.py:NAME``) or torchvision
(``torchvision:NAME``): import only when named, weights in every form, the preprocessing declared
once, the multi-scale taps found by torch.fx, outputs that name their code (issue 26).

Every model here is written by the test itself (a module file in ``tmp_path``), tiny, on 16 x 16
RGB images."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pucli.architectures import ModelSpec, code_digest, parse_arch, parse_kwargs
from pucli.checkpoints import load_model, save_model
from pucli.cli import app
from pucli.errors import DataError, MissingOptionError, OptionError, PucliWarning, TeacherFormatError
from tests.conftest import write_png

TINY_NET = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes=3, width=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                    nn.BatchNorm2d(2 * width), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1, bias=False),
                                    nn.BatchNorm2d(4 * width), nn.ReLU())
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def tiny_net(num_classes=3, width=4):
    return TinyNet(num_classes, width)


def tiny_half():
    return TinyNet(3, 2)
'''
SIZE = ["--input-size", "3", "16", "16"]
MEAN_STD = ["--mean", "0.5", "0.4", "0.3", "--std", "0.25", "0.2", "0.3"]


@pytest.fixture
def net_file(tmp_path: Path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(TINY_NET)
    return path


def _build(net_file: Path, name: str = "tiny_net", **kwargs: object) -> torch.nn.Module:
    from pucli.architectures import build_network

    torch.manual_seed(0)
    return build_network(parse_arch(f"{net_file}:{name}", kwargs=kwargs))


@pytest.fixture
def teacher_pth(tmp_path: Path, net_file: Path) -> Path:
    """A tiny TinyNet teacher saved as DataParallel would save it: ``{'state_dict': {'module.*': ...}}``."""
    model = _build(net_file)
    path = tmp_path / "teacher.th"
    torch.save({"best_prec1": 50.0, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture
def labeled(tmp_path: Path) -> Path:
    root = tmp_path / "labeled"
    for k, name in enumerate(("a", "b", "c")):
        for i in range(4):
            write_png(root / name / f"{i}.png", size=(16, 16), mode="RGB", seed=10 * k + i)
    return root


def _run(*args: str) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_error(result: object, code: int) -> str:
    assert result.exit_code == code, result.output  # type: ignore[attr-defined]
    text = result.output.strip()  # type: ignore[attr-defined]
    assert text.startswith("error:") and "Traceback" not in text and "\n" not in text, text
    return text


# --- naming the code --------------------------------------------------------------------------


def test_arch_spellings_parse_to_timm_torchvision_or_file(net_file: Path) -> None:
    assert parse_arch("resnet18").kind == "timm"
    assert parse_arch("torchvision:resnet18").name == "resnet18"
    spec = parse_arch(f"{net_file}:tiny_net", kwargs={"width": 2})
    assert (spec.kind, spec.name, spec.file, spec.label) == ("file", "tiny_net", net_file.resolve(), "nets.py:tiny_net")
    with pytest.raises(OptionError, match="PATH.py:NAME"):
        parse_arch(str(net_file))
    with pytest.raises(OptionError, match="does not exist"):
        parse_arch("missing.py:net")
    with pytest.raises(OptionError, match="JSON"):
        parse_kwargs("{num_classes: 3}")
    with pytest.raises(OptionError, match="object"):
        parse_kwargs("[3]")


def test_file_that_raises_on_import_is_one_line_naming_the_file(tmp_path: Path, teacher_pth: Path, labeled: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("import torch\n\nraise RuntimeError('no GPU here')\n")
    result = _run("evaluate", teacher_pth, "--arch", f"{bad}:net", *SIZE, "--data", labeled)
    text = _one_line_error(result, 1)
    assert str(bad) in text and "RuntimeError: no GPU here" in text and "line 3" in text


def test_missing_name_is_one_line_listing_what_the_file_defines(net_file: Path, teacher_pth: Path, labeled: Path) -> None:
    result = _run("evaluate", teacher_pth, "--arch", f"{net_file}:tiny_nett", *SIZE, "--data", labeled)
    text = _one_line_error(result, 2)
    assert text.startswith(f"error: --arch {net_file}:tiny_nett:") and "defines no tiny_nett" in text
    assert "closest: tiny_net" in text


def test_checkpoint_whose_pickle_would_run_code_is_refused_and_runs_nothing(tmp_path: Path, labeled: Path) -> None:
    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):  # what a malicious checkpoint does on unpickling
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": RunsCode()}, evil)
    result = _run("evaluate", evil, "--arch", "torchvision:resnet18", *SIZE, "--data", labeled)
    text = _one_line_error(result, 1)
    assert "never unpickles" in text and not marker.exists()


def test_no_input_size_for_user_code_is_one_line_naming_the_flag(net_file: Path, teacher_pth: Path, labeled: Path) -> None:
    text = _one_line_error(_run("evaluate", teacher_pth, "--arch", f"{net_file}:tiny_net", "--data", labeled), 2)
    assert text.startswith("error: --input-size is needed:") and "C H W" in text


def test_kwargs_the_factory_does_not_take_name_the_flag(net_file: Path, teacher_pth: Path, labeled: Path) -> None:
    result = _run("evaluate", teacher_pth, "--arch", f"{net_file}:tiny_net", "--arch-kwargs", '{"depth": 3}', *SIZE,
                  "--data", labeled)
    assert _one_line_error(result, 2).startswith('error: --arch-kwargs {"depth": 3}: nets.py:tiny_net does not take them')


# --- weights ----------------------------------------------------------------------------------


def test_module_and_orig_mod_prefixes_are_stripped_in_every_format(tmp_path: Path, net_file: Path) -> None:
    from safetensors.torch import save_file

    model = _build(net_file)
    reference = model.state_dict()
    spec = ModelSpec(arch=f"{net_file}:tiny_net", input_size=(3, 16, 16))
    forms = {
        "plain.pth": {f"_orig_mod.{k}": v for k, v in reference.items()},
        "ddp_compiled.pth": {"state_dict": {f"module._orig_mod.{k}": v for k, v in reference.items()}},
    }
    for name, content in forms.items():
        torch.save(content, tmp_path / name)
    save_file({f"module.{k}": v.contiguous() for k, v in reference.items()}, str(tmp_path / "bare.safetensors"))
    for name in (*forms, "bare.safetensors"):
        loaded = load_model(tmp_path / name, spec)
        for key, value in loaded.model.state_dict().items():
            torch.testing.assert_close(value, reference[key])
        assert loaded.config.num_classes == 3 and loaded.config.architecture == "nets.py:tiny_net"


def test_weights_that_do_not_fit_the_code_name_missing_and_unexpected_keys(tmp_path: Path, net_file: Path) -> None:
    state = _build(net_file).state_dict()
    state["extra.weight"] = state.pop("fc.weight")
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(TeacherFormatError, match=r"missing fc\.weight; unexpected extra\.weight"):
        load_model(tmp_path / "odd.pth", ModelSpec(arch=f"{net_file}:tiny_net", input_size=(3, 16, 16)))


def test_preprocessing_defaults_for_user_code_leave_an_image_of_the_input_size_untouched(teacher_pth: Path,
                                                                                     net_file: Path) -> None:
    config = load_model(teacher_pth, ModelSpec(arch=f"{net_file}:tiny_net", input_size=(3, 16, 16))).config
    assert (config.interpolation, config.crop_pct, config.crop_mode) == ("bilinear", 1.0, "center")
    assert config.mean == (0.485, 0.456, 0.406) and config.std == (0.229, 0.224, 0.225)
    from pucli.data.loading import Preprocess

    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    assert torch.equal(Preprocess(config).resize(image), image)


# --- outputs name their code ------------------------------------------------------------------


def _saved_student(tmp_path: Path, net_file: Path) -> Path:
    import dataclasses

    from pucli.checkpoints import build_student

    teacher = load_model(tmp_path / "teacher.th", ModelSpec(arch=f"{net_file}:tiny_net", input_size=(3, 16, 16),
                                                             mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3)))
    model, config = build_student(parse_arch(f"{net_file}:tiny_half", parameter="student"), teacher.config)
    config = dataclasses.replace(config, label_names=("a", "b", "c"))
    return save_model(model, tmp_path / "student.safetensors", label_names=config.label_names, config=config)


def test_student_config_names_the_code_and_never_holds_it(tmp_path: Path, net_file: Path, teacher_pth: Path) -> None:
    student = _saved_student(tmp_path, net_file)
    config = json.loads((tmp_path / "student.config.json").read_text())
    assert config["architecture"] == "nets.py:tiny_half"
    assert config["code"] == {"arch": f"{net_file.resolve()}:tiny_half", "sha256": code_digest(net_file), "kwargs": {}}
    assert config["pretrained_cfg"]["input_size"] == [3, 16, 16] and config["pretrained_cfg"]["mean"] == [0.5, 0.4, 0.3]
    assert "TinyNet" not in student.read_bytes().decode("latin-1")  # no code, no pickle


def test_reloading_needs_the_code_named_again(tmp_path: Path, net_file: Path, teacher_pth: Path) -> None:
    student = _saved_student(tmp_path, net_file)
    with pytest.raises(MissingOptionError, match="imports code only when it is named"):
        load_model(student)
    loaded = load_model(student, ModelSpec(arch=f"{net_file}:tiny_half"))
    assert loaded.config.input_size == (3, 16, 16) and loaded.config.std == (0.25, 0.2, 0.3)
    assert loaded.config.label_names == ("a", "b", "c")
    # Any other Python file the command line names lets the config's own code load.
    assert load_model(student, ModelSpec(code_files=(str(net_file.resolve()),))).config.architecture == "nets.py:tiny_half"


def test_changed_code_file_warns_naming_both_digests(tmp_path: Path, net_file: Path, teacher_pth: Path,
                                                     labeled: Path) -> None:
    student = _saved_student(tmp_path, net_file)
    before = code_digest(net_file)
    net_file.write_text(TINY_NET + "\n# tuned since\n")
    after = code_digest(net_file)
    with pytest.warns(PucliWarning, match=f"{before}.*{after}"):
        load_model(student, ModelSpec(arch=f"{net_file}:tiny_half"))
    result = _run("evaluate", student, "--arch", f"{net_file}:tiny_half", "--data", labeled, "--workers", "0")
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.output.splitlines() if line.startswith("warning:"))
    assert before in result.output and after in result.output and "student.safetensors" in warning


def test_config_round_trip_second_command_needs_no_preprocessing_flags(tmp_path: Path, net_file: Path,
                                                                      teacher_pth: Path, labeled: Path) -> None:
    arch = f"{net_file}:tiny_net"
    out = tmp_path / "q.safetensors"
    first = _run("quantize", teacher_pth, "--arch", arch, *SIZE, *MEAN_STD, "--interpolation", "bicubic",
                 "--crop-pct", "0.875", "--weight-bits", "8", "--out", out)
    assert first.exit_code == 0, first.output
    report = tmp_path / "eval.report.json"
    second = _run("evaluate", out, "--arch", arch, "--data", labeled, "--workers", "0", "--report", report)
    assert second.exit_code == 0, second.output
    seen = json.loads(report.read_text())["preprocessing"][0]
    assert seen["input_size"] == [3, 16, 16] and seen["mean"] == [0.5, 0.4, 0.3] and seen["std"] == [0.25, 0.2, 0.3]
    assert (seen["interpolation"], seen["crop_pct"]) == ("bicubic", 0.875)
    assert seen["code"]["arch"] == f"{net_file.resolve()}:tiny_net"
    missing = _run("evaluate", out, "--data", labeled)
    assert "error: --arch is needed" in _one_line_error(missing, 2)


def test_evaluate_takes_one_arch_per_model(tmp_path: Path, net_file: Path, teacher_pth: Path, labeled: Path) -> None:
    student = _saved_student(tmp_path, net_file)
    result = _run("evaluate", teacher_pth, student, "--arch", f"{net_file}:tiny_net", "--arch", f"{net_file}:tiny_half",
                  *SIZE, "--data", labeled, "--workers", "0", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["models"]
    assert [r["architecture"] for r in rows] == ["nets.py:tiny_net", "nets.py:tiny_half"]
    wrong = _run("evaluate", teacher_pth, student, labeled, "--arch", "a", "--arch", "b", "--data", labeled)
    assert "once per MODEL" in _one_line_error(wrong, 2)


def test_mean_and_std_take_several_numbers_or_commas() -> None:
    from pucli.cli._options import join_number_lists, model_spec

    args = join_number_lists(["--mean", "0.5", "0.4", "0.3", "m.pth", "--std", "0.2,0.2,0.2", "--", "--mean", "1"])
    assert args == ["--mean", "0.5,0.4,0.3", "m.pth", "--std", "0.2,0.2,0.2", "--", "--mean", "1"]
    spec = model_spec(None, None, (3, 8, 8), "0.5,0.4,0.3", "0.2 0.2 0.2")
    assert spec.mean == (0.5, 0.4, 0.3) and spec.std == (0.2, 0.2, 0.2)
    with pytest.raises(OptionError, match="one number per input channel"):
        ModelSpec(input_size=(3, 8, 8), mean=(0.5, 0.5))
    with pytest.raises(OptionError, match="crop_pct"):
        ModelSpec(crop_pct=1.5)


# --- the selector's taps ----------------------------------------------------------------------


def test_fx_taps_are_the_last_node_at_each_resolution_and_the_classifier_input(net_file: Path) -> None:
    from pucli.pu.network import MultiScaleExtractor
    from pucli.pu.options import Scales

    model = _build(net_file)
    extractor = MultiScaleExtractor(model, Scales(), input_size=(3, 16, 16))
    assert extractor.tap_summary((3, 16, 16)) == [
        {"node": "stem.2", "shape": [4, 16, 16]}, {"node": "layer1.2", "shape": [8, 8, 8]},
        {"node": "layer2.2", "shape": [16, 4, 4]}, {"node": "flatten", "shape": [16]}]
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        descriptor = extractor(images)
        stem = model.stem(images)
        layer2 = model.layer2(model.layer1(stem))
    assert descriptor.shape == (2, 4 + 8 + 16 + 16) and extractor.channels == 44
    torch.testing.assert_close(descriptor[:, :4], stem.mean(dim=(2, 3)))
    torch.testing.assert_close(descriptor[:, -16:], layer2.mean(dim=(2, 3)))
    assert sum(p.numel() for p in extractor.parameters()) < sum(p.numel() for p in model.parameters())  # no copy


def test_named_taps_by_module_or_fx_node(net_file: Path) -> None:
    from pucli.pu.network import MultiScaleExtractor
    from pucli.pu.options import Scales, parse_taps

    model = _build(net_file)
    modules = MultiScaleExtractor(model, Scales(taps=parse_taps("layer1, layer2")), input_size=(3, 16, 16))
    assert [t["node"] for t in modules.tap_summary((3, 16, 16))] == ["layer1", "layer2"] and modules.channels == 24
    nodes = MultiScaleExtractor(model, Scales(taps=("layer1.0", "flatten")), input_size=(3, 16, 16))
    assert nodes.tap_summary((3, 16, 16)) == [{"node": "layer1.0", "shape": [8, 8, 8]}, {"node": "flatten", "shape": [16]}]
    with pytest.raises(OptionError, match="no layer or node layer3 .*closest"):
        MultiScaleExtractor(model, Scales(taps=("layer1", "layer3")), input_size=(3, 16, 16))


# --- labeled tar shards -----------------------------------------------------------------------


def _pack_labeled(root: Path, tar_path: Path, prefix: str = "test") -> Path:
    with tarfile.open(tar_path, "w") as archive:
        for path in sorted(root.rglob("*.png")):
            archive.add(path, arcname=f"{prefix}/{path.relative_to(root).as_posix()}")
    return tar_path


def test_labeled_tar_members_take_their_parent_folder_as_class(tmp_path: Path, labeled: Path) -> None:
    from pucli.data.sources import LabeledFolder

    shard = _pack_labeled(labeled, tmp_path / "labeled-000.tar")
    folder = LabeledFolder.from_folder(labeled, num_classes=3)
    packed = LabeledFolder.from_folder(shard, num_classes=3)
    assert packed.class_names == folder.class_names == ["a", "b", "c"] and packed.labels == folder.labels
    assert [str(p) for p in packed.paths][:2] == [f"{shard}#test/a/0.png", f"{shard}#test/a/1.png"]
    braces = LabeledFolder.from_folder(tmp_path / "labeled-{000..000}.tar", num_classes=3)
    assert braces.paths == packed.paths


def test_evaluate_reads_a_labeled_tar_as_it_reads_the_folder(tmp_path: Path, net_file: Path, teacher_pth: Path,
                                                             labeled: Path) -> None:
    shard = _pack_labeled(labeled, tmp_path / "test.tar")
    figures = []
    for data in (labeled, shard):
        result = _run("evaluate", teacher_pth, "--arch", f"{net_file}:tiny_net", *SIZE, "--data", data, "--workers", "0",
                      "--json")
        assert result.exit_code == 0, result.output
        row = json.loads(result.stdout)["models"][0]
        figures.append((row["images"], row["top1"], row["top5"]))
    assert figures[0] == figures[1] and figures[0][0] == 12


# --- whole commands ---------------------------------------------------------------------------


def test_student_from_code_with_the_wrong_width_names_student_kwargs(tmp_path: Path, net_file: Path,
                                                                     teacher_pth: Path) -> None:
    from pucli.checkpoints import build_student

    teacher = load_model(teacher_pth, ModelSpec(arch=f"{net_file}:tiny_net", input_size=(3, 16, 16)))
    with pytest.raises(OptionError, match=r"builds 5 outputs but the teacher has 3 classes") as info:
        build_student(parse_arch(f"{net_file}:tiny_net", parameter="student", kwargs={"num_classes": 5}), teacher.config)
    assert info.value.parameter == "student_kwargs"
    model, config = build_student(parse_arch("torchvision:resnet18", parameter="student"), teacher.config)
    assert config.code == {"arch": "torchvision:resnet18", "kwargs": {}} and model.fc.out_features == 3


def test_torchvision_teacher_class_count_comes_from_its_weights(tmp_path: Path) -> None:
    import torchvision

    torch.save(torchvision.models.mobilenet_v3_small(num_classes=7).state_dict(), tmp_path / "mnv3.pth")
    loaded = load_model(tmp_path / "mnv3.pth", ModelSpec(arch="torchvision:mobilenet_v3_small", input_size=(3, 32, 32)))
    assert loaded.config.num_classes == 7 and loaded.config.code == {"arch": "torchvision:mobilenet_v3_small", "kwargs": {}}
    with pytest.raises(OptionError, match="torchvision has no model resnet19 .*closest"):
        load_model(tmp_path / "mnv3.pth", ModelSpec(arch="torchvision:resnet19", input_size=(3, 32, 32)))


def test_user_code_model_exports_to_onnx_matching_pytorch(tmp_path: Path, net_file: Path, teacher_pth: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "tiny.onnx"
    result = _run("export", teacher_pth, "--arch", f"{net_file}:tiny_net", *SIZE, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    check = json.loads(result.stdout)["check"]
    assert check["max_abs_diff"] <= 1e-4 and check["top1_agreement"] == 1.0


def test_torchvision_resnet18_teacher_runs_through_select_expand_distill(tmp_path: Path, net_file: Path,
                                                                        one_thread: None) -> None:
    import torchvision

    torch.manual_seed(0)
    teacher = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), teacher)  # what the user would save
    positive, pool = tmp_path / "positive", tmp_path / "pool"
    for k in range(10):
        write_png(positive / f"c{k}" / "0.png", size=(32, 32), mode="RGB", seed=k)
    for i in range(16):
        write_png(pool / f"u{i:02d}.png", size=(32, 32), mode="RGB", seed=100 + i)
    model = ["--arch", "torchvision:resnet18", "--input-size", "3", "32", "32"]
    common = ["--workers", "0", "--threads", "1", "--force"]
    index = tmp_path / "sel.tsv"
    selected = _run("select", teacher, *model, "--positive", positive, "--unlabeled", pool, "--out", index, "--prior",
                    "0.5", "--budget", "6", "--epochs", "2", "--ensemble", "1", "--no-cache", *common)
    assert selected.exit_code == 0, selected.output
    report = json.loads((tmp_path / "sel.report.json").read_text())
    assert [t["node"] for t in report["results"]["taps"]] == ["relu", "layer1.1.relu_1", "layer2.1.relu_1",
                                                              "layer3.1.relu_1", "flatten"]
    expanded = tmp_path / "expanded"
    done = _run("expand", teacher, *model, "--positive", positive, "--index", index, "--out", expanded, *common)
    assert done.exit_code == 0, done.output
    student = tmp_path / "student.safetensors"
    trained = _run("distill", teacher, *model, "--data", expanded, "--student", f"{net_file}:tiny_net",
                   "--student-kwargs", '{"num_classes": 10}', "--epochs", "1", "--batch-size", "8", "--out", student,
                   *common)
    assert trained.exit_code == 0, trained.output
    config = json.loads((tmp_path / "student.config.json").read_text())
    assert config["code"]["kwargs"] == {"num_classes": 10} and config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pucli"]["teacher"] == str(teacher)


def test_file_code_is_never_imported_without_being_named(tmp_path: Path, net_file: Path) -> None:
    """A config that names code is not enough: the import happens only for a file the line names."""
    marker = tmp_path / "imported"
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text(TINY_NET + f"\nopen({str(marker)!r}, 'w').close()\n")
    student = _saved_student_of(tmp_path, sneaky)
    marker.unlink()
    with pytest.raises(MissingOptionError):
        load_model(student)
    assert not marker.exists()


def _saved_student_of(tmp_path: Path, file: Path) -> Path:
    model = _build(file)
    from pucli.architectures import code_record
    from pucli.checkpoints import ModelConfig

    config = ModelConfig("sneaky.py:tiny_net", 3, 3, (3, 16, 16), (0.5,) * 3, (0.5,) * 3,
                         code=code_record(parse_arch(f"{file}:tiny_net")))
    return save_model(model, tmp_path / "sneaky.safetensors", config=config)


def test_model_that_is_not_a_classifier_says_so(tmp_path: Path) -> None:
    odd = tmp_path / "odd.py"
    odd.write_text("from torch import nn\n\ndef features():\n    return nn.Conv2d(3, 4, 3)\n\ndef nothing():\n    return 3\n")
    torch.save(torch.nn.Conv2d(3, 4, 3).state_dict(), tmp_path / "conv.pth")
    with pytest.raises(OptionError, match=r"gives \(1, 4, 6, 6\) for one image, not \(1, K\) logits"):
        load_model(tmp_path / "conv.pth", ModelSpec(arch=f"{odd}:features", input_size=(3, 8, 8)))
    with pytest.raises(DataError, match="returned a int, not a torch.nn.Module"):
        load_model(tmp_path / "conv.pth", ModelSpec(arch=f"{odd}:nothing", input_size=(3, 8, 8)))


# --- what does not work says so in one line ---------------------------------------------------

OPTION_A = '''
import torch
import torch.nn.functional as F
from torch import nn


class LambdaLayer(nn.Module):
    def __init__(self, lambd):
        super().__init__()
        self.lambd = lambd

    def forward(self, x):
        return self.lambd(x)


class BasicBlock(nn.Module):
    """The CIFAR ResNets' block with the "option A" shortcut: channels padded with zeros (F.pad)."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, width=4, num_classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2)
        self.linear = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.linear(F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1))


def option_a():
    return ResNet()


class Lgamma(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(torch.lgamma(x.abs() + 1).mean(dim=(2, 3)))


def lgamma_net():
    return Lgamma()
'''


@pytest.fixture
def odd_file(tmp_path: Path) -> Path:
    path = tmp_path / "odd.py"
    path.write_text(OPTION_A)
    return path


def _weights_of(odd_file: Path, name: str, tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / f"{name}.pth"
    torch.save(_build(odd_file, name).state_dict(), path)
    return path


def test_prune_refuses_a_channel_padding_shortcut_in_one_line(tmp_path: Path, odd_file: Path) -> None:
    pytest.importorskip("torch_pruning")
    weights = _weights_of(odd_file, "option_a", tmp_path)
    out = tmp_path / "pruned.safetensors"
    result = _run("prune", weights, "--arch", f"{odd_file}:option_a", *SIZE, "--ratio", "0.3", "--out", out)
    text = _one_line_error(result, 1)
    assert "Torch-Pruning cannot prune odd.py:option_a (the pruned network no longer runs" in text
    assert "pads or slices channels" in text and not out.exists()


def test_onnx_export_that_fails_says_why_in_one_line_and_nothing_on_stdout(tmp_path: Path, odd_file: Path) -> None:
    pytest.importorskip("onnxruntime")
    weights = _weights_of(odd_file, "lgamma_net", tmp_path)
    out = tmp_path / "lgamma.onnx"
    result = _run("export", weights, "--arch", f"{odd_file}:lgamma_net", *SIZE, "--out", out)
    text = _one_line_error(result, 1)
    assert "cannot export" in text and "aten::lgamma" in text and not out.exists()
    assert result.stdout == ""


def test_finetune_trains_the_traced_taps_of_user_code(tmp_path: Path, net_file: Path, teacher_pth: Path,
                                                      labeled: Path, one_thread: None) -> None:
    """The torch.fx graph shares the teacher copy's layers: fine-tuning trains them, never the teacher."""
    from pucli.pu.options import SelectorOptions
    from pucli.pu.selection import run_selection

    teacher = load_model(teacher_pth, ModelSpec(arch=f"{net_file}:tiny_net", input_size=(3, 16, 16)))
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    pool = [write_png(tmp_path / "pool" / f"u{i}.png", size=(16, 16), mode="RGB", seed=500 + i) for i in range(12)]
    positives = sorted(labeled.rglob("*.png"))
    options = SelectorOptions(class_prior=0.5, finetune=True, epochs=2, batch_size=8, graph_neighbors=0)
    result = run_selection(teacher, positives, pool, options, use_cache=False)
    assert len(result.scores) == 12 and result.taps is not None and result.taps[-1]["node"] == "flatten"
    trained = result.network.extractor.model  # the traced graph's copy of the layers
    assert not torch.equal(trained.network.get_submodule("stem.0").weight, before["stem.0.weight"])
    assert all(torch.equal(v, before[k]) for k, v in teacher.model.state_dict().items())


def test_architectures_import_without_torch() -> None:
    """The command line checks --arch, --arch-kwargs and the preprocessing before it loads torch."""
    import subprocess
    import sys

    code = "import sys\nimport pucli.architectures\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
