"""The PU selector engine (Xu et al. 2019, Eq. 3-6): extractor, SE gate, descriptor cache,
seeded training, PU-s1 / PU-s2 selection."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from pucli.checkpoints import load_model
from pucli.data.augment import PositiveAugmentation
from pucli.data.loading import Preprocess
from pucli.data.sources import UnlabeledPool
from pucli.errors import NoImagesError, UsageError
from pucli.pu.descriptors import (
    AUTO_AUGMENT_COPIES,
    descriptor_cache_key,
    extract_augmented_descriptors,
    load_or_extract_descriptors,
    resolve_positive_augmentation,
)
from pucli.pu.network import AttentionScoreHead, MultiScaleExtractor, PUSelectorNet, ScoreEnsemble
from pucli.pu.options import Scales, SelectorOptions
from pucli.pu.selection import run_selection, save_selector, score_images, select_indices
from pucli.pu.training import train_frozen, training_state_path

# --- extractor ---------------------------------------------------------------------------------


def test_lenet5_descriptor_concatenates_both_conv_stages_and_pre_logits() -> None:
    model = timm.create_model("lenet5").eval()
    extractor = MultiScaleExtractor(model)
    images = torch.randn(3, 1, 28, 28)
    descriptors = extractor(images)
    assert extractor.scale_channels == [6, 16, 84]
    assert descriptors.shape == (3, 106) and descriptors.dtype == torch.float32
    # The last scale is exactly the teacher's penultimate layer.
    torch.testing.assert_close(descriptors[:, 22:], model.forward_head(model.forward_features(images), pre_logits=True))


def test_resnet_descriptor_pools_every_feature_stage_on_small_grayscale_input() -> None:
    model = timm.create_model("resnet10t", in_chans=1, num_classes=10).eval()
    extractor = MultiScaleExtractor(model)
    channels = [info["num_chs"] for info in model.feature_info]
    assert extractor.scale_channels == channels + [model.num_features]
    assert extractor(torch.randn(2, 1, 32, 32)).shape == (2, sum(channels) + model.num_features)


def test_scales_choose_stages_and_can_drop_pre_logits() -> None:
    extractor = MultiScaleExtractor(timm.create_model("lenet5").eval(), Scales(stages=(-1,), pre_logits=False))
    assert extractor.scale_channels == [16]
    assert extractor(torch.randn(2, 1, 28, 28)).shape == (2, 16)
    with pytest.raises(UsageError, match="stage 5 does not exist"):
        MultiScaleExtractor(timm.create_model("lenet5"), Scales(stages=(5,)))


class _NoIntermediates(nn.Module):
    """LeNet-5 hiding forward_intermediates, to exercise the feature_info hook path."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.feature_info = [dict(info, module=f"inner.{info['module']}") for info in inner.feature_info]
        self.num_features = inner.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.inner.forward_head(x, pre_logits=pre_logits)


def test_models_without_forward_intermediates_are_tapped_through_feature_info_hooks() -> None:
    model = timm.create_model("lenet5").eval()
    images = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(MultiScaleExtractor(_NoIntermediates(model))(images), MultiScaleExtractor(model)(images))


def test_model_without_feature_stages_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no feature stages"):
        MultiScaleExtractor(nn.Linear(3, 3))


# --- gate and head ----------------------------------------------------------------------------


def test_head_reuses_timm_se_module_with_a_floor_on_the_bottleneck() -> None:
    from timm.layers import SEModule

    head = AttentionScoreHead(22, reduction=16)
    assert isinstance(head.gate, SEModule)
    assert head.rd_channels == 8  # 22 // 16 = 1 would squeeze everything through one unit
    assert AttentionScoreHead(1536, reduction=16).rd_channels == 96
    assert head(torch.randn(5, 22)).shape == (5,)
    # The gate is evaluated as matrix products (fast on CPU) but equals SEModule on (B, C, 1, 1).
    z = torch.randn(7, 22)
    torch.testing.assert_close(head.excite(z), head.gate(z[:, :, None, None]).flatten(1))


