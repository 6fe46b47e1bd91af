"""``--finetune`` (pucli.pu.training.train_finetune) on tiny synthetic pools where the answer is known.

Three clusters of 28 x 28 images: ``task`` (a bright square top left, the positives' cluster),
``other`` (a bright square bottom right) and ``stripes``. A randomly initialised LeNet-5 already
tells them apart, so the right selection is exactly the ``task`` cluster. The schedule that
fine-tuning used before issue 15 (``LEGACY_FINETUNE_SCHEDULE``) collapses on these pools; the
current one must not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pucli.errors import OptionError
from pucli.pu import training
from pucli.pu.options import SelectorOptions
from pucli.pu.selection import run_selection
from pucli.pu.training import FinetuneSchedule

pytestmark = pytest.mark.usefixtures("one_thread")


def _cluster_image(cluster: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 40, (28, 28)).astype(np.uint8)
    if cluster == "task":
        pixels[4:12, 4:12] = rng.integers(200, 256, (8, 8))
    elif cluster == "other":
        pixels[16:24, 16:24] = rng.integers(200, 256, (8, 8))
    else:
        pixels[::4, :] = rng.integers(150, 256, (7, 28))
    return pixels


def _write(path: Path, cluster: str, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_cluster_image(cluster, seed), "L").save(path)
    return path


@pytest.fixture
def clusters(tmp_path: Path, tiny_teacher: Path) -> dict:
    """6 positives (2 per teacher class) from ``task``; a pool of 10 task, 40 other, 40 stripes (prior 1/9)."""
    from pucli.checkpoints import load_model

    positive = [_write(tmp_path / "pos" / str(k) / f"{i}.png", "task", 10 + 10 * k + i) for k in range(3) for i in range(2)]
    pool, truth = [], []
    for number, (cluster, count) in enumerate((("task", 10), ("other", 40), ("stripes", 40))):
        for i in range(count):
            pool.append(_write(tmp_path / "pool" / f"{cluster}{i:03d}.png", cluster, 1000 * (number + 1) + i))
            truth.append(cluster == "task")
    return {"teacher": load_model(tiny_teacher), "positive": positive, "pool": pool, "truth": torch.tensor(truth)}


def _options(**changes: object) -> SelectorOptions:
    base = {"class_prior": 10 / 90, "finetune": True, "epochs": 5, "batch_size": 16}
    return SelectorOptions(**{**base, **changes})  # type: ignore[arg-type]


def test_finetune_keeps_exactly_the_task_cluster(clusters: dict) -> None:
    result = run_selection(clusters["teacher"], clusters["positive"], clusters["pool"], _options(), use_cache=False)
    assert torch.equal(result.selected, clusters["truth"])
    assert result.warnings == []
    assert len(result.history) == 5 and all(entry["rollbacks"] == 0 for entry in result.history)


def test_finetune_without_graph_smoothing_keeps_the_task_cluster_too(clusters: dict) -> None:
    result = run_selection(clusters["teacher"], clusters["positive"], clusters["pool"], _options(graph_neighbors=0),
                           use_cache=False)
    assert torch.equal(result.selected, clusters["truth"])


def test_the_pre_issue_15_schedule_collapses_here_and_the_guard_says_so(clusters: dict,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The reproduction of the bug the schedule fixes: a random head at the frozen rate and the
    # backbone at a tenth of it send every score to one side of zero, where the loss is flat.
    monkeypatch.setattr(training, "FINETUNE_SCHEDULE", training.LEGACY_FINETUNE_SCHEDULE)
    result = run_selection(clusters["teacher"], clusters["positive"], clusters["pool"], _options(), use_cache=False)
    head = result.head_scores
    assert bool((head > 0).all()) or bool((head < 0).all())  # the head tells nothing apart
    assert any("PU training collapsed" in warning for warning in result.warnings)


def test_a_collapse_rolls_back_to_the_warmed_up_state_then_stops(clusters: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step "collapses": training goes back to the warm-up's state at half the rate, each
    5 steps, and after max_rollbacks + 1 of them ends there, backbone untouched."""
    from pucli.data.loading import Preprocess
    from pucli.pu.network import AttentionScoreHead, MultiScaleExtractor, PUSelectorNet

    monkeypatch.setattr(training, "_step_collapsed", lambda result, class_prior: True)
    teacher, options = clusters["teacher"], _options()
    preprocess = Preprocess(teacher.config)

    def fresh() -> PUSelectorNet:
        import copy

        torch.manual_seed(0)
        extractor = MultiScaleExtractor(copy.deepcopy(teacher.model), options.scales)
        return PUSelectorNet(extractor, AttentionScoreHead(extractor.channels))

    net = fresh()
    history = training.train_finetune(net, clusters["positive"], clusters["pool"], preprocess, options)
    schedule = training.FINETUNE_SCHEDULE
    assert sum(entry["rollbacks"] for entry in history) == schedule.max_rollbacks + 1
    assert len(history) < options.epochs  # stopped early
    from pucli.pu.degenerate import selection_warnings

    assert any("collapsed 4 time(s)" in w for w in selection_warnings(10, 90, options.class_prior, history))
    for key, value in teacher.model.state_dict().items():
        assert torch.equal(net.extractor.model.state_dict()[key], value), key
    # The head is the warm-up's: the same as a run whose end-to-end epochs never move anything.
    warmed = fresh()
    training.train_finetune(warmed, clusters["positive"], clusters["pool"], preprocess, options,
                            schedule=FinetuneSchedule(head_lr_scale=0.0, backbone_lr_scale=0.0))
    for key, value in warmed.head.state_dict().items():
        torch.testing.assert_close(net.head.state_dict()[key], value)


def test_frozen_batchnorm_keeps_the_teachers_statistics(tmp_path: Path, clusters: dict) -> None:
    import timm

    from pucli.checkpoints import load_model, save_model

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3, in_chans=1, pretrained_cfg_overlay={"input_size": (1, 28, 28)})
    teacher = load_model(save_model(model, tmp_path / "bn.safetensors", label_names=["0", "1", "2"]))
    before = {k: v.clone() for k, v in teacher.model.state_dict().items() if "running_" in k}
    assert before
    result = run_selection(teacher, clusters["positive"], clusters["pool"], _options(epochs=1), use_cache=False)
    tuned = result.network.extractor.model.state_dict()
    assert all(torch.equal(tuned[k], v) for k, v in before.items())


@pytest.mark.parametrize(("field", "value"), [("batchnorm", "sometimes"), ("collapse_steps", -1), ("max_rollbacks", -1),
                                              ("pool_sample", 0)])
def test_schedule_fields_are_validated(field: str, value: object) -> None:
    with pytest.raises(OptionError, match=f"^{field} "):
        FinetuneSchedule(**{field: value})  # type: ignore[arg-type]
