"""ONNX export, int8 quantization and ONNX Runtime evaluation (pucli.deploy) on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
import onnx
import onnxruntime as ort

from pucli.checkpoints import load_model, save_model
from pucli.deploy.export import export_model, int8_path_for
from pucli.deploy.int8 import calibration_images, quantize_int8
from pucli.deploy.metadata import config_from_metadata, read_metadata
from pucli.deploy.onnx_export import export_onnx
from pucli.deploy.onnx_runtime import OnnxRuntimeModule, load_onnx
from pucli.errors import DataError, UsageError


@pytest.fixture
def real_images(make_pool, tiny_teacher: Path) -> torch.Tensor:
    """12 decoded, normalised PNGs at the tiny teacher's input size: float32 (12, 1, 28, 28)."""
    return calibration_images(str(make_pool("pool", count=12)), load_model(tiny_teacher).config, images=12)


def _ort_logits(path: Path, images: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]


def test_export_matches_pytorch_within_1e_4_at_every_batch_size(tiny_teacher: Path, real_images: torch.Tensor,
                                                                  tmp_path: Path, one_thread) -> None:
    loaded = load_model(tiny_teacher)
    out = tmp_path / "teacher.onnx"
    check = export_onnx(loaded, out, check_inputs=real_images)
    assert check.inputs == "images" and check.images == 12 and check.max_abs_diff <= 1e-4
    with torch.inference_mode():
        expected = loaded.model(real_images).numpy()
    for size in (1, 5, 12):  # the batch axis is dynamic
        np.testing.assert_allclose(_ort_logits(out, real_images[:size]), expected[:size], atol=1e-4, rtol=1e-4)
    batch_dim = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value


def test_onnx_metadata_carries_preprocessing_class_names_and_size(tiny_teacher: Path, tmp_path: Path) -> None:
    loaded = load_model(tiny_teacher)
    out = tmp_path / "teacher.onnx"
    export_onnx(loaded, out)
    custom = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert json.loads(custom["pucli.class_names"]) == ["0", "1", "2"]
    assert json.loads(custom["pucli.input_size"]) == [1, 28, 28]
    metadata = read_metadata(out)
    config = config_from_metadata(metadata)
    for field in ("architecture", "num_classes", "in_chans", "input_size", "mean", "std", "interpolation", "crop_pct", "label_names"):
        assert getattr(config, field) == getattr(loaded.config, field), field
    assert metadata["params"] == sum(p.numel() for p in loaded.model.parameters())
    assert metadata["precision"] == "float32" and metadata["source"]["digest"] == loaded.digest


def test_export_of_a_timm_resnet_matches_pytorch(tmp_path: Path, one_thread) -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=4, in_chans=3).eval()
    path = save_model(model, tmp_path / "resnet.safetensors", label_names=list("abcd"))
    images = torch.randn(3, 3, 160, 160)
    check = export_onnx(load_model(path), tmp_path / "resnet.onnx", check_inputs=images)
    assert check.max_abs_diff <= 1e-4
    with torch.inference_mode():
        np.testing.assert_allclose(_ort_logits(tmp_path / "resnet.onnx", images), model(images).numpy(), atol=1e-4, rtol=1e-4)


