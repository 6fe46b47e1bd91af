"""BN re-estimation semantics (pucli.compress.renorm): against torch's update_bn, with dropout, timm's
BatchNormAct2d, statistics reset, cumulative average, everything restored; models without BN."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pucli.compress.calibration import calibration_plan
from pucli.compress.renorm import batchnorm_layers, check_batchnorm, reestimate_batchnorm
from pucli.errors import DataError


def small_cnn(*, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Dropout(dropout), nn.Flatten(), nn.Linear(6 * 8 * 8, 5), nn.BatchNorm1d(5),
    )


def batches(count: int = 4, size: int = 16, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 1, 8, 8, generator=generator) * 2 + 0.5 for _ in range(count)]


def bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def test_reestimation_equals_update_bn_on_a_dropout_free_model() -> None:
    ours, reference = small_cnn(), small_cnn()
    data = batches()
    reestimate_batchnorm(ours, data)
    torch.optim.swa_utils.update_bn(data, reference)
    for key, value in bn_stats(reference).items():
        torch.testing.assert_close(bn_stats(ours)[key], value, rtol=1e-5, atol=1e-6)


def test_statistics_are_the_cumulative_average_of_the_batch_statistics_not_a_moving_average() -> None:
    model = nn.Sequential(nn.BatchNorm2d(1))
    model[0].momentum = 0.1
    model[0].running_mean.fill_(100.0)  # old statistics must not leak into the result (reset)
    model[0].running_var.fill_(100.0)
    data = batches(count=3, size=10)
    reestimate_batchnorm(model, data)
    means = torch.stack([b.mean() for b in data])
    variances = torch.stack([b.var(unbiased=True) for b in data])
    torch.testing.assert_close(model[0].running_mean, means.mean().view(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[0].running_var, variances.mean().view(1), rtol=1e-5, atol=1e-6)


def test_dropout_stays_off_while_the_statistics_are_collected() -> None:
    # With dropout p=0.9 in train mode the last BatchNorm1d would see very different inputs; in
    # eval mode the result equals the dropout-free model's.
    with_dropout, without = small_cnn(dropout=0.9), small_cnn(dropout=0.0)
    data = batches()
    reestimate_batchnorm(with_dropout, data)
    reestimate_batchnorm(without, data)
    for key, value in bn_stats(without).items():
        torch.testing.assert_close(bn_stats(with_dropout)[key], value)
    # update_bn, which runs the whole model in train mode, gives other statistics: the test can fail.
    reference = small_cnn(dropout=0.9)
    torch.optim.swa_utils.update_bn(data, reference)
    assert not torch.allclose(bn_stats(reference)["9.running_var"], bn_stats(with_dropout)["9.running_var"])


def test_modes_and_momenta_are_restored_afterwards() -> None:
    model = small_cnn(dropout=0.5)
    model.train()
    model[1].momentum = 0.3
    model[6].eval()  # a mixed state must come back as it was
    before = {name: m.training for name, m in model.named_modules()}
    reestimate_batchnorm(model, batches())
    assert {name: m.training for name, m in model.named_modules()} == before
    assert model[1].momentum == 0.3 and model[4].momentum == 0.1


def test_modes_are_restored_when_a_batch_fails() -> None:
    model = small_cnn().eval()

    def broken():
        yield batches(1)[0]
        raise RuntimeError("decode failed")

    with pytest.raises(RuntimeError):
        reestimate_batchnorm(model, broken())
    assert not any(m.training for m in model.modules())
    assert all(m.momentum == 0.1 for _, m in batchnorm_layers(model))


def test_timm_batchnorm_act_is_reestimated_but_its_drop_child_stays_in_eval() -> None:
    from timm.layers import BatchNormAct2d

    layer = BatchNormAct2d(3, drop_layer=nn.Dropout)
    layer.drop = nn.Dropout(p=0.99)
    seen_training = []
    layer.drop.register_forward_hook(lambda module, args, output: seen_training.append(module.training))
    model = nn.Sequential(nn.Conv2d(1, 3, 1), layer).eval()
    data = [torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    result = reestimate_batchnorm(model, data)
    assert [name for name, _ in batchnorm_layers(model)] == ["1"]
    assert seen_training == [False, False]
    conv_out = torch.cat([model[0](b) for b in data])
    torch.testing.assert_close(layer.running_mean, torch.stack([model[0](b).mean((0, 2, 3)) for b in data]).mean(0),
                               rtol=1e-4, atol=1e-5)
    assert result.images == 16 and result.batches == 2 and conv_out.shape[0] == 16


def test_the_rest_of_the_model_runs_in_eval_mode() -> None:
    modes = []
    model = small_cnn()
    model[2].register_forward_hook(lambda module, args, output: modes.append(module.training))
    model.train()
    reestimate_batchnorm(model, batches(2))
    assert modes == [False, False]


def test_report_gives_each_layers_shift_of_mean_and_variance() -> None:
    model = nn.Sequential(nn.BatchNorm2d(2))  # fresh: mean 0, var 1
    data = [torch.full((4, 2, 3, 3), 3.0) + torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))]
    result = reestimate_batchnorm(model, data)
    (layer,) = result.layers
    assert layer.name == "0" and layer.channels == 2
    assert layer.mean_shift == pytest.approx(float(model[0].running_mean.abs().mean()), rel=1e-4)
    assert layer.var_ratio == pytest.approx(float(model[0].running_var.mean()), rel=1e-4)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.LayerNorm(6)), "1 GroupNorm, 1 LayerNorm"),
        (lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)), "1 BatchNorm2d"),
        (lambda: nn.Sequential(nn.Linear(3, 3)), "no norm layer at all"),
    ],
)
def test_a_model_without_batchnorm_gets_one_line_naming_its_norm_layers(make, named: str) -> None:
    with pytest.raises(DataError) as info:
        check_batchnorm(make(), "MODEL m.safetensors")
    message = str(info.value)
    assert "\n" not in message and named in message and "MODEL m.safetensors" in message


def test_frozen_batchnorm_counts_as_no_batchnorm() -> None:
    from torchvision.ops import FrozenBatchNorm2d

    with pytest.raises(DataError, match="FrozenBatchNorm2d"):
        reestimate_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 1), FrozenBatchNorm2d(2)), batches(1))


def test_no_batch_keeps_the_old_statistics_and_raises() -> None:
    model = small_cnn()
    before = bn_stats(model)
    with pytest.raises(DataError, match="no image"):
        reestimate_batchnorm(model, [])
    for key, value in before.items():
        torch.testing.assert_close(bn_stats(model)[key], value)


def test_only_batchnorm_buffers_change() -> None:
    model = small_cnn()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    reestimate_batchnorm(copy.deepcopy(model), batches())
    reestimate_batchnorm(model, batches())
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value)


@pytest.mark.parametrize(("available", "images", "batch", "plan"),
                         [(5000, 1000, 100, (10, 100)), (5000, 250, 100, (3, 83)), (100, 1000, 100, (1, 100)),
                          (10, 10, 100, (1, 10)), (3, 1000, 2, (2, 1))])
def test_calibration_batches_are_of_one_size(available: int, images: int, batch: int, plan: tuple[int, int]) -> None:
    assert calibration_plan(available, images, batch) == plan
