"""Adversarial feature alignment (``distill --align adversarial``; Tang et al. 2019 read as DANN,
Ganin & Lempitsky 2015): the reversal layer, the warm-up, the discriminator, and what alignment
leaves exactly as it was."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import write_png
from torch import nn
from typer.testing import CliRunner

from pucli.checkpoints import load_model
from pucli.cli import app
from pucli.data.manifest import write_expanded_set
from pucli.kd.expand import build_expanded_set
from pucli.errors import DataError, OptionError, UsageError
from pucli.kd.align import AlignedStudent, DomainDiscriminator, dann_lambda, domain_loss, reverse_gradient
from pucli.kd.distill import LOSSES, DistillConfig, TrainingInterrupted, distill

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = DistillConfig(epochs=3, batch_size=8, lr=0.05)
ALIGNED = dataclasses.replace(FAST, align="adversarial", align_weight=1.0, align_hidden=(16,))
runner = CliRunner()


@pytest.fixture
def teacher(tiny_teacher):
    return load_model(tiny_teacher)


def _expanded(tmp_path: Path, positives: int = 6, unlabeled: int = 18):
    """``positives`` labeled images then ``unlabeled`` pool images (random 28x28 PNGs, random soft targets)."""
    n = positives + unlabeled
    paths = [write_png(tmp_path / "set" / f"{i:03d}.png", seed=i) for i in range(n)]
    targets = torch.softmax(torch.randn(n, 3, generator=torch.Generator().manual_seed(0)) * 2, dim=1)
    return build_expanded_set(
        paths=paths, origins=["positive"] * positives + ["unlabeled"] * unlabeled,
        labels=[i % 3 for i in range(positives)] + [-1] * unlabeled,
        scores=[None] * positives + [1.0] * unlabeled, soft_targets=targets, temperature=1.0, teacher_digest="",
        class_names=["0", "1", "2"],
    )


def _run(tmp_path, teacher, expanded, config, name="ckpt.pt", **kwargs):
    return distill(teacher, expanded, "lenet5_half", config=config, checkpoint_path=tmp_path / name, **kwargs)


def _assert_same_student(a, b):
    for (key, x), y in zip(a.student.state_dict().items(), b.student.state_dict().values()):
        assert torch.equal(x, y), key


# --- the pieces, by hand --------------------------------------------------------------------------


def test_reversal_layer_is_identity_forward_and_multiplies_the_gradient_by_minus_scale():
    features = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    reversed_ = reverse_gradient(features, 0.5)
    assert torch.equal(reversed_, features)
    (reversed_ * torch.tensor([1.0, 2.0, 4.0])).sum().backward()
    # d/dx of sum(c * x) is c; reversed and scaled by 0.5: -0.5 c.
    assert torch.equal(features.grad, torch.tensor([-0.5, -1.0, -2.0]))


def test_reversal_layer_at_scale_zero_passes_no_gradient():
    features = torch.tensor([1.0, -2.0], requires_grad=True)
    (reverse_gradient(features, 0.0) * torch.tensor([3.0, -7.0])).sum().backward()
    assert torch.equal(features.grad, torch.zeros(2))


@pytest.mark.parametrize(("progress", "expected"), [
    (0.0, 0.0),
    (0.5, 0.3 * (2 / (1 + math.exp(-5)) - 1)),  # 0.3 * tanh(2.5) = 0.295984...
    (1.0, 0.3 * (2 / (1 + math.exp(-10)) - 1)),  # 0.3 * tanh(5) = 0.299973...
    (1.5, 0.3 * (2 / (1 + math.exp(-10)) - 1)),  # p is clamped to [0, 1]
])
def test_dann_warm_up_values_by_hand(progress, expected):
    assert dann_lambda(progress, 0.3) == pytest.approx(expected, abs=1e-12)
    assert dann_lambda(0.5, 0.3) == pytest.approx(0.2959843, abs=1e-7)
    assert dann_lambda(1.0, 0.3) == pytest.approx(0.2999728, abs=1e-7)
    assert dann_lambda(progress, 0.0) == 0.0


def test_discriminator_is_linear_batchnorm_relu_mlp_seeded_without_touching_the_global_rng():
    before = torch.get_rng_state()
    first = DomainDiscriminator(6, (16, 8), generator_seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    second = DomainDiscriminator(6, (16, 8), generator_seed=3)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    kinds = [type(m) for m in first.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert first(torch.randn(5, 6)).shape == (5,)


def test_domain_loss_is_binary_cross_entropy_and_counts_right_answers():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    is_source = torch.tensor([True, True, False, False])
    loss, correct = domain_loss(logits, is_source)
    expected = -(math.log(torch.sigmoid(torch.tensor(2.0)).item()) + math.log(torch.sigmoid(torch.tensor(-1.0)).item())
                 + math.log(1 - torch.sigmoid(torch.tensor(0.5)).item())
                 + math.log(1 - torch.sigmoid(torch.tensor(-3.0)).item())) / 4
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(correct) == 2.0


def test_aligned_student_gives_the_plain_logits_and_keeps_batchnorm_statistics_of_the_kd_batch():
    torch.manual_seed(0)
    student = timm.create_model("resnet10t", num_classes=3, in_chans=1).train()
    twin = timm.create_model("resnet10t", num_classes=3, in_chans=1).train()
    twin.load_state_dict(student.state_dict())
    aligned = AlignedStudent(student, DomainDiscriminator(student.feature_info[1]["num_chs"], (8,)), stage=1)
    inputs, source = torch.randn(4, 1, 32, 32), torch.randn(3, 1, 32, 32)
    logits, domain_logits, is_source = aligned(inputs, source, torch.tensor([True, False, False, False]), 1.0)
    assert torch.equal(logits, twin(inputs))
    assert domain_logits.shape == (7,) and is_source.tolist() == [True, False, False, False, True, True, True]
    # The source pass left the running statistics where the KD batch put them.
    for (key, a), b in zip(student.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), key


class _HookOnly(nn.Module):
    """A LeNet-5-half without forward_intermediates: stages reached by forward hooks only."""

    def __init__(self) -> None:
        super().__init__()
        self.net = timm.create_model("lenet5_half", num_classes=3)
        self.feature_info = [{"num_chs": 3, "reduction": 2, "module": "net.stage1"},
                             {"num_chs": 8, "reduction": 4, "module": "net.stage2"}]

    def forward(self, x):
        return self.net(x)


def test_models_without_forward_intermediates_are_tapped_by_hooks_with_the_same_features():
    torch.manual_seed(0)
    hooked = _HookOnly()
    discriminator = DomainDiscriminator(3, (8,), generator_seed=0).eval()
    inputs, source = torch.randn(4, 1, 28, 28), torch.randn(2, 1, 28, 28)
    mask = torch.zeros(4, dtype=torch.bool)
    by_hooks = AlignedStudent(hooked, discriminator, 0)(inputs, source, mask, 1.0)
    by_api = AlignedStudent(hooked.net, discriminator, 0)(inputs, source, mask, 1.0)
    for a, b in zip(by_hooks, by_api):
        assert torch.equal(a, b)


# --- in training ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("loss", "augment"), [(loss, "none") for loss in LOSSES] + [("robust-kd", "flip-crop")])
def test_with_lambda_max_zero_the_student_is_tensor_identical_to_plain_distillation(tmp_path, teacher, loss, augment):
    expanded = _expanded(tmp_path)
    plain_config = dataclasses.replace(FAST, loss=loss, augment=augment)
    plain = _run(tmp_path, teacher, expanded, plain_config, name="plain.pt")
    aligned = _run(tmp_path, teacher, expanded, dataclasses.replace(plain_config, align="adversarial", align_weight=0.0),
                   name="aligned.pt")
    _assert_same_student(plain, aligned)
    assert [h.loss for h in plain.history] == [h.loss for h in aligned.history]
    # The discriminator still learned: its accuracy is recorded every epoch.
    assert all(0.0 <= h.domain_accuracy <= 1.0 for h in aligned.history)


def test_alignment_changes_the_student_and_records_the_discriminator_every_epoch(tmp_path, teacher):
    expanded = _expanded(tmp_path)
    plain = _run(tmp_path, teacher, expanded, FAST, name="plain.pt")
    aligned = _run(tmp_path, teacher, expanded, ALIGNED, name="aligned.pt")
    assert not torch.equal(plain.student.stage1.conv.weight, aligned.student.stage1.conv.weight)
    assert all(h.domain_accuracy is None and h.domain_loss is None for h in plain.history)
    assert [h.epoch for h in aligned.history] == [1, 2, 3]
    assert all(0.0 <= h.domain_accuracy <= 1.0 and h.domain_loss > 0 for h in aligned.history)
    assert aligned.settings["align"] == "adversarial" and aligned.settings["align_hidden"] == [16]
    assert "align_stage" not in plain.settings


def test_resume_mid_run_with_alignment_gives_the_uninterrupted_result(tmp_path, teacher):
    expanded = _expanded(tmp_path)
    config = dataclasses.replace(ALIGNED, epochs=4, checkpoint_interval=0.0)
    reference = _run(tmp_path, teacher, expanded, config, name="ref.pt")

    def interrupt_in_epoch_3(stage, completed, total, **metrics):
        if stage == "distill" and metrics.get("epoch") == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="holds epoch 2"):
        _run(tmp_path, teacher, expanded, config, name="run.pt", progress=interrupt_in_epoch_3)
    checkpoint = torch.load(tmp_path / "run.pt", weights_only=True)
    assert set(checkpoint["discriminator"]) == {"model", "optimizer", "scheduler"}
    resumed = _run(tmp_path, teacher, expanded, config, name="run.pt", resume=True)
    assert resumed.resumed_from == 2
    _assert_same_student(reference, resumed)
    assert [h.domain_accuracy for h in resumed.history] == [h.domain_accuracy for h in reference.history]
    final = torch.load(tmp_path / "run.pt", weights_only=True)["discriminator"]["model"]
    for key, value in torch.load(tmp_path / "ref.pt", weights_only=True)["discriminator"]["model"].items():
        assert torch.equal(value, final[key]), key


def test_resume_refuses_a_checkpoint_of_other_alignment_settings(tmp_path, teacher):
    expanded = _expanded(tmp_path)
    _run(tmp_path, teacher, expanded, dataclasses.replace(ALIGNED, epochs=1))
    with pytest.raises(UsageError, match="align_weight=1.0"):
        _run(tmp_path, teacher, expanded, dataclasses.replace(ALIGNED, epochs=1, align_weight=0.3), resume=True)
    with pytest.raises(UsageError, match="align='adversarial'"):
        _run(tmp_path, teacher, expanded, dataclasses.replace(FAST, epochs=1), resume=True)


def test_plain_distillation_checkpoint_holds_no_discriminator(tmp_path, teacher):
    _run(tmp_path, teacher, _expanded(tmp_path), dataclasses.replace(FAST, epochs=1))
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert "discriminator" not in checkpoint and checkpoint["settings"]["align"] == "none"


@pytest.mark.parametrize(("positives", "unlabeled", "missing"), [(0, 12, "labeled positives"),
                                                                 (12, 0, "unlabeled images")])
def test_alignment_needs_labeled_and_unlabeled_images(tmp_path, teacher, positives, unlabeled, missing):
    with pytest.raises(DataError, match=f"lists no {missing}"):
        _run(tmp_path, teacher, _expanded(tmp_path, positives, unlabeled), ALIGNED)


def test_a_stage_the_student_lacks_is_an_option_error(tmp_path, teacher):
    with pytest.raises(OptionError, match="align_stage 2: the student has stages 0..1"):
        _run(tmp_path, teacher, _expanded(tmp_path), dataclasses.replace(ALIGNED, align_stage=2))


# --- the command line ---------------------------------------------------------------------------------


@pytest.fixture
def expanded_folder(tmp_path, teacher):
    (tmp_path / "expanded").mkdir()
    return write_expanded_set(_expanded(tmp_path), tmp_path / "expanded")


def _distill(tiny_teacher, data, out, *extra):
    return runner.invoke(app, ["distill", str(tiny_teacher), "--data", str(data), "--student", "lenet5_half",
                               "--out", str(out), "--epochs", "2", "--batch-size", "8", "--threads", "1",
                               "--workers", "0", *extra])


def test_cli_align_reports_the_discriminator_accuracy_per_epoch(tmp_path, tiny_teacher, expanded_folder):
    out = tmp_path / "student.safetensors"
    result = _distill(tiny_teacher, expanded_folder, out, "--align", "adversarial", "--align-weight", "0.3",
                      "--align-hidden", "16,8", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["align"] == "adversarial" and 0.0 <= summary["domain_accuracy"] <= 1.0
    assert [0.0 <= h["domain_accuracy"] <= 1.0 for h in summary["history"]] == [True, True]
    report = json.loads((tmp_path / "student.report.json").read_text())
    assert [h["domain_accuracy"] for h in report["results"]["history"]] == [h["domain_accuracy"]
                                                                             for h in summary["history"]]
    assert report["results"]["settings"]["align_hidden"] == [16, 8]
    table = _distill(tiny_teacher, expanded_folder, out, "--align", "adversarial", "--force")
    assert table.exit_code == 0, table.output
    assert "discriminator accuracy" in table.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--align", "dann"], "--align dann: choose one of none, adversarial"),
    (["--align", "adversarial", "--align-stage", "-1"], "--align-stage -1: must be a stage index >= 0"),
    (["--align", "adversarial", "--align-stage", "7"], "--align-stage 7: the student has stages 0..1"),
    (["--align", "adversarial", "--align-weight", "-0.5"], "--align-weight -0.5: must be >= 0"),
    (["--align", "adversarial", "--align-weight", "nan"], "--align-weight nan: must be >= 0"),
    (["--align", "adversarial", "--align-hidden", "wide"], "--align-hidden wide: give comma-separated layer widths"),
    (["--align", "adversarial", "--align-hidden", "16,0"], "--align-hidden (16, 0): give one or more layer widths"),
], ids=["align", "stage-negative", "stage-missing", "weight-negative", "weight-nan", "hidden-text", "hidden-zero"])
def test_cli_bad_align_options_give_one_line_errors_naming_the_flag(tmp_path, tiny_teacher, expanded_folder,
                                                                    args, message):
    result = _distill(tiny_teacher, expanded_folder, tmp_path / "s.safetensors", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_torchrun_alignment_at_lambda_zero_follows_the_one_process_plain_losses(tmp_path, tiny_teacher, teacher,
                                                                               expanded_folder):
    """Two gloo processes: the student and the discriminator in one DDP wrapper; at lambda_max 0 the
    student's losses are those of plain distillation in one process."""
    config = dataclasses.replace(FAST, epochs=3)
    from pucli.data.manifest import read_expanded_set

    reference = _run(tmp_path, teacher, read_expanded_set(expanded_folder), config, name="reference.pt")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pucli",
               "distill", str(tiny_teacher), "--data", str(expanded_folder), "--student", "lenet5_half",
               "--out", str(tmp_path / "two.safetensors"), "--epochs", "3", "--batch-size", "8", "--lr", "0.05",
               "--align", "adversarial", "--align-weight", "0", "--align-hidden", "16", "--json",
               "--workers", "0", "--threads", "1", "-q"]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert [h["loss"] for h in summary["history"]] == pytest.approx([h.loss for h in reference.history], rel=1e-4)
    assert all(0.0 <= h["domain_accuracy"] <= 1.0 for h in summary["history"])
    assert "discriminator" in torch.load(tmp_path / "two.ckpt.pt", weights_only=True)
