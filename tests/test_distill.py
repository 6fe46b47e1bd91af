"""Distillation engine (Xu et al., NeurIPS 2019, Eq. 1, 8, 10; Algorithm 2): losses, resume, outputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import write_png

from pucli.checkpoints import load_model, save_model
from pucli.data.augment import FlipCrop, resolve_augment
from pucli.kd.expand import build_expanded_set
from pucli.errors import DataError, OptionError, UsageError
from pucli.kd.distill import DistillConfig, TrainingInterrupted, default_epochs, distill, training_bound_throughput

FAST = DistillConfig(epochs=3, batch_size=8, lr=0.05)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def teacher(tiny_teacher):
    return load_model(tiny_teacher)


def _expanded(tmp_path: Path, teacher, n: int = 24, balanced: bool = False):
    """An extended set of n random 28x28 PNGs; soft targets from the teacher, or, when ``balanced``,
    the same three target rows repeated so every class has the same soft count (Eq. 7 weights = 1)."""
    paths = [write_png(tmp_path / "set" / f"{i:03d}.png", seed=i) for i in range(n)]
    if balanced:
        base = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7]])
        targets = base.repeat(n // 3, 1)
    else:
        targets = torch.softmax(torch.randn(n, 3, generator=torch.Generator().manual_seed(0)) * 2, dim=1)
    return build_expanded_set(
        paths=paths, origins=["unlabeled"] * n, labels=[-1] * n, scores=[1.0] * n, soft_targets=targets,
        temperature=1.0, teacher_digest="", class_names=["0", "1", "2"],
    )


def _run(tmp_path, teacher, expanded, config=FAST, name="ckpt.pt", **kwargs):
    return distill(teacher, expanded, "lenet5_half", config=config, checkpoint_path=tmp_path / name, **kwargs)


def test_distill_loss_falls_on_a_tiny_set(tmp_path, teacher):
    result = _run(tmp_path, teacher, _expanded(tmp_path, teacher), dataclasses.replace(FAST, epochs=8, loss="kd"))
    losses = [h.loss for h in result.history]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert result.in_memory and result.augment == "none"


@pytest.mark.parametrize("other", [dict(loss="weighted-kd"), dict(loss="robust-kd", eps=0.0)], ids=["weighted", "robust-eps0"])
def test_with_uniform_class_weights_weighted_and_robust_kd_train_exactly_like_kd(tmp_path, teacher, other):
    expanded = _expanded(tmp_path, teacher, balanced=True)
    assert torch.equal(expanded.class_weights, torch.ones(3, dtype=torch.float64))
    plain = _run(tmp_path, teacher, expanded, dataclasses.replace(FAST, loss="kd"), name="a.pt")
    weighted = _run(tmp_path, teacher, expanded, dataclasses.replace(FAST, **other), name="b.pt")
    for (key, a), b in zip(plain.student.state_dict().items(), weighted.student.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)


def test_robust_kd_records_which_weight_vector_attained_the_max(tmp_path, teacher):
    result = _run(tmp_path, teacher, _expanded(tmp_path, teacher), dataclasses.replace(FAST, num_weight_vectors=4))
    counts = result.history[0].max_vector_counts
    assert len(counts) == 4 and sum(counts) == 3  # 24 items / batch 8 = 3 steps


def test_resume_after_interrupt_continues_from_checkpoint_and_matches_uninterrupted_run(tmp_path, teacher):
    expanded = _expanded(tmp_path, teacher)
    config = dataclasses.replace(FAST, epochs=4, checkpoint_interval=0.0)
    reference = _run(tmp_path, teacher, expanded, config, name="ref.pt")

    def interrupt_in_epoch_3(stage, completed, total, **metrics):
        if stage == "distill" and metrics.get("epoch") == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="holds epoch 2"):
        _run(tmp_path, teacher, expanded, config, name="run.pt", progress=interrupt_in_epoch_3)
    checkpoint = torch.load(tmp_path / "run.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2
    resumed = _run(tmp_path, teacher, expanded, config, name="run.pt", resume=True)
    assert resumed.resumed_from == 2 and [h.epoch for h in resumed.history] == [1, 2, 3, 4]
    for (key, a), b in zip(reference.student.state_dict().items(), resumed.student.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


def test_short_epochs_checkpoint_once_per_interval_and_resume_from_the_last_one(tmp_path, teacher):
    expanded = _expanded(tmp_path, teacher)
    config = dataclasses.replace(FAST, epochs=4, checkpoint_interval=3600.0)  # only epoch 0 and the last
    reference = _run(tmp_path, teacher, expanded, config, name="ref.pt")
    assert torch.load(tmp_path / "ref.pt", weights_only=True)["epoch"] == 4

    def interrupt_in_epoch_3(stage, completed, total, **metrics):
        if stage == "distill" and metrics.get("epoch") == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="holds epoch 0"):
        _run(tmp_path, teacher, expanded, config, name="run.pt", progress=interrupt_in_epoch_3)
    assert torch.load(tmp_path / "run.pt", weights_only=True)["epoch"] == 0
    resumed = _run(tmp_path, teacher, expanded, config, name="run.pt", resume=True)
    assert resumed.resumed_from == 0
    for (key, a), b in zip(reference.student.state_dict().items(), resumed.student.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


def test_resume_refuses_a_checkpoint_from_other_settings(tmp_path, teacher):
    expanded = _expanded(tmp_path, teacher)
    _run(tmp_path, teacher, expanded, dataclasses.replace(FAST, epochs=1))
    with pytest.raises(UsageError, match="loss='robust-kd'"):
        _run(tmp_path, teacher, expanded, dataclasses.replace(FAST, epochs=1, loss="kd"), resume=True)
    with pytest.raises(UsageError, match="no checkpoint"):
        _run(tmp_path, teacher, expanded, FAST, name="missing.pt", resume=True)


def test_student_round_trips_through_pucli_and_timm(tmp_path, teacher):
    import timm

    result = _run(tmp_path, teacher, _expanded(tmp_path, teacher), dataclasses.replace(FAST, epochs=1))
    path = save_model(result.student, tmp_path / "student.safetensors", label_names=["0", "1", "2"],
                      data_config=teacher.config.data_config())
    x = torch.randn(2, 1, 28, 28)
    expected = result.student(x)
    loaded = load_model(path)
    assert loaded.config.architecture == "lenet5_half" and loaded.config.label_names == ("0", "1", "2")
    torch.testing.assert_close(loaded.model(x), expected)
    via_timm = timm.create_model("lenet5_half", pretrained=True, num_classes=3, in_chans=1,
                                 pretrained_cfg_overlay=dict(file=str(path), num_classes=3)).eval()
    torch.testing.assert_close(via_timm(x), expected)


def test_augmented_training_runs_the_teacher_on_each_batch(tmp_path, teacher):
    calls = []
    handle = teacher.model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        result = _run(tmp_path, teacher, _expanded(tmp_path, teacher), dataclasses.replace(FAST, epochs=1, augment="flip-crop"))
    finally:
        handle.remove()
    assert result.augment == "flip-crop" and calls == [8, 8, 8]


def test_sets_above_the_memory_budget_stream_from_disk(tmp_path, teacher):
    result = _run(tmp_path, teacher, _expanded(tmp_path, teacher), dataclasses.replace(FAST, epochs=1, memory_budget_bytes=0))
    assert not result.in_memory and result.history[0].images == 24


def test_keep_best_needs_validation_and_picks_the_best_epoch(tmp_path, teacher, make_class_folder):
    from pucli.data.sources import LabeledFolder

    expanded = _expanded(tmp_path, teacher)
    with pytest.raises(OptionError, match="^keep best: needs a validation set: a labeled folder"):
        _run(tmp_path, teacher, expanded, dataclasses.replace(FAST, keep="best"))
    val = LabeledFolder.from_folder(make_class_folder("val"), num_classes=3, label_names=["0", "1", "2"], parameter="val")
    result = _run(tmp_path, teacher, expanded, dataclasses.replace(FAST, keep="best"), val_set=val)
    tops = [h.val_top1 for h in result.history]
    assert result.kept_epoch == 1 + tops.index(max(tops))


def test_class_count_mismatch_between_teacher_and_set_is_a_data_error(tmp_path, teacher):
    import timm

    other = load_model(save_model(timm.create_model("lenet5", num_classes=5), tmp_path / "t5.safetensors"))
    with pytest.raises(DataError, match="3 classes but the teacher has 5"):
        _run(tmp_path, other, _expanded(tmp_path, teacher))


def test_auto_augmentation_is_off_for_small_grey_inputs_and_flip_crop_for_colour(teacher):
    assert resolve_augment(teacher.config, "auto") == "none"
    colour = dataclasses.replace(teacher.config, in_chans=3, input_size=(3, 224, 224))
    assert resolve_augment(colour, "auto") == "flip-crop"
    assert resolve_augment(colour, "none") == "none"


def test_flip_crop_returns_shifted_or_mirrored_crops_of_the_same_size():
    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.int64).reshape(2, 3, 16, 16).to(torch.uint8)
    out = FlipCrop(16, 16)(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    again = FlipCrop(16, 16)(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    # Over a few draws some image is moved or mirrored (a no-op draw has probability 1/(5*5*2) each).
    draws = [FlipCrop(16, 16)(images, torch.Generator().manual_seed(s)) for s in range(4)]
    assert any(not torch.equal(d, images) for d in draws)


def test_default_epochs_target_about_5000_steps_within_20_to_200():
    assert default_epochs(30_000, 128) == 22
    assert default_epochs(1_000_000, 128) == 20
    assert default_epochs(10, 128) == 200


def test_learning_rate_warms_up_over_a_tenth_of_the_steps_at_most_500():
    """Issue 30: 3 % (150 of the default ~5,000 steps) let LeNet-5-half meet lr 0.1 while still on
    its initial plateau and lose second-stage ReLU channels for good on some batch orders."""
    from pucli.kd.distill.loop import _warmup_cosine, warmup_steps

    assert [warmup_steps(n) for n in (1, 9, 10, 150, 5_000, 5_024, 100_000)] == [1, 1, 1, 15, 500, 500, 500]
    factor = _warmup_cosine(5_000)
    assert factor(0) == pytest.approx(1 / 500)
    assert factor(149) == pytest.approx(150 / 500)  # 3 % of the run: still warming up
    assert factor(499) == 1.0
    assert factor(500) == 1.0 > factor(501)  # then the cosine
    assert factor(4_999) == pytest.approx(0.0, abs=1e-5)


def test_distill_runs_the_warm_up_of_a_tenth_of_its_steps(tmp_path, teacher):
    # 24 items in batches of 8: 3 steps an epoch, 150 in 50 epochs, so 15 steps of warm-up; after
    # the first epoch's 3 steps the rate is 4/15 of the peak (3 % would have reached the peak).
    config = dataclasses.replace(FAST, epochs=50)
    result = _run(tmp_path, teacher, _expanded(tmp_path, teacher), config=config)
    assert result.history[0].lr == pytest.approx(0.05 * 4 / 15)
    assert result.history[4].lr == pytest.approx(0.05 * 1.0, rel=1e-3)  # step 15: just past the peak


def test_training_bound_throughput_is_positive(teacher):
    import timm

    student = timm.create_model("lenet5_half", num_classes=3, in_chans=1)
    assert training_bound_throughput(student, teacher.model, (1, 28, 28), 16, torch.device("cpu"), budget_s=0.05) > 0


# --- PU scores as sampling weights (issue 5) ------------------------------------------------------


def test_pu_score_sampling_weights_are_sigmoid_of_the_score_and_one_for_positives(tmp_path):
    from pucli.kd.distill import sampling_weights

    paths = [write_png(tmp_path / f"{i}.png", seed=i) for i in range(4)]
    expanded = build_expanded_set(
        paths=paths, origins=["positive", "unlabeled", "unlabeled", "unlabeled"], labels=[1, -1, -1, -1],
        scores=[None, 0.0, 2.0, -1000.0], soft_targets=torch.full((4, 3), 1 / 3), temperature=1.0,
        teacher_digest="", class_names=["0", "1", "2"],
    )
    weights = sampling_weights(expanded)
    assert weights.dtype == torch.float64
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.5, 1 / (1 + torch.e ** -2.0), 0.0], dtype=torch.float64))


def test_pu_score_weighting_draws_items_in_proportion_to_their_weights_with_replacement():
    from pucli.kd.distill.data import InMemorySource

    source = InMemorySource(torch.zeros(1000, 1, 2, 2, dtype=torch.uint8), torch.arange(1000), 100, torch.device("cpu"))
    source.sampling_weights = torch.cat([torch.zeros(500), torch.ones(400), torch.full((100,), 4.0)]).double()
    drawn = torch.cat([items for items, _ in source.epoch_batches(torch.Generator().manual_seed(0))])
    assert len(drawn) == 1000  # same steps per epoch as uniform sampling
    assert not bool((drawn < 500).any())  # weight 0: never drawn
    heavy = int((drawn >= 900).sum())
    assert 400 < heavy < 600  # expected 1000 * 400 / 800 = 500
    source.sampling_weights = None
    uniform = torch.cat([items for items, _ in source.epoch_batches(torch.Generator().manual_seed(0))])
    assert sorted(uniform.tolist()) == list(range(1000))


def test_distill_with_pu_score_weighting_trains_and_records_it(tmp_path, teacher):
    expanded = _expanded(tmp_path, teacher)
    result = _run(tmp_path, teacher, expanded, dataclasses.replace(FAST, weighting="pu-score"))
    assert result.settings["weighting"] == "pu-score"
    assert len(result.history) == 3 and result.history[0].images == 24
    with pytest.raises(OptionError, match="^weighting scores: choose one of uniform, pu-score$"):
        DistillConfig(weighting="scores")


# --- options: validated once, errors name the parameter (issue 13) ---------------------------------


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("loss", "rkd", "choose one of robust-kd, weighted-kd, kd"),
    ("optimizer", "adam", "choose one of sgd, adamw"),
    ("augment", "mixup", "choose one of auto, none, flip-crop"),
    ("keep", "first", "choose one of last, best"),
    ("checkpoint_interval", -1.0, "must be >= 0 (seconds)"),
    ("temperature", 0.0, "must be > 0"),
    ("temperature", float("nan"), "must be > 0"),
    ("epochs", 0, "must be >= 1"),
    ("batch_size", 0, "must be >= 1"),
    ("lr", float("inf"), "must be > 0"),
    ("eps", -0.1, "must be >= 0"),
    ("num_weight_vectors", 0, "must be >= 1"),
    ("precision", "half", "choose one of auto, float32, bfloat16, float16"),
])
def test_distill_config_rejects_a_bad_field_when_built_naming_the_field(field, value, problem):
    with pytest.raises(OptionError) as caught:
        DistillConfig(**{field: value})
    assert (caught.value.parameter, caught.value.problem) == (field, problem)
    assert str(caught.value) == f"{field} {value}: {problem}"
    assert caught.value.renamed("--" + field.replace("_", "-")).startswith(f"--{field.replace('_', '-')} {value}: ")


def test_distill_config_is_frozen_so_it_stays_valid():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FAST.epochs = 0  # type: ignore[misc]
    assert dataclasses.replace(FAST, loss="kd").loss == "kd"


# --- precision: float32 by default on the CPU, bfloat16 mixed precision when asked ---------------


def test_precision_resolves_per_device_and_refuses_float16_on_the_cpu():
    from pucli.device import autocast_dtype

    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None
    assert autocast_dtype("float32", cpu) is None
    assert autocast_dtype("bfloat16", cpu) is torch.bfloat16
    with pytest.raises(OptionError) as caught:
        autocast_dtype("float16", cpu)
    assert caught.value.parameter == "precision" and "use bfloat16 on the CPU" in caught.value.problem


def test_default_precision_on_the_cpu_is_float32_bit_for_bit(tmp_path, teacher):
    expanded = _expanded(tmp_path, teacher)
    default = _run(tmp_path, teacher, expanded, name="a.pt")
    float32 = _run(tmp_path, teacher, expanded, dataclasses.replace(FAST, precision="float32"), name="b.pt")
    assert default.settings["precision"] == float32.settings["precision"] == "float32"
    for (key, a), b in zip(default.student.state_dict().items(), float32.student.state_dict().values()):
        assert torch.equal(a, b), key


def test_bfloat16_trains_in_mixed_precision_and_keeps_float32_weights(tmp_path, teacher):
    expanded = _expanded(tmp_path, teacher)
    config = dataclasses.replace(FAST, epochs=8, loss="kd")
    full = _run(tmp_path, teacher, expanded, config, name="a.pt")
    mixed = _run(tmp_path, teacher, expanded, dataclasses.replace(config, precision="bfloat16"), name="b.pt")
    assert mixed.settings["precision"] == "bfloat16"
    assert all(v.dtype == torch.float32 for v in mixed.student.state_dict().values() if v.is_floating_point())
    # bfloat16 rounds every activation: the weights differ from float32's, the training still learns.
    assert any(not torch.equal(a, b) for a, b in zip(full.student.state_dict().values(), mixed.student.state_dict().values()))
    losses = [h.loss for h in mixed.history]
    assert losses[-1] < losses[0]
