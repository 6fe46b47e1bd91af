"""LeNet-5 / LeNet-5-half as timm models, and pucli's lazy registration."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_pucli_registers_lenet_when_timm_is_imported_later() -> None:
    out = _run("import sys, pucli; assert 'torch' not in sys.modules; import timm; "
               "print(timm.create_model('lenet5').num_classes)")
    assert out == "10"


def test_importing_pucli_after_timm_registers_lenet_at_once() -> None:
    out = _run("import timm; import pucli; print(timm.is_model('lenet5_half'))")
    assert out == "True"


def test_cli_import_does_not_import_torch() -> None:
    out = _run("import sys; from pucli.cli import app; print('torch' in sys.modules, 'timm' in sys.modules)")
    assert out == "False False"


def test_lenet5_matches_the_papers_layer_sizes() -> None:
    model = timm.create_model("lenet5")
    # conv1 1*6*25+6 = 156, conv2 6*16*25+16 = 2416, fc1 400*120+120 = 48120,
    # fc2 120*84+84 = 10164, head 84*10+10 = 850 -> 61706
    assert sum(p.numel() for p in model.parameters()) == 61706
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_lenet5_half_halves_every_layer() -> None:
    model = timm.create_model("lenet5_half")
    assert [model.stage1.conv.out_channels, model.stage2.conv.out_channels] == [3, 8]
    assert [model.fc1.out_features, model.fc2.out_features] == [60, 42]
    # 78 + 608 + (200*60+60) + (60*42+42) + (42*10+10) = 15,738
    assert sum(p.numel() for p in model.parameters()) == 15738


def test_lenet_pretrained_cfg_describes_mnist_input() -> None:
    cfg = timm.create_model("lenet5").pretrained_cfg
    assert tuple(cfg["input_size"]) == (1, 28, 28)
    assert cfg["mean"] == (0.1307,) and cfg["std"] == (0.3081,)


@pytest.mark.parametrize("name, channels", [("lenet5", [6, 16]), ("lenet5_half", [3, 8])])
def test_features_only_gives_both_conv_stages(name: str, channels: list[int]) -> None:
    extractor = timm.create_model(name, features_only=True)
    maps = extractor(torch.zeros(2, 1, 28, 28))
    assert extractor.feature_info.channels() == channels
    assert [tuple(m.shape) for m in maps] == [(2, channels[0], 14, 14), (2, channels[1], 5, 5)]


def test_forward_intermediates_matches_forward() -> None:
    torch.manual_seed(0)
    model = timm.create_model("lenet5").eval()
    x = torch.randn(3, 1, 28, 28)
    final, intermediates = model.forward_intermediates(x)
    assert [tuple(t.shape) for t in intermediates] == [(3, 6, 14, 14), (3, 16, 5, 5)]
    torch.testing.assert_close(model.forward_head(final), model(x))
    only_last = model.forward_intermediates(x, indices=1, intermediates_only=True)
    assert len(only_last) == 1 and only_last[0].shape == (3, 16, 5, 5)


def test_lenet_accepts_other_input_sizes_and_channels() -> None:
    model = timm.create_model("lenet5", in_chans=3, num_classes=4)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    assert model.forward_head(model.forward_features(torch.zeros(1, 3, 32, 32)), pre_logits=True).shape == (1, 84)


def test_reset_classifier_replaces_the_head() -> None:
    model = timm.create_model("lenet5")
    model.reset_classifier(0)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 84)
