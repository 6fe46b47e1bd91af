"""Channel pruning by Torch-Pruning (pucli.compress.prune) and the pruned file format: the history
rebuilds the network exactly, the classifier stays whole, bad ratios and unprunable networks fail."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

pytest.importorskip("torch_pruning")

from pucli.compress.prune import check_ratio, prune_channels
from pucli.compressed_files import replay_pruning
from pucli.errors import DataError, UsageError

INPUT = (1, 28, 28)
DATA_CONFIG = {"input_size": INPUT, "mean": (0.5,), "std": (0.5,)}


def resnet(name: str = "test_resnet"):
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, in_chans=1).eval()


def test_pruning_half_the_channels_keeps_the_classifier_and_cuts_flops() -> None:
    from pucli.evaluate import count_flops

    model = resnet()
    flops = count_flops(model, INPUT)
    outcome = prune_channels(model, INPUT, ratio=0.5)
    assert model.fc.out_features == 10
    assert model.layer1[0].conv1.out_channels == 16  # 32 -> 16
    assert outcome.channels["layer1.0.conv1"] == (32, 16)
    assert count_flops(model, INPUT) <= flops / 2
    assert model(torch.zeros(2, *INPUT)).shape == (2, 10)


def test_history_replayed_on_a_fresh_model_rebuilds_the_pruned_network() -> None:
    model = resnet()
    outcome = prune_channels(model, INPUT, ratio=0.3, importance="magnitude")
    fresh = replay_pruning(resnet(), INPUT, outcome.history)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(3, *INPUT)
    torch.testing.assert_close(fresh(x), model(x))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_outside_zero_one_is_a_usage_error(ratio: float) -> None:
    with pytest.raises(UsageError, match=r"ratio .*\(0, 1\)"):
        check_ratio(ratio)


def test_unknown_ignore_name_says_the_closest_names() -> None:
    with pytest.raises(UsageError, match="ignore layer1.0.conv: .*layer1.0.conv1"):
        prune_channels(resnet(), INPUT, ratio=0.5, ignore=["layer1.0.conv"])


def test_ignored_layers_keep_their_channels() -> None:
    model = resnet()
    prune_channels(model, INPUT, ratio=0.5, ignore=["layer1.0.conv1"])
    assert model.layer1[0].conv1.out_channels == 32


def test_an_architecture_torch_pruning_cannot_handle_is_one_line() -> None:
    import timm

    model = timm.create_model("test_vit", num_classes=10, in_chans=1, img_size=32).eval()
    with pytest.raises(DataError) as info:
        prune_channels(model, (1, 32, 32), ratio=0.5, architecture="test_vit")
    assert "Torch-Pruning cannot prune test_vit" in str(info.value) and "\n" not in str(info.value)


def test_pruned_file_loads_through_load_model_and_gives_the_same_outputs(tmp_path: Path) -> None:
    from safetensors import safe_open

    from pucli.checkpoints import load_model, save_model
    from pucli.compress.formats import COMPRESSION_KEY
    from pucli.compress.steps import prune

    teacher = save_model(resnet(), tmp_path / "t.safetensors", data_config=DATA_CONFIG)
    result = prune(str(teacher), str(tmp_path / "p.safetensors"), ratio=0.5, measure_latency=False)
    assert result.after.params < result.before.params / 2 and result.after.flops <= result.before.flops / 2
    assert result.batchnorm
    with safe_open(str(tmp_path / "p.safetensors"), framework="pt") as handle:
        assert '"history"' in handle.metadata()[COMPRESSION_KEY]
    loaded = load_model(tmp_path / "p.safetensors")
    reference = resnet()
    prune_channels(reference, INPUT, ratio=0.5)
    x = torch.randn(2, *INPUT)
    torch.testing.assert_close(loaded.model(x), reference(x))
    assert loaded.config.input_size == INPUT and loaded.source_format == "pucli-compressed"


def test_pruned_then_quantized_file_keeps_both(tmp_path: Path) -> None:
    from pucli.checkpoints import save_model
    from pucli.compress.formats import open_model
    from pucli.compress.steps import prune, quantize

    teacher = save_model(resnet(), tmp_path / "t.safetensors", data_config=DATA_CONFIG)
    sink = io.BytesIO()
    prune(str(teacher), "-", ratio=0.5, measure_latency=False, stdout=sink)
    quantize("-", str(tmp_path / "pq.safetensors"), bits=4, stdin=io.BytesIO(sink.getvalue()))
    loaded, compression = open_model(tmp_path / "pq.safetensors")
    assert compression.pruning["ratio"] == 0.5 and set(compression.quantization_bits.values()) == {4, 8}
    assert loaded.model.layer1[0].conv1.out_channels == 16
    with pytest.raises(UsageError, match="prune the float model first"):
        prune(str(tmp_path / "pq.safetensors"), str(tmp_path / "x.safetensors"), ratio=0.5)
    assert not (tmp_path / "x.safetensors").exists()


def test_load_student_init_gives_the_pruned_float_network(tmp_path: Path) -> None:
    from pucli.checkpoints import save_model
    from pucli.compress.formats import load_student_init
    from pucli.compress.steps import prune

    teacher = save_model(resnet(), tmp_path / "t.safetensors", data_config=DATA_CONFIG)
    prune(str(teacher), str(tmp_path / "p.safetensors"), ratio=0.5, measure_latency=False)
    network, config, compression = load_student_init(tmp_path / "p.safetensors")
    assert network.layer1[0].conv1.out_channels == 16 and config.architecture == "test_resnet"
    assert compression.pruning is not None and not compression.quantization_bits