def test_head_computes_eq5_gate_then_linear_score() -> None:
    torch.manual_seed(0)
    head = AttentionScoreHead(12, reduction=4).eval()
    head.set_statistics(torch.randn(50, 12) * 3 + 1)
    o = torch.randn(4, 12)
    z = (o - head.mean) / head.std
    w = torch.sigmoid(head.gate.fc2(torch.relu(head.gate.fc1(z[:, :, None, None]))).flatten(1))
    expected = (w * z) @ head.linear.weight[0] + head.linear.bias
    torch.testing.assert_close(head(o), expected)


# --- selection rules --------------------------------------------------------------------------


def test_pu_s1_keeps_strictly_positive_scores() -> None:
    scores = torch.tensor([0.5, 0.0, -1.0, 2.0, 1e-7])
    assert select_indices(scores).tolist() == [True, False, False, True, True]


def test_pu_s2_keeps_the_top_budget_and_breaks_ties_by_position() -> None:
    scores = torch.tensor([0.1, 3.0, -2.0, 0.1, 0.1])
    assert select_indices(scores, budget=3).tolist() == [True, True, False, True, False]
    assert select_indices(scores, budget=100).all()
    # PU-s2 ignores the sign: negative scores are kept when the budget asks for them.
    assert select_indices(torch.tensor([-3.0, -1.0]), budget=1).tolist() == [False, True]


def test_options_reject_out_of_range_values_naming_the_parameter() -> None:
    from pucli.errors import OptionError

    for kwargs, parameter in (({"class_prior": 1.0}, "class_prior"), ({"class_prior": 0.3, "budget": 0}, "budget"),
                              ({"class_prior": 0.3, "risk": "pn"}, "risk"), ({"class_prior": 0.3, "gamma": 2.0}, "gamma"),
                              ({"class_prior": 0.3, "augment_positives": -1}, "augment_positives"),
                              ({"class_prior": 0.3, "optimizer": "adam"}, "optimizer")):
        with pytest.raises(OptionError, match=f"^{parameter} ") as caught:
            SelectorOptions(**kwargs)  # type: ignore[arg-type]
        assert caught.value.parameter == parameter and caught.value.value == kwargs[parameter]
    with pytest.raises(UsageError, match="augment_positives applies to frozen descriptors"):
        SelectorOptions(class_prior=0.3, augment_positives=4, finetune=True)


# --- training -----------------------------------------------------------------------------------


