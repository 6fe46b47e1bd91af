"""Per-output-channel symmetric weight quantization (pucli.compress.quantize): codes on hand-computed
examples, the first/last-layer rule, and codes surviving the file format."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import nn

from pucli.compress.quantize import quantize_model, quantize_tensor
from pucli.compressed_files import dequantize
from pucli.errors import UsageError


def test_four_bit_codes_and_scales_by_hand() -> None:
    # q = 7. Row 0: max 7 -> scale 1, codes round(7, -3.5, 2.5, 0.4) with halves to even.
    # Row 1: max 14 -> scale 2, codes round(-7, 1.5, 0.45, 0). Row 2: zeros -> scale 1, codes 0.
    weight = torch.tensor([[7.0, -3.5, 2.5, 0.4], [-14.0, 3.0, 0.9, 0.0], [0.0, 0.0, 0.0, 0.0]])
    codes, scale = quantize_tensor(weight, 4)
    assert codes.dtype == torch.int8 and scale.dtype == torch.float32
    assert codes.tolist() == [[7, -4, 2, 0], [-7, 2, 0, 0], [0, 0, 0, 0]]
    assert scale.tolist() == [1.0, 2.0, 1.0]
    assert dequantize(codes, scale).tolist() == [[7.0, -4.0, 2.0, 0.0], [-14.0, 4.0, 0.0, 0.0], [0.0] * 4]


def test_three_bit_codes_by_hand() -> None:
    # q = 3: max 6 -> scale 2; 6/2, -3/2, 1.5/2, 0.4/2 = 3, -1.5, 0.75, 0.2 -> 3, -2, 1, 0.
    codes, scale = quantize_tensor(torch.tensor([[6.0, -3.0, 1.5, 0.4]]), 3)
    assert codes.tolist() == [[3, -2, 1, 0]] and scale.tolist() == [2.0]


def test_two_bit_codes_are_ternary() -> None:
    # q = 1: max 7 -> scale 7; 1, -0.5, 0.36, 0.06 -> 1, 0 (half to even), 0, 0; -7 -> -1.
    codes, scale = quantize_tensor(torch.tensor([[7.0, -3.5, 2.5, 0.4], [1.0, -2.0, 1.0, 0.0]]), 2)
    assert codes.tolist() == [[1, 0, 0, 0], [0, -1, 0, 0]] and scale.tolist() == [7.0, 2.0]


def test_eight_bit_codes_by_hand() -> None:
    codes, scale = quantize_tensor(torch.tensor([[127.0, -63.5, 0.5, -127.0]]), 8)
    assert codes.tolist() == [[127, -64, 0, -127]] and scale.tolist() == [1.0]


def test_conv_weights_get_one_scale_per_output_channel() -> None:
    weight = torch.tensor([[[[1.0, -7.0], [0.0, 3.0]]], [[[14.0, 7.0], [-3.0, 0.0]]]])  # (2, 1, 2, 2)
    codes, scale = quantize_tensor(weight, 4)
    assert codes.shape == weight.shape
    assert scale.tolist() == [1.0, 2.0]
    assert codes[0].flatten().tolist() == [1, -7, 0, 3]
    assert codes[1].flatten().tolist() == [7, 4, -2, 0]  # 3.5 -> 4 and -1.5 -> -2 (halves to even)


def test_a_given_grid_clamps_and_reencodes_exactly() -> None:
    codes, _ = quantize_tensor(torch.tensor([[10.0, -10.0, 2.0]]), 4, scale=torch.tensor([1.0]))
    assert codes.tolist() == [[7, -7, 2]]
    weight = torch.randn(5, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    codes, scale = quantize_tensor(weight, 3)
    again, _ = quantize_tensor(dequantize(codes, scale), 3, scale=scale)
    assert torch.equal(again, codes)


@pytest.mark.parametrize("bits", [1, 5, 16, 0])
def test_bits_outside_the_list_are_refused(bits: int) -> None:
    with pytest.raises(UsageError, match=r"weight_bits .*8, 4, 3, 2"):
        quantize_tensor(torch.ones(2, 2), bits)


def test_first_and_last_layers_stay_at_eight_bits_unless_told() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    layers = quantize_model(model, 2)
    assert layers.bits == {"0": 8, "1": 2, "3": 8}
    middle = torch.unique(model[1].weight / layers.scales["1"].view(-1, 1, 1, 1))
    assert set(torch.round(middle).tolist()) <= {-1.0, 0.0, 1.0}
    assert quantize_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(4, 2)), 3, first_last_bits=3).bits == {"0": 3, "1": 3}


def test_timm_models_use_their_first_conv_and_classifier_names() -> None:
    import timm

    model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    bits = quantize_model(model, 4).bits
    assert bits["conv1.0"] == 8 and bits["fc"] == 8
    assert {b for name, b in bits.items() if name not in ("conv1.0", "fc")} == {4}


def test_quantized_file_holds_int8_codes_and_loads_as_the_dequantized_float_model(tmp_path: Path) -> None:
    import timm
    from safetensors import safe_open

    from pucli.checkpoints import load_model, save_model
    from pucli.compress.steps import quantize

    model = timm.create_model("test_resnet", num_classes=10, in_chans=1).eval()
    teacher = save_model(model, tmp_path / "t.safetensors",
                         data_config={"input_size": (1, 28, 28), "mean": (0.5,), "std": (0.5,)})
    result = quantize(str(teacher), str(tmp_path / "q.safetensors"), bits=4)
    assert result.layers == len(result.bits) and result.weight_bytes_after < result.weight_bytes_before / 6
    with safe_open(str(tmp_path / "q.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        codes = handle.get_tensor("layer1.0.conv1.weight_codes")
        scale = handle.get_tensor("layer1.0.conv1.weight_scale")
    assert "layer1.0.conv1.weight" not in keys and codes.dtype == torch.int8 and int(codes.abs().max()) <= 7
    loaded = load_model(tmp_path / "q.safetensors")
    torch.testing.assert_close(loaded.model.layer1[0].conv1.weight, dequantize(codes, scale))
    expected, _ = quantize_tensor(model.layer1[0].conv1.weight, 4)
    assert torch.equal(codes, expected)
    x = torch.randn(2, 1, 28, 28)
    reference = model
    quantize_model(reference, 4)
    torch.testing.assert_close(loaded.model(x), reference(x))


def test_quantizing_twice_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    import timm

    from pucli.checkpoints import save_model
    from pucli.compress.steps import quantize

    teacher = save_model(timm.create_model("test_resnet", num_classes=10, in_chans=1), tmp_path / "t.safetensors")
    quantize(str(teacher), str(tmp_path / "q.safetensors"), bits=8)
    with pytest.raises(UsageError, match="already has quantized weights"):
        quantize(str(tmp_path / "q.safetensors"), str(tmp_path / "qq.safetensors"), bits=4)
    assert not (tmp_path / "qq.safetensors").exists()


def test_quantized_model_streams_through_stdout_and_stdin(tmp_path: Path) -> None:
    import timm

    from pucli.checkpoints import save_model
    from pucli.compress.formats import open_model
    from pucli.compress.steps import quantize

    teacher = save_model(timm.create_model("test_resnet", num_classes=10, in_chans=1), tmp_path / "t.safetensors")
    sink = io.BytesIO()
    quantize(str(teacher), "-", bits=3, stdout=sink)
    loaded, compression = open_model("-", stdin=io.BytesIO(sink.getvalue()))
    assert str(loaded.path) == "-" and set(compression.quantization_bits.values()) == {3, 8}


def test_recalibrating_a_quantized_model_changes_batchnorm_only_and_keeps_the_codes(tmp_path: Path) -> None:
    import timm
    from conftest import write_png
    from safetensors import safe_open

    from pucli.checkpoints import save_model
    from pucli.compress.steps import quantize, recalibrate

    torch.manual_seed(0)
    teacher = save_model(timm.create_model("test_resnet", num_classes=10, in_chans=1).eval(), tmp_path / "t.safetensors",
                         data_config={"input_size": (1, 28, 28), "mean": (0.5,), "std": (0.5,)})
    for i in range(6):
        write_png(tmp_path / "pool" / f"{i}.png", seed=i)
    quantize(str(teacher), str(tmp_path / "q.safetensors"), bits=2)
    result = recalibrate(str(tmp_path / "q.safetensors"), str(tmp_path / "pool"), str(tmp_path / "r.safetensors"), images=6)
    assert result.images == 6 and result.compression == "2/8-bit weights, BN re-estimated on 6 images"
    with safe_open(str(tmp_path / "q.safetensors"), framework="pt") as before, \
            safe_open(str(tmp_path / "r.safetensors"), framework="pt") as after:
        assert set(before.keys()) == set(after.keys())
        changed = {k for k in before.keys() if not torch.equal(before.get_tensor(k), after.get_tensor(k))}  # noqa: SIM118
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