def test_a_failed_check_raises_and_leaves_nothing_behind(tiny_teacher: Path, tmp_path: Path, monkeypatch) -> None:
    original = OnnxRuntimeModule.forward
    monkeypatch.setattr(OnnxRuntimeModule, "forward", lambda self, x: original(self, x) + 1e-3)
    with pytest.raises(DataError, match="differ from PyTorch's"):
        export_onnx(load_model(tiny_teacher), tmp_path / "teacher.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["teacher.safetensors", "teacher.config.json"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx.export(dynamo=False), called directly
def test_read_metadata_refuses_onnx_files_pucli_did_not_write(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    torch.onnx.export(model, (torch.zeros(1, 3),), str(tmp_path / "plain.onnx"), dynamo=False)
    with pytest.raises(DataError, match="no pucli metadata"):
        read_metadata(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(DataError):
        load_onnx(tmp_path / "junk.onnx")
    with pytest.raises(UsageError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")


def test_int8_is_qdq_with_per_channel_weights_and_tracks_the_float_logits(tiny_teacher: Path, real_images: torch.Tensor,
                                                                           tmp_path: Path, one_thread) -> None:
    loaded = load_model(tiny_teacher)
    export_onnx(loaded, tmp_path / "teacher.onnx")
    quantize_int8(tmp_path / "teacher.onnx", tmp_path / "teacher.int8.onnx", real_images)
    graph = onnx.load(str(tmp_path / "teacher.int8.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    initializers = {init.name: init for init in graph.initializer}
    conv_weights = [  # (int8 weight, its scale) of each convolution
        (initializers[node.input[0]], initializers[node.input[1]]) for node in graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers
        and initializers[node.input[0]].data_type == onnx.TensorProto.INT8 and len(initializers[node.input[0]].dims) == 4
    ]
    assert len(conv_weights) == 2  # LeNet-5's two convolutions, one scale per output channel
    assert all(list(scale.dims) == [weight.dims[0]] for weight, scale in conv_weights)
    assert read_metadata(tmp_path / "teacher.int8.onnx")["precision"] == "int8"
    assert (tmp_path / "teacher.int8.onnx").stat().st_size < (tmp_path / "teacher.onnx").stat().st_size / 2
    float_logits = _ort_logits(tmp_path / "teacher.onnx", real_images)
    int8_logits = _ort_logits(tmp_path / "teacher.int8.onnx", real_images)
    spread = float(float_logits.max() - float_logits.min())
    assert np.abs(int8_logits - float_logits).max() < 0.1 * spread


def test_calibration_images_are_a_seeded_draw_from_an_index_or_a_pool(make_pool, tiny_teacher: Path, tmp_path: Path) -> None:
    from pucli.data.index import IndexEntry, write_index

    config = load_model(tiny_teacher).config
    pool = make_pool("pool", count=10)
    files = sorted(pool.rglob("*.png"))
    index = tmp_path / "index.tsv"
    write_index([IndexEntry(p, 1.0 - i / 10, selected=i < 6) for i, p in enumerate(files)], index, with_selected=True)
    kept = calibration_images(str(index), config, images=100)
    everything = calibration_images(str(pool), config, images=100)
    assert kept.shape == (6, 1, 28, 28) and everything.shape == (10, 1, 28, 28)  # an index gives its kept images
    sample = calibration_images(str(pool), config, images=4, seed=3)
    assert sample.shape[0] == 4 and torch.equal(sample, calibration_images(str(pool), config, images=4, seed=3))
    assert not torch.equal(sample, calibration_images(str(pool), config, images=4, seed=4))
    with pytest.raises(UsageError):
        calibration_images(str(tmp_path / "nowhere"), config)
    with pytest.raises(UsageError, match="images 0"):
        calibration_images(str(pool), config, images=0)


def test_export_model_writes_float_and_int8_beside_it(tiny_teacher: Path, make_pool, tmp_path: Path, one_thread) -> None:
    pool = make_pool("pool", count=20)
    with pytest.raises(UsageError, match="`int8` needs `calibration=SRC`"):
        export_model(tiny_teacher, tmp_path / "m.onnx", int8=True)
    result = export_model(tiny_teacher, tmp_path / "m.onnx", int8=True, calibration=str(pool), images=16)
    assert result.int8 == str(int8_path_for(tmp_path / "m.onnx")) == str(tmp_path / "m.int8.onnx")
    assert result.calibration_images == 16 and result.check.images == 16 and result.check.inputs == "images"
    assert 0.0 <= result.int8_top1_agreement <= 1.0 and result.int8_bytes < result.onnx_bytes


def test_evaluate_runs_onnx_side_by_side_with_pytorch(tiny_teacher: Path, make_class_folder, tmp_path: Path, one_thread) -> None:
    from pucli.evaluate import evaluate_model

    test_dir = make_class_folder("test", per_class=4)
    loaded = load_model(tiny_teacher)
    export_onnx(loaded, tmp_path / "teacher.onnx")
    on_torch = evaluate_model(loaded, test_dir, device=torch.device("cpu"), measure_speed=False)
    on_ort = evaluate_model(load_onnx(tmp_path / "teacher.onnx"), test_dir, device=torch.device("cpu"))
    assert on_ort.runtime == "onnxruntime" and on_torch.runtime == "pytorch"
    assert (on_ort.top1, on_ort.top5, on_ort.images) == (on_torch.top1, on_torch.top5, on_torch.images)
    assert (on_ort.params, on_ort.flops_per_image) == (on_torch.params, on_torch.flops_per_image)
    assert on_ort.latency_ms > 0 and on_ort.throughput > 0 and on_ort.device == "cpu"
    assert on_ort.file_bytes == (tmp_path / "teacher.onnx").stat().st_size


def test_plot_draws_one_point_per_model_to_a_png(tiny_teacher: Path, make_class_folder, tmp_path: Path, one_thread) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    from pucli.deploy.plot import check_plot_output, plot_evaluations
    from pucli.evaluate import evaluate_model

    test_dir = make_class_folder("test", per_class=2)
    export_onnx(load_model(tiny_teacher), tmp_path / "teacher.onnx")
    results = [evaluate_model(load_model(tiny_teacher), test_dir, device=torch.device("cpu")),
               evaluate_model(load_onnx(tmp_path / "teacher.onnx"), test_dir, device=torch.device("cpu"))]
    out = plot_evaluations(results, tmp_path / "plot.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 800 and image.height > 300
    with pytest.raises(UsageError, match=".png"):
        check_plot_output(tmp_path / "plot.svg")
    with pytest.raises(UsageError, match="does not exist"):
        check_plot_output(tmp_path / "missing" / "plot.png")


def test_the_torch_export_exporter_takes_over_when_torchscript_cannot_trace(tiny_teacher: Path, tmp_path: Path,
                                                                            monkeypatch) -> None:
    pytest.importorskip("onnxscript")
    real_export = torch.onnx.export
    calls: list[bool] = []

    def export(*args, dynamo: bool = True, **kwargs):
        calls.append(dynamo)
        if not dynamo:
            raise RuntimeError("unsupported operator for TorchScript")
        return real_export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export)
    check = export_onnx(load_model(tiny_teacher), tmp_path / "teacher.onnx")
    assert calls == [False, True] and check.max_abs_diff <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir() if "onnx" in p.name) == ["teacher.onnx"]  # weights inside, no .data file
    assert read_metadata(tmp_path / "teacher.onnx")["architecture"] == "lenet5"


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibrators_take_a_count_that_does_not_fill_the_last_batch(tiny_teacher: Path, real_images: torch.Tensor,
                                                                              tmp_path: Path, method: str, capfd) -> None:
    export_onnx(load_model(tiny_teacher), tmp_path / "teacher.onnx")
    out = quantize_int8(tmp_path / "teacher.onnx", tmp_path / "teacher.int8.onnx", real_images[:11], method=method, batch_size=4)
    assert read_metadata(out)["precision"] == "int8"
    assert capfd.readouterr().out == ""  # ORT's calibrator chatter stays off stdout
    with pytest.raises(UsageError, match="method median"):
        quantize_int8(tmp_path / "teacher.onnx", tmp_path / "x.onnx", real_images, method="median")