def _blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positives around +2, negatives around -2 in 8 dims; U holds 30% positives."""
    g = torch.Generator().manual_seed(seed)
    positive = torch.randn(10, 8, generator=g) + 2
    truth = torch.rand(600, generator=g) < 0.3
    unlabeled = torch.randn(600, 8, generator=g) + torch.where(truth, 2.0, -2.0)[:, None]
    return positive, unlabeled, truth


def test_same_seed_gives_identical_scores_and_another_seed_differs() -> None:
    positive, unlabeled, _ = _blobs()
    options = SelectorOptions(class_prior=0.3, epochs=3, train_batch_size=128, ensemble=2, seed=7)
    first, history = train_frozen(positive, unlabeled, options)
    second, _ = train_frozen(positive, unlabeled, options)
    other, _ = train_frozen(positive, unlabeled, SelectorOptions(class_prior=0.3, epochs=3, train_batch_size=128, ensemble=2, seed=8))
    with torch.inference_mode():
        assert torch.equal(first(unlabeled), second(unlabeled))
        assert not torch.equal(first(unlabeled), other(unlabeled))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert isinstance(first, ScoreEnsemble) and len(first.members) == 2


def test_nnpu_training_separates_well_separated_classes() -> None:
    positive, unlabeled, truth = _blobs()
    head, history = train_frozen(positive, unlabeled, SelectorOptions(class_prior=0.3, epochs=10, train_batch_size=64, lr=1e-2, ensemble=1))
    with torch.inference_mode():
        selected = select_indices(head(unlabeled))
    accuracy = (selected == truth).float().mean().item()
    assert accuracy > 0.95
    assert all(set(h) == {"epoch", "risk", "positive_risk", "negative_risk", "ascent_steps"} for h in history)


def test_upu_ablation_trains_without_ascent_steps() -> None:
    positive, unlabeled, _ = _blobs()
    _, history = train_frozen(positive, unlabeled, SelectorOptions(class_prior=0.3, epochs=3, train_batch_size=64, risk="upu", ensemble=1))
    assert sum(h["ascent_steps"] for h in history) == 0


def test_training_without_descriptors_raises_no_images() -> None:
    with pytest.raises(NoImagesError):
        train_frozen(torch.empty(0, 8), torch.randn(5, 8), SelectorOptions(class_prior=0.3))


# --- descriptor cache and the whole stage -----------------------------------------------------------


@pytest.fixture
def scenario(tiny_teacher: Path, make_class_folder: Callable[..., Path], make_pool: Callable[..., Path]) -> dict:
    positive = make_class_folder("pos", per_class=2)
    pool = make_pool("pool", count=24)
    return {
        "teacher": load_model(tiny_teacher),
        "positive": sorted(p for p in positive.rglob("*.png")),
        "pool": UnlabeledPool.from_source(str(pool)).paths,
    }


def _cache_files(kind: str = "*") -> list[Path]:
    from pucli.paths import cache_dir

    return sorted((cache_dir() / "descriptors").glob(f"{kind}-*.safetensors"))


def test_descriptor_cache_is_written_once_then_hit(scenario: dict) -> None:
    options = SelectorOptions(class_prior=0.3, epochs=2, batch_size=8, ensemble=1)
    first = run_selection(scenario["teacher"], scenario["positive"], scenario["pool"], options)
    assert not first.from_cache and first.cache_path is not None and _cache_files("pool") == [first.cache_path]
    assert len(_cache_files("positive")) == 1
    second = run_selection(scenario["teacher"], scenario["positive"], scenario["pool"], options)
    assert second.from_cache and second.cache_path == first.cache_path
    assert torch.equal(first.scores, second.scores)
    assert first.counts == {"positive": 6, "unlabeled": 24, "selected": first.counts["selected"], "skipped": 0}


def test_another_labeled_subset_reuses_the_pools_descriptors(scenario: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool's entry does not depend on the positives: a second subset extracts only itself."""
    from pucli.pu import descriptors as module

    options = SelectorOptions(class_prior=0.3, epochs=1, batch_size=8, ensemble=1)
    teacher, positive, pool = scenario["teacher"], scenario["positive"], scenario["pool"]
    first = run_selection(teacher, positive, pool, options)
    extracted: list[int] = []
    real = module.extract_descriptors

    def counting(extractor, paths, *args, **kwargs):
        extracted.append(len(paths))
        return real(extractor, paths, *args, **kwargs)

    monkeypatch.setattr(module, "extract_descriptors", counting)
    second = run_selection(teacher, positive[:4], pool, options)
    assert extracted == [4]  # the four positives; the 24 pool images came from the cache
    assert second.from_cache and second.cache_path == first.cache_path
    assert len(_cache_files("pool")) == 1 and len(_cache_files("positive")) == 2
    # The same bits as extracting the pool afresh.
    fresh = run_selection(teacher, positive[:4], pool, options, use_cache=False)
    assert torch.equal(second.head_scores, fresh.head_scores)


def test_file_identities_stat_each_shard_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pucli.pu import descriptors as module

    shard = tmp_path / "pool-000.tar"
    shard.write_bytes(b"x" * 10)
    loose = tmp_path / "a.png"
    loose.write_bytes(b"y" * 3)
    members = [Path(f"{shard}#m{i}.png") for i in range(5)]
    calls: list[str] = []
    real_stat = os.stat
    monkeypatch.setattr(module.os, "stat", lambda path: calls.append(str(path)) or real_stat(path))
    digest = module._file_identities([*members, loose])
    assert calls == [str(shard), str(loose)]
    import hashlib

    mtime, loose_mtime = real_stat(shard).st_mtime_ns, real_stat(loose).st_mtime_ns
    expected = hashlib.sha256("".join([*(f"{m}\0{10}\0{mtime}\n" for m in members),
                                       f"{loose}\0{3}\0{loose_mtime}\n"]).encode()).hexdigest()
    assert digest == expected


def test_cache_key_changes_with_weights_files_preprocessing_and_scales(scenario: dict, tmp_path: Path) -> None:
    teacher, positive, pool = scenario["teacher"], scenario["positive"], scenario["pool"]
    preprocess = Preprocess(teacher.config)
    key = descriptor_cache_key(teacher, positive, pool, preprocess, Scales())
    assert key == descriptor_cache_key(teacher, positive, pool, preprocess, Scales())
    assert key != descriptor_cache_key(teacher, positive, pool, preprocess, Scales(pre_logits=False))
    assert key != descriptor_cache_key(teacher, positive, pool[:-1], preprocess, Scales())
    assert key != descriptor_cache_key(teacher, positive, list(reversed(pool)), preprocess, Scales())
    stat = pool[0].stat()
    os.utime(pool[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file was touched/rewritten
    assert key != descriptor_cache_key(teacher, positive, pool, preprocess, Scales())
    key = descriptor_cache_key(teacher, positive, pool, preprocess, Scales())
    other = Preprocess(teacher.config)
    other.size = (32, 32)
    assert key != descriptor_cache_key(teacher, positive, pool, other, Scales())
    with torch.no_grad():
        next(teacher.model.parameters()).add_(1.0)
    from pucli.checkpoints import save_model

    changed = load_model(save_model(teacher.model, tmp_path / "other.safetensors"))
    assert key != descriptor_cache_key(changed, positive, pool, preprocess, Scales())


def test_no_cache_neither_reads_nor_writes(scenario: dict) -> None:
    options = SelectorOptions(class_prior=0.3, epochs=1, batch_size=8, ensemble=1)
    result = run_selection(scenario["teacher"], scenario["positive"], scenario["pool"], options, use_cache=False)
    assert result.cache_path is None and _cache_files() == []


def test_damaged_cache_entry_is_recomputed(scenario: dict) -> None:
    teacher = scenario["teacher"]
    kwargs = dict(scales=Scales(), device=torch.device("cpu"), batch_size=8)
    extractor = MultiScaleExtractor(teacher.model)
    preprocess = Preprocess(teacher.config)
    first = load_or_extract_descriptors(teacher, extractor, scenario["positive"], scenario["pool"], preprocess, **kwargs)
    assert first.cache_path is not None
    first.cache_path.write_bytes(b"garbage")
    again = load_or_extract_descriptors(teacher, extractor, scenario["positive"], scenario["pool"], preprocess, **kwargs)
    assert not again.from_cache and torch.equal(again.unlabeled, first.unlabeled)


def test_unreadable_pool_files_are_skipped_and_reported(scenario: dict) -> None:
    bad = scenario["pool"][0].parent / "broken.png"
    bad.write_bytes(b"not an image")
    pool = sorted([*scenario["pool"], bad])
    result = run_selection(scenario["teacher"], scenario["positive"], pool,
                           SelectorOptions(class_prior=0.3, epochs=1, batch_size=8, ensemble=1))
    assert [s.path for s in result.skipped] == [str(bad)]
    assert bad not in result.paths and len(result.paths) == 24 == len(result.scores)


def test_frozen_scores_match_streaming_the_images_through_extractor_and_head(scenario: dict) -> None:
    teacher = scenario["teacher"]
    result = run_selection(teacher, scenario["positive"], scenario["pool"],
                           SelectorOptions(class_prior=0.3, epochs=1, batch_size=8, ensemble=2))
    net = PUSelectorNet(MultiScaleExtractor(teacher.model), result.network)
    calls: list[tuple[str, int, int]] = []
    kept: list[torch.Tensor] = []
    index, streamed = score_images(net, scenario["pool"], Preprocess(teacher.config), device=torch.device("cpu"), batch_size=5,
                                   progress=lambda stage, done, total, **_: calls.append((stage, done, total)),
                                   descriptors=kept)
    assert index.tolist() == list(range(24))
    # Progress after every batch of 5, and the extractor's output of every image, in order.
    assert calls == [("score", done, 24) for done in (5, 10, 15, 20, 24)]
    assert len(kept) == 1 and kept[0].shape == (24, net.extractor.channels)
    torch.testing.assert_close(net.head(kept[0]), streamed)
    torch.testing.assert_close(streamed, result.head_scores)


def test_budget_gives_pu_s2(scenario: dict) -> None:
    result = run_selection(scenario["teacher"], scenario["positive"], scenario["pool"],
                           SelectorOptions(class_prior=0.3, budget=5, epochs=1, batch_size=8, ensemble=1))
    assert result.counts["selected"] == 5
    assert result.scores[result.selected].min() >= result.scores[~result.selected].max()


def test_finetune_trains_the_backbone_and_leaves_the_teacher_untouched(scenario: dict) -> None:
    teacher = scenario["teacher"]
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    options = SelectorOptions(class_prior=0.3, epochs=2, batch_size=8, finetune=True, seed=3)
    first = run_selection(teacher, scenario["positive"], scenario["pool"], options)
    second = run_selection(teacher, scenario["positive"], scenario["pool"], options)
    assert all(torch.equal(before[k], v) for k, v in teacher.model.state_dict().items())
    assert isinstance(first.network, PUSelectorNet)
    tuned = first.network.extractor.model.state_dict()
    assert any(not torch.equal(before[k], tuned[k]) for k in before)
    assert torch.equal(first.scores, second.scores)
    assert len(first.history) == 2 and first.cache_path is None


def test_selector_weights_round_trip_through_safetensors(scenario: dict, tmp_path: Path) -> None:
    from safetensors import safe_open

    options = SelectorOptions(class_prior=0.3, epochs=1, batch_size=8, ensemble=2)
    result = run_selection(scenario["teacher"], scenario["positive"], scenario["pool"], options)
    path = save_selector(result, options, tmp_path / "sel.selector.safetensors", scenario["teacher"])
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["teacher_architecture"] == "lenet5"
        loaded = {k: handle.get_tensor(k) for k in handle.keys()}
    head = ScoreEnsemble([AttentionScoreHead(106), AttentionScoreHead(106)])
    head.load_state_dict(loaded)
    with torch.inference_mode():
        descriptors = torch.randn(4, 106)
        torch.testing.assert_close(head(descriptors), result.network(descriptors))


# --- real data (mnist-pu, docs/BENCHMARKS.md) ------------------------------------------------------


@pytest.mark.slow
def test_selector_finds_mnist_digits_in_a_mixed_pool_at_nl10(mnist_pu: Path, mnist_teacher: Path) -> None:
    pool = UnlabeledPool.from_source(str(mnist_pu / "unlabeled.txt")).paths[:8000]
    truth_rows = (mnist_pu / "ground_truth.tsv").read_text().splitlines()[1:]
    truth = {row.split("\t")[0]: row.split("\t")[1] == "1" for row in truth_rows}
    positive = sorted((mnist_pu / "positive" / "nl10-seed0").rglob("*.png"))
    result = run_selection(load_model(mnist_teacher), positive, pool,
                           SelectorOptions(class_prior=0.3), workers=2, use_cache=False)
    positives = {str(p) for p in pool if truth[str(p)]}

    def f1(keep: torch.Tensor) -> float:
        kept = {str(p) for p, k in zip(result.paths, keep.tolist()) if k}
        precision = len(kept & positives) / max(1, len(kept))
        recall = len(kept & positives) / len(positives)
        return 2 * precision * recall / (precision + recall)

    head, propagated = f1(select_indices(result.head_scores)), f1(result.selected)
    print(f"PU-s1 F1 on an 8,000-image slice: nnPU head {head:.4f}, label propagation (the default) {propagated:.4f}")
    assert head > 0.9
    # The propagation ranking (the default) keeps the top class_prior * N and picks better ones than the head.
    assert result.metadata["graph"]["ranking"] == "propagation"
    assert int(result.selected.sum()) == round(0.3 * len(result.paths))
    assert propagated > head + 0.005 and propagated > 0.96


# --- augmented positives ---------------------------------------------------------------------------


def test_augmented_positives_are_deterministic_for_a_seed_and_differ_with_another(scenario: dict) -> None:
    teacher, positive = scenario["teacher"], scenario["positive"]
    extractor, preprocess = MultiScaleExtractor(teacher.model), Preprocess(teacher.config)

    def augmented(seed: int, batch_size: int = 8) -> torch.Tensor:
        return extract_augmented_descriptors(extractor, positive, preprocess, PositiveAugmentation(copies=3, seed=seed),
                                             device=torch.device("cpu"), batch_size=batch_size)

    first = augmented(0)
    assert first.shape == (3 * len(positive), extractor.channels) and first.dtype == torch.float32
    assert torch.equal(first, augmented(0))
    # Per-(copy, image) draws: the batch size does not change the copies (only float rounding).
    torch.testing.assert_close(first, augmented(0, batch_size=2))
    assert not torch.equal(first, augmented(1))
    plain = load_or_extract_descriptors(teacher, extractor, positive, scenario["pool"], preprocess, scales=Scales(),
                                        device=torch.device("cpu"), use_cache=False).positive
    assert not torch.equal(first[: len(positive)], plain)


def test_augmentation_draws_small_affine_parameters_and_flips_only_when_asked() -> None:
    parameters = PositiveAugmentation(copies=50, seed=0).draw(20, (28, 28))
    assert parameters.shape == (50, 20, 5)
    angle, dx, dy, zoom, flip = parameters.unbind(-1)
    assert angle.abs().max() <= 10 and dx.abs().max() == 2 and dy.abs().max() == 2
    assert 0.9 <= zoom.min() and zoom.max() <= 1.1 and flip.sum() == 0
    assert 0 < PositiveAugmentation(copies=50, seed=0, flip=True).draw(20, (28, 28))[..., 4].mean() < 1


def test_auto_augmentation_is_for_tiny_positive_sets_and_flips_only_natural_images(scenario: dict) -> None:
    import dataclasses

    digits = dataclasses.replace(scenario["teacher"].config, num_classes=10)
    auto = resolve_positive_augmentation(digits, None, 10, seed=3)
    assert auto == PositiveAugmentation(copies=AUTO_AUGMENT_COPIES, seed=3, flip=False)
    assert resolve_positive_augmentation(digits, None, 50, seed=3).copies == AUTO_AUGMENT_COPIES
    assert resolve_positive_augmentation(digits, None, 51, seed=3) is None
    assert resolve_positive_augmentation(digits, 0, 10, seed=3) is None
    assert resolve_positive_augmentation(digits, 5, 100, seed=3).copies == 5
    photos = dataclasses.replace(digits, in_chans=3, input_size=(3, 224, 224))
    assert resolve_positive_augmentation(photos, None, 10, seed=3).flip


def test_cache_key_changes_with_the_positive_augmentation(scenario: dict) -> None:
    teacher, positive, pool = scenario["teacher"], scenario["positive"], scenario["pool"]
    preprocess = Preprocess(teacher.config)
    keys = {descriptor_cache_key(teacher, positive, pool, preprocess, Scales(), augmentation)
            for augmentation in (None, PositiveAugmentation(copies=2), PositiveAugmentation(copies=3),
                                 PositiveAugmentation(copies=2, seed=1), PositiveAugmentation(copies=2, flip=True))}
    assert len(keys) == 5


def test_augmented_positives_are_trained_on_and_cached(scenario: dict) -> None:
    options = SelectorOptions(class_prior=0.3, epochs=1, batch_size=8, ensemble=1, augment_positives=4)
    first = run_selection(scenario["teacher"], scenario["positive"], scenario["pool"], options)
    assert first.metadata["positive_augmented"] == 4 * 6 and "copies=4" in first.metadata["positive_augmentation"]
    second = run_selection(scenario["teacher"], scenario["positive"], scenario["pool"], options)
    assert second.from_cache and torch.equal(first.scores, second.scores)
    off = run_selection(scenario["teacher"], scenario["positive"], scenario["pool"],
                        SelectorOptions(class_prior=0.3, epochs=1, batch_size=8, ensemble=1, augment_positives=0))
    assert off.metadata["positive_augmented"] == 0 and off.cache_path == first.cache_path  # the same pool entry
    assert len(_cache_files("positive")) == 2


def test_head_without_attention_scores_the_plain_standardised_concatenation() -> None:
    torch.manual_seed(0)
    head = AttentionScoreHead(12, reduction=4, attention=False).eval()
    assert head.gate is None and not any(name.startswith("gate.") for name in head.state_dict())
    head.set_statistics(torch.randn(50, 12) * 3 + 1)
    o = torch.randn(4, 12)
    z = (o - head.mean) / head.std
    torch.testing.assert_close(head(o), z @ head.linear.weight[0] + head.linear.bias)


def test_selector_trains_without_attention_and_records_the_option() -> None:
    positive, unlabeled, truth = _blobs()
    options = SelectorOptions(class_prior=0.3, epochs=10, train_batch_size=64, lr=1e-2, ensemble=1, attention=False)
    head, _ = train_frozen(positive, unlabeled, options)
    assert all(member.gate is None for member in head.members)
    with torch.inference_mode():
        accuracy = (select_indices(head(unlabeled)) == truth).float().mean().item()
    assert accuracy > 0.95


# --- graph smoothing ----------------------------------------------------------------------------------


def _graph_files() -> list[Path]:
    from pucli.paths import cache_dir

    return sorted((cache_dir() / "graphs").glob("*.safetensors"))


def test_graph_smoothing_keeps_the_heads_count_and_caches_the_graph(scenario: dict) -> None:
    teacher, positive, pool = scenario["teacher"], scenario["positive"], scenario["pool"]
    options = SelectorOptions(class_prior=0.3, epochs=2, batch_size=8, ensemble=1, graph_neighbors=4, graph_steps=30,
                              ranking="nnpu")
    first = run_selection(teacher, positive, pool, options)
    graph = first.metadata["graph"]
    assert graph["neighbors"] == 4 and graph["steps"] == 30 and not graph["cache_hit"] and len(_graph_files()) == 1
    assert graph["ranking"] == "nnpu"
    assert int(first.selected.sum()) == int((first.head_scores > 0).sum())
    assert not torch.equal(first.scores, first.head_scores)
    second = run_selection(teacher, positive, pool, options)
    assert second.metadata["graph"]["cache_hit"] and torch.equal(second.scores, first.scores)
    # Off: the head's own scores, and the same head as with the graph (smoothing happens after training).
    off = run_selection(teacher, positive, pool, SelectorOptions(class_prior=0.3, epochs=2, batch_size=8, ensemble=1,
                                                                 graph_neighbors=0))
    assert off.metadata["graph"] == {"neighbors": 0} and off.scores is off.head_scores
    assert torch.equal(off.head_scores, first.head_scores)
    # The default ranking: label propagation from the positives over the same (cached) graph,
    # keeping the top class_prior * N; the head is trained the same way.
    propagated = run_selection(teacher, positive, pool, dataclasses.replace(options, ranking="propagation"))
    meta = propagated.metadata["graph"]
    assert meta["ranking"] == "propagation" and meta["cache_hit"]
    assert meta["seeds"] == len(positive) + propagated.metadata["positive_augmented"]  # the copies carry label too
    assert int(propagated.selected.sum()) == round(0.3 * len(pool)) == meta["kept_by_prior"]
    assert torch.equal(propagated.head_scores, first.head_scores)
    assert torch.equal(propagated.selected, propagated.scores > 0)


def test_graph_cache_misses_when_the_pool_changes_and_resume_state_ignores_graph_options(scenario: dict) -> None:
    teacher, positive, pool = scenario["teacher"], scenario["positive"], scenario["pool"]
    options = SelectorOptions(class_prior=0.3, epochs=1, batch_size=8, ensemble=1, graph_neighbors=3, graph_steps=5)
    assert not run_selection(teacher, positive, pool, options).metadata["graph"]["cache_hit"]
    assert not run_selection(teacher, positive, pool[:-4], options).metadata["graph"]["cache_hit"]
    assert len(_graph_files()) == 2
    other_graph = SelectorOptions(class_prior=0.3, epochs=1, batch_size=8, ensemble=1, graph_neighbors=7,
                                  graph_alpha=0.5, graph_steps=9)
    assert training_state_path("d", options) == training_state_path("d", other_graph)
    assert training_state_path("d", options) != training_state_path(
        "d", SelectorOptions(class_prior=0.3, epochs=2, batch_size=8, ensemble=1))


def test_graph_smoothing_runs_after_fine_tuning(scenario: dict) -> None:
    options = SelectorOptions(class_prior=0.3, finetune=True, epochs=1, batch_size=8, graph_neighbors=3, graph_steps=10,
                              ranking="propagation")
    result = run_selection(scenario["teacher"], scenario["positive"], scenario["pool"], options, use_cache=False)
    assert result.metadata["graph"]["neighbors"] == 3 and not result.metadata["graph"]["cache_hit"]
    # The positives are scored through the fine-tuned network too, as the propagation's seeds.
    assert result.metadata["graph"]["ranking"] == "propagation"
    assert result.metadata["graph"]["seeds"] == len(scenario["positive"])
    assert int(result.selected.sum()) == round(0.3 * len(result.paths))
    assert _graph_files() == []  # --no-cache: nothing written


def test_graph_options_are_validated() -> None:
    # The engine names its parameters; the CLI maps them to --graph-* (tests/test_cli_select.py).
    with pytest.raises(UsageError, match="^graph_neighbors -1"):
        SelectorOptions(class_prior=0.3, graph_neighbors=-1)
    with pytest.raises(UsageError, match="^graph_steps -2"):
        SelectorOptions(class_prior=0.3, graph_steps=-2)
    with pytest.raises(UsageError, match="^graph_alpha 1.1"):
        SelectorOptions(class_prior=0.3, graph_alpha=1.1)
    with pytest.raises(UsageError, match=r"^graph_alpha 1.0: must be in \[0, 1\)"):
        SelectorOptions(class_prior=0.3, graph_alpha=1.0)


def test_a_pool_above_epoch_pool_max_trains_on_a_fresh_sample_each_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps per epoch stop growing at epoch_pool_max; each epoch draws its own seeded sample;
    a pool at or below the cap trains exactly as without it."""
    from pucli.pu import training

    generator = torch.Generator().manual_seed(0)
    positive = torch.randn(6, 8, generator=generator) + 2.0
    pool = torch.randn(100, 8, generator=generator)
    capped = SelectorOptions(class_prior=0.3, epochs=3, train_batch_size=16, ensemble=1, epoch_pool_max=40)
    assert training.steps_per_training_epoch(100, capped) == 3  # ceil(40 / 16), not ceil(100 / 16) = 7
    assert training.steps_per_training_epoch(30, capped) == 2  # below the cap: the whole pool
    uncapped = dataclasses.replace(capped, epoch_pool_max=None)
    assert training.steps_per_training_epoch(100, uncapped) == 7

    seen: list[int] = []
    real_risk = training._risk

    def counting(scores_p, scores_u, options):
        seen.append(len(scores_u))
        return real_risk(scores_p, scores_u, options)

    monkeypatch.setattr(training, "_risk", counting)
    head, history = train_frozen(positive, pool, capped)
    assert seen == [16, 16, 8] * 3 and len(history) == 3  # 40 pool rows an epoch, in batches of 16
    again, _ = train_frozen(positive, pool, capped)
    assert torch.equal(head(pool), again(pool))  # seeded: the same samples, the same head
    # At or below the cap the run is the uncapped one, bit for bit.
    small = pool[:40]
    at_cap, _ = train_frozen(positive, small, capped)
    without, _ = train_frozen(positive, small, uncapped)
    assert torch.equal(at_cap(small), without(small))
    # Above it the epochs differ from the uncapped training (they see other rows).
    full, _ = train_frozen(positive, pool, uncapped)
    assert not torch.equal(head(pool), full(pool))


def test_epoch_pool_max_must_be_positive() -> None:
    from pucli.errors import OptionError

    with pytest.raises(OptionError, match="epoch_pool_max"):
        SelectorOptions(class_prior=0.3, epoch_pool_max=0)
