"""The PU selector: which unlabeled images belong to the teacher's task (stage 1 of pucli).

Implements stage 1 of

* Xu, Wang, Chen, Han, Xu, Tao, Xu, "Positive-Unlabeled Compression on the Cloud", NeurIPS 2019,
  https://arxiv.org/abs/1909.09757 (Sec. 2.2-2.3, Eq. 3-6),

trained with the non-negative PU risk of Kiryo et al. 2017 (:mod:`pucli.nnpu`).

Network ``N_A`` (Eq. 4-6): the teacher's feature maps at several scales are global-average-pooled
to channel descriptors ``o^j`` and concatenated to ``o`` (C channels); a squeeze-and-excitation
gate ``w = sigmoid(W2 relu(W1 o))`` (timm's :class:`timm.layers.SEModule`) rescales it,
``o~ = w * o``, and a linear head gives the score ``F(x)``.

Scales (:class:`Scales`): the stages of timm's feature API (``forward_intermediates`` where the
model has it, else forward hooks on the modules its ``feature_info`` names, which is what
``features_only`` wraps) plus, by default, the penultimate features
``forward_head(x, pre_logits=True)``. The pre-logits scale matters for small backbones such as
LeNet-5, whose conv stages have only 6 and 16 channels while its 84-d penultimate layer holds the
class evidence; for ResNets it equals the pooled last stage, so it only repeats that scale.

Two training modes:

* frozen (default): the teacher stays fixed, so each image's descriptor is computed once, with
  the deterministic evaluation transform, and cached on disk (:func:`load_or_extract_descriptors`);
  the gate and head then train for many epochs in seconds, and scoring the pool is the head on
  the cached descriptors (bit-identical to streaming the images through extractor and head).
* fine-tune (:attr:`SelectorOptions.finetune`): the backbone starts from the teacher and trains end
  to end, as in the paper's code; images are streamed, and the pool is scored by streaming it
  again through the trained network.

PU training choices beyond the paper, for P of 1-10 images per class:
when P is tiny (at most 5 images per class by default), each positive image also contributes
randomly augmented copies (small random affine: rotation, shift, scale; plus a horizontal flip
for natural images), extracted once and cached with the other descriptors
(:class:`PositiveAugmentation`; the issue's "augmenting P": on mnist-pu at n_l = 1 it cut the
KMNIST characters wrongly kept by up to a quarter and raised PU-s1 F1 by 0.03 on average over
training seeds, though not at every seed, see docs/benchmarks.md); descriptors are
standardised with the pool's statistics (the pool is large, P is not); P is tiny,
so every mini-batch resamples it with replacement and can jitter it with Gaussian noise in the
standardised space (an optional augmentation, off by default: on mnist-pu it did not help);
AdamW with a high learning rate (3e-2: at the usual 1e-3 the head under-fits within 20 epochs,
measured on mnist-pu at n_l = 10: F1 0.92 at 1e-3, 0.94 at 1e-2, 0.97 at 3e-2), weight decay and a cosine
schedule; several heads trained from different seeds are averaged (an ensemble lowers the
variance that a 10-image P brings).

Selection: by default the head's scores are first smoothed over the pool's k-nearest-neighbour
graph (label spreading, :mod:`pucli.graph`) and shifted so that as many images score above zero
as ``F(x) > 0`` keeps: the head decides how many images belong to the task, their neighbourhoods
decide which (on mnist-pu, F1 0.967 -> 0.988 at 10 positives per class, 0.871 -> 0.959 at 1; means of 3 seeds).
PU-s1 then keeps every unlabeled image with a score > 0; PU-s2 keeps the top ``budget``.
Everything random draws from ``torch.Generator`` objects seeded by :attr:`SelectorOptions.seed`,
so the same inputs and seed give the same scores. No ground truth is ever read here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pucli import distributed
from pucli.checkpoints import LoadedModel, ModelConfig
from pucli.errors import DataError, NoImagesError, UsageError
from pucli.graph import block_rows, graph_features, knn_graph, smooth_scores
from pucli.nnpu import nnpu_risk
from pucli.paths import cache_dir, temporary_path_beside
from pucli.prior import Fit, PriorEstimate, estimate_class_prior
from pucli.progress import ProgressCallback, no_progress
from pucli.sources import ImageDataset, Preprocess, SkippedFile, iterate_batches

__all__ = [
    "Scales",
    "MultiScaleExtractor",
    "AttentionScoreHead",
    "ScoreEnsemble",
    "PUSelectorNet",
    "SelectorOptions",
    "Descriptors",
    "PositiveAugmentation",
    "resolve_positive_augmentation",
    "extract_augmented_descriptors",
    "SelectionResult",
    "descriptor_cache_key",
    "extract_descriptors",
    "load_or_extract_descriptors",
    "extract_descriptors_in_parts",
    "training_state_path",
    "train_frozen",
    "train_finetune",
    "score_images",
    "select_indices",
    "run_selection",
    "save_selector",
    "DESCRIPTOR_CACHE_VERSION",
]

DESCRIPTOR_CACHE_VERSION = 2  # 2: augmented positives stored beside the plain ones
SELECTOR_FORMAT_VERSION = 1


# --- network N_A (Eq. 4-6) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scales:
    """Which of the backbone's outputs make the multi-scale descriptor ``o`` (Eq. 4).

    Attributes:
        stages: indices into the model's feature stages (timm ``feature_info`` order; negative
            counts from the end); None takes every stage.
        pre_logits: also append the penultimate features ``forward_head(x, pre_logits=True)``
            as the last scale (see the module docstring for why).
    """

    stages: tuple[int, ...] | None = None
    pre_logits: bool = True

    def describe(self) -> str:
        stages = "all" if self.stages is None else ",".join(str(s) for s in self.stages)
        return f"stages={stages};pre_logits={int(self.pre_logits)}"


class MultiScaleExtractor(nn.Module):
    """The backbone part of ``N_A``: images -> concatenated pooled descriptors ``o`` (Eq. 4).

    Wraps a timm classifier (the teacher, or a copy of it for fine-tuning). Stage maps come from
    ``model.forward_intermediates`` when the model has it, else from forward hooks on the modules
    named by ``model.feature_info`` (the modules timm's ``features_only`` wrapper taps).

    Shapes: ``forward`` (B, C_in, H, W) float32 normalised images -> (B, C) float32, where
    ``C = sum(scale_channels)``.

    Raises:
        UsageError: the model exposes no feature stages, or ``scales.stages`` names one it lacks.
    """

    def __init__(self, model: nn.Module, scales: Scales = Scales()) -> None:
        super().__init__()
        self.model = model
        self.scales = scales
        info = _feature_info(model)
        if not info:
            raise UsageError(
                f"architecture {type(model).__name__} exposes no feature stages (timm feature_info): "
                "the PU selector needs a timm model with features_only / forward_intermediates support"
            )
        count = len(info)
        requested = range(count) if scales.stages is None else scales.stages
        stages: list[int] = []
        for index in requested:
            if not -count <= index < count:
                raise UsageError(f"scale stage {index} does not exist: the model has stages 0..{count - 1}")
            stages.append(index % count)
        self.stage_indices = sorted(set(stages))
        self.scale_channels = [int(info[i]["num_chs"]) for i in self.stage_indices]
        if scales.pre_logits:
            self.scale_channels.append(int(getattr(model, "num_features", 0) or getattr(model, "head_hidden_size")))
        self.channels = sum(self.scale_channels)
        self._use_intermediates = hasattr(model, "forward_intermediates")
        self._hook_modules = [info[i]["module"] for i in self.stage_indices]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps, final = self._stage_maps(images)
        pooled = [m.float().mean(dim=(2, 3)) for m in maps]
        if self.scales.pre_logits:
            pooled.append(self.model.forward_head(final, pre_logits=True).float().flatten(1))
        return torch.cat(pooled, dim=1)

    def _stage_maps(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        if self._use_intermediates:
            final, maps = self.model.forward_intermediates(images, indices=self.stage_indices)
            return list(maps), final
        captured: dict[str, torch.Tensor] = {}
        modules = dict(self.model.named_modules())
        handles = [
            modules[name].register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
            for name in self._hook_modules
        ]
        try:
            final = self.model.forward_features(images)
        finally:
            for handle in handles:
                handle.remove()
        return [captured[name] for name in self._hook_modules], final


def _feature_info(model: nn.Module) -> list[dict[str, Any]]:
    info = getattr(model, "feature_info", None)
    if info is None:
        return []
    # timm keeps either a list of dicts or a FeatureInfo object (which has .info).
    return list(getattr(info, "info", info))


class AttentionScoreHead(nn.Module):
    """The gate and head of ``N_A``: descriptor ``o`` -> score ``F(x)`` (Eq. 5-6).

    ``o`` is first standardised with fixed statistics (buffers ``mean``/``std``, set from the
    unlabeled pool by :meth:`set_statistics`), so scales of very different magnitude (a 6-channel
    conv stage next to an 84-d FC layer) start on an equal footing. Then timm's
    :class:`~timm.layers.SEModule` on ``o`` viewed as (B, C, 1, 1) computes
    ``o~ = sigmoid(W2 relu(W1 o)) * o`` with ``W1: C/r x C`` (Eq. 5; see :meth:`excite`), and a
    linear layer gives
    ``F(x) = v . o~ + b`` (Eq. 6).

    Args:
        channels: C, the descriptor width.
        reduction: r, the SE reduction ratio (16 in the official code).
        min_rd_channels: floor on ``C/r`` so that tiny descriptors still get a useful bottleneck.
        attention: False drops the SE gate (``o~ = o``: plain concatenation of the scales, the
            ablation of Eq. 5); the module then has no ``gate`` parameters.

    Shapes: ``forward`` (B, C) float32 -> (B,) float32.
    """

    def __init__(self, channels: int, reduction: int = 16, min_rd_channels: int = 8, attention: bool = True) -> None:
        super().__init__()
        from timm.layers import SEModule

        if reduction < 1:
            raise UsageError(f"--reduction {reduction}: must be >= 1")
        self.channels = channels
        self.reduction = reduction
        self.rd_channels = max(min_rd_channels, channels // reduction)
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))
        self.attention = attention
        self.gate = SEModule(channels, rd_channels=self.rd_channels) if attention else None
        self.linear = nn.Linear(channels, 1)

    def set_statistics(self, descriptors: torch.Tensor) -> None:
        """Standardise with the mean and std of ``descriptors`` (N, C), floor 1e-6 on std."""
        self.mean.copy_(descriptors.mean(0))
        self.std.copy_(descriptors.std(0).clamp(min=1e-6))

    def standardize(self, descriptors: torch.Tensor) -> torch.Tensor:
        return (descriptors - self.mean) / self.std

    def excite(self, standardized: torch.Tensor) -> torch.Tensor:
        """``o~ = sigmoid(W2 relu(W1 o)) * o`` (Eq. 5): (B, C) -> (B, C).

        Numerically the same as ``self.gate(o.view(B, C, 1, 1))``, but with the SE module's 1x1
        convolutions applied as matrix products: on 1x1 maps the CPU convolution kernels (and
        their backward) cost one to two orders of magnitude more than the equivalent ``linear``
        and dominated training time when measured. Without attention, ``o`` unchanged.
        """
        gate = self.gate
        if gate is None:
            return standardized
        hidden = F.linear(standardized, gate.fc1.weight.flatten(1), gate.fc1.bias)
        hidden = gate.act(gate.bn(hidden))
        weights = gate.gate(F.linear(hidden, gate.fc2.weight.flatten(1), gate.fc2.bias))
        return standardized * weights

    def forward_standardized(self, standardized: torch.Tensor) -> torch.Tensor:
        """(B, C) already standardised -> (B,) scores (training adds noise in this space)."""
        return self.linear(self.excite(standardized)).squeeze(1)

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        return self.forward_standardized(self.standardize(descriptors))


class ScoreEnsemble(nn.Module):
    """Mean score of several :class:`AttentionScoreHead` members. (B, C) -> (B,) float32."""

    def __init__(self, members: Sequence[AttentionScoreHead]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(descriptors) for member in self.members]).mean(0)


class PUSelectorNet(nn.Module):
    """The whole ``N_A``: extractor then head. (B, C_in, H, W) float32 -> (B,) float32 scores."""

    def __init__(self, extractor: MultiScaleExtractor, head: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.extractor(images))


# --- options and results --------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectorOptions:
    """Hyper-parameters of PU training and selection.

    Attributes:
        class_prior: ``pi_p``, the fraction of positives in the unlabeled pool, in (0, 1); None
            estimates it from the descriptors (:func:`estimate_prior_from_descriptors`).
        budget: PU-s2 keeps the top ``budget`` images; None gives PU-s1 (``F(x) > 0``).
        finetune: train the backbone end to end instead of caching frozen descriptors.
        epochs: passes over the unlabeled pool.
        batch_size: images per batch when extracting descriptors, scoring and fine-tuning.
        train_batch_size: unlabeled descriptors per frozen-mode mini-batch (large: the head is
            tiny, so big batches cost little and make the nnPU risk estimate less noisy).
        positive_per_batch: P samples drawn with replacement per mini-batch (the fixed P:U mix);
            None uses a quarter of the unlabeled batch.
        lr, weight_decay, optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9); cosine schedule.
        reduction: SE reduction ratio r.
        attention: gate the descriptor with squeeze-and-excitation (Eq. 5); False feeds the plain
            concatenation to the linear head (the ablation).
        risk: ``"nnpu"`` (Kiryo et al. 2017) or ``"upu"`` (unbiased, the ablation).
        loss: surrogate, ``"sigmoid"`` or ``"logistic"``.
        beta, gamma: nnPU's ascent threshold and step scale.
        positive_noise: std of the Gaussian jitter added to P in standardised descriptor space.
        ensemble: heads trained from different seeds and averaged (frozen mode).
        augment_positives: randomly augmented copies of each positive image added to P (frozen
            mode); None picks :data:`AUTO_AUGMENT_COPIES` when P has at most
            :data:`AUTO_AUGMENT_MAX_PER_CLASS` images per teacher class, else 0.
        scales: which backbone outputs make the descriptor.
        graph_neighbors: k of the pool's k-nearest-neighbour graph over which the head's scores
            are smoothed (:mod:`pucli.graph`); 0 turns graph smoothing off (scores are the head's
            ``F(x)``).
        graph_alpha, graph_steps: label spreading's ``alpha`` and number of iterations.
        seed: seeds every random draw.
    """

    class_prior: float | None
    budget: int | None = None
    finetune: bool = False
    epochs: int = 20
    batch_size: int = 256
    train_batch_size: int = 4096
    positive_per_batch: int | None = None
    lr: float = 0.03
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    reduction: int = 16
    attention: bool = True
    risk: str = "nnpu"
    loss: str = "sigmoid"
    beta: float = 0.0
    gamma: float = 1.0
    positive_noise: float = 0.0
    ensemble: int = 3
    augment_positives: int | None = None
    scales: Scales = Scales()
    graph_neighbors: int = 10
    graph_alpha: float = 0.99
    graph_steps: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        checks = (
            (self.class_prior is None or 0.0 < self.class_prior < 1.0,
             f"--prior {self.class_prior}: must be between 0 and 1 (exclusive), or auto"),
            (self.budget is None or self.budget >= 1, f"--budget {self.budget}: must be >= 1"),
            (self.epochs >= 1, f"--epochs {self.epochs}: must be >= 1"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: must be >= 1"),
            (self.train_batch_size >= 1, f"--train-batch-size {self.train_batch_size}: must be >= 1"),
            (self.risk in ("nnpu", "upu"), f"--risk {self.risk}: use nnpu or upu"),
            (self.loss in ("sigmoid", "logistic"), f"--loss {self.loss}: use sigmoid or logistic"),
            (self.beta >= 0.0, f"--beta {self.beta}: must be >= 0"),
            (0.0 <= self.gamma <= 1.0, f"--gamma {self.gamma}: must be in [0, 1]"),
            (self.optimizer in ("adam", "sgd"), f"optimizer {self.optimizer}: use adam or sgd"),
            (self.ensemble >= 1, f"ensemble {self.ensemble}: must be >= 1"),
            (self.reduction >= 1, f"--reduction {self.reduction}: must be >= 1"),
            (self.augment_positives is None or self.augment_positives >= 0,
             f"--augment-positives {self.augment_positives}: must be >= 0"),
            (self.graph_neighbors >= 0, f"--graph-neighbors {self.graph_neighbors}: must be >= 0 (0 turns it off)"),
            (0.0 <= self.graph_alpha < 1.0, f"--graph-alpha {self.graph_alpha}: must be in [0, 1)"),
            (self.graph_steps >= 0, f"--graph-steps {self.graph_steps}: must be >= 0"),
            (not (self.finetune and self.augment_positives), "--augment-positives applies to frozen descriptors: "
             "drop it or --finetune"),
        )
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


@dataclass
class Descriptors:
    """Frozen-mode descriptors. ``positive`` (N_P', C) float32 and ``unlabeled`` (N_U', C) float32
    hold the readable images only; ``positive_index`` / ``unlabeled_index`` (int64) give their
    positions in the input lists; ``skipped`` the unreadable files; ``cache_path`` where they
    live on disk (None with the cache off); ``from_cache`` whether this run loaded them;
    ``positive_augmented`` (copies * N_P', C) float32 the descriptors of the augmented copies of
    the positives, copy-major (all images' copy 0, then copy 1, ...), (0, C) without augmentation."""

    positive: torch.Tensor
    unlabeled: torch.Tensor
    positive_index: torch.Tensor
    unlabeled_index: torch.Tensor
    skipped: list[SkippedFile]
    cache_path: Path | None
    from_cache: bool
    positive_augmented: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))

    @property
    def positive_set(self) -> torch.Tensor:
        """P as trained on: (N_P' + copies * N_P', C) float32, the plain then the augmented descriptors."""
        if len(self.positive_augmented) == 0:
            return self.positive
        return torch.cat([self.positive, self.positive_augmented])


# --- augmented positives ------------------------------------------------------------------------------

AUTO_AUGMENT_COPIES = 32
AUTO_AUGMENT_MAX_PER_CLASS = 5


@dataclass(frozen=True)
class PositiveAugmentation:
    """Random geometric copies of the labeled positives (the issue's "augmenting P").

    With 1-2 positives per class, nnPU sees only a handful of points of each class and the head
    learns their exact descriptors; small random affine copies (on uint8 images, before
    normalisation, with torchvision's ``v2.functional.affine``) spread P over the variations a
    class really has. Each copy's parameters are drawn from a ``torch.Generator`` seeded with
    ``seed``, per (copy, image), so the copies do not depend on the batch size.

    Attributes:
        copies: augmented copies per positive image (>= 1).
        seed: seeds the draw.
        max_rotation: degrees, uniform in [-max_rotation, max_rotation].
        max_shift: fraction of the side, integer pixel shifts uniform in [-round(f*side), round(f*side)]
            (1/14: +-2 px on 28x28 digits).
        scale: (low, high), uniform zoom factor.
        flip: also a random horizontal flip (natural images; not for digits and characters).
    """

    copies: int
    seed: int = 0
    max_rotation: float = 10.0
    max_shift: float = 1 / 14
    scale: tuple[float, float] = (0.9, 1.1)
    flip: bool = False

    def describe(self) -> str:
        return (f"copies={self.copies};seed={self.seed};rotation={self.max_rotation};shift={self.max_shift:.6f};"
                f"scale={self.scale[0]},{self.scale[1]};flip={int(self.flip)}")

    def draw(self, count: int, size: tuple[int, int]) -> torch.Tensor:
        """Parameters of every copy of ``count`` images of ``size`` (H, W): (copies, count, 5)
        float32 columns angle (degrees), shift x, shift y (pixels), scale, flip (0/1)."""
        generator = torch.Generator().manual_seed(self.seed)
        shape = (self.copies, count)
        shift_x, shift_y = round(self.max_shift * size[1]), round(self.max_shift * size[0])
        angle = (torch.rand(shape, generator=generator) * 2 - 1) * self.max_rotation
        dx = torch.randint(-shift_x, shift_x + 1, shape, generator=generator).float()
        dy = torch.randint(-shift_y, shift_y + 1, shape, generator=generator).float()
        zoom = self.scale[0] + torch.rand(shape, generator=generator) * (self.scale[1] - self.scale[0])
        flip = (torch.rand(shape, generator=generator) < 0.5).float() if self.flip else torch.zeros(shape)
        return torch.stack([angle, dx, dy, zoom, flip], dim=-1)

    def apply(self, images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 images, (B, 5) parameters from :meth:`draw` -> (B, C, H, W) uint8."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        out = []
        for image, (angle, dx, dy, zoom, flip) in zip(images, parameters.tolist()):
            image = TF.horizontal_flip(image) if flip else image
            out.append(TF.affine(image, angle=angle, translate=[int(dx), int(dy)], scale=zoom, shear=[0.0, 0.0],
                                 interpolation=InterpolationMode.BILINEAR))
        return torch.stack(out) if out else images


def resolve_positive_augmentation(config: ModelConfig, copies: int | None, num_positive: int, seed: int) -> PositiveAugmentation | None:
    """The augmentation a run uses, or None for none.

    ``copies`` None (auto): :data:`AUTO_AUGMENT_COPIES` when P has at most
    :data:`AUTO_AUGMENT_MAX_PER_CLASS` images per class of the teacher (``config.num_classes``),
    else none (on mnist-pu, single heads, 32 copies: PU-s1 F1 +0.08 at n_l = 1, +0.01 at n_l = 2
    and 5, -0.01 at n_l = 10). Flips only where distill's ``resolve_augment`` would (not for small grayscale
    inputs such as digits, where a flip changes the class).
    """
    from pucli.distill import resolve_augment

    if copies is None:
        copies = AUTO_AUGMENT_COPIES if num_positive <= AUTO_AUGMENT_MAX_PER_CLASS * config.num_classes else 0
    if copies == 0:
        return None
    return PositiveAugmentation(copies=copies, seed=seed, flip=resolve_augment(config, "auto") == "flip-crop")


@dataclass
class SelectionResult:
    """What :func:`run_selection` produced.

    Attributes:
        paths: the readable unlabeled images, in pool order.
        scores: (len(paths),) float32, the scores selection keeps by: the head's ``F(x)`` smoothed
            over the pool's k-NN graph (:mod:`pucli.graph`), or ``F(x)`` itself with graph
            smoothing off. Either way PU-s1 keeps ``scores > 0``.
        head_scores: (len(paths),) float32, the head's own ``F(x)`` (the same tensor as ``scores``
            with graph smoothing off).
        selected: (len(paths),) bool, the images kept (PU-s1 or PU-s2).
        network: the trained selector (head alone in frozen mode, extractor + head fine-tuned).
        history: one dict per epoch (``epoch``, ``risk``, ``positive_risk``, ``negative_risk``,
            ``ascent_steps``; means over the ensemble's members in frozen mode).
        timings: seconds per stage (``extract``, ``train``, ``score``).
        skipped: unreadable files (positive or unlabeled), left out.
        counts: ``positive``, ``unlabeled``, ``selected``, ``skipped``.
        cache_path, from_cache: the descriptor cache used (frozen mode).
        class_prior: the class prior the selector was trained with (given or estimated).
        prior_estimate: the estimate, when the prior was estimated (``options.class_prior`` None).
    """

    paths: list[Path]
    scores: torch.Tensor
    selected: torch.Tensor
    network: nn.Module
    history: list[dict[str, float]]
    timings: dict[str, float]
    skipped: list[SkippedFile]
    counts: dict[str, int]
    cache_path: Path | None = None
    from_cache: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    class_prior: float | None = None
    prior_estimate: PriorEstimate | None = None
    head_scores: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.head_scores is None:
            self.head_scores = self.scores


# --- descriptor cache -----------------------------------------------------------------------------

def _file_identities(paths: Sequence[Path]) -> str:
    """sha256 over (path, size, mtime_ns) of each file, in order; a missing file hashes as -1.
    A member of a tar shard takes the shard's size and mtime (:func:`pucli.shards.storage_path`)."""
    from pucli.shards import storage_path

    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = os.stat(storage_path(path))
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        digest.update(f"{path}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


def descriptor_cache_key(
    teacher: LoadedModel,
    positive_paths: Sequence[Path],
    unlabeled_paths: Sequence[Path],
    preprocess: Preprocess,
    scales: Scales,
    augmentation: PositiveAugmentation | None = None,
) -> str:
    """Hex key naming the cached descriptors of these inputs.

    It changes when the teacher's weights, the architecture, any input file (path, size,
    mtime_ns), the order of the inputs, the preprocessing, the scales or the augmentation of
    the positives (copies, seed, ranges) change.
    """
    config = teacher.config
    parts = {
        "version": DESCRIPTOR_CACHE_VERSION,
        "weights": teacher.digest,
        "architecture": config.architecture,
        "model_args": json.dumps(config.model_args, sort_keys=True, default=str),
        "positive": _file_identities(positive_paths),
        "unlabeled": _file_identities(unlabeled_paths),
        "preprocess": [preprocess.channels, list(preprocess.size), preprocess.crop_pct,
                       str(preprocess.interpolation.value), list(config.mean), list(config.std)],
        "scales": scales.describe(),
        "augment": augmentation.describe() if augmentation is not None else "none",
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _cache_file(key: str) -> Path:
    return cache_dir() / "descriptors" / f"{key}.safetensors"


def _read_cache(path: Path) -> Descriptors | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        skipped = [SkippedFile(**item) for item in json.loads(metadata.get("skipped", "[]"))]
        return Descriptors(
            positive=tensors["positive"], unlabeled=tensors["unlabeled"],
            positive_index=tensors["positive_index"], unlabeled_index=tensors["unlabeled_index"],
            skipped=skipped, cache_path=path, from_cache=True, positive_augmented=tensors["positive_augmented"],
        )
    except (SafetensorError, OSError, KeyError, ValueError, TypeError):
        # A damaged cache entry is only a lost shortcut: recompute and overwrite it.
        return None


def _write_cache(path: Path, descriptors: Descriptors) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path_beside(path)
    try:
        save_file(
            {
                "positive": descriptors.positive.contiguous(),
                "unlabeled": descriptors.unlabeled.contiguous(),
                "positive_index": descriptors.positive_index.contiguous(),
                "unlabeled_index": descriptors.unlabeled_index.contiguous(),
                "positive_augmented": descriptors.positive_augmented.contiguous(),
            },
            str(tmp),
            metadata={"format_version": str(DESCRIPTOR_CACHE_VERSION),
                      "skipped": json.dumps([asdict(s) for s in descriptors.skipped])},
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@torch.inference_mode()
def extract_descriptors(
    extractor: MultiScaleExtractor,
    paths: Sequence[Path],
    preprocess: Preprocess,
    *,
    device: torch.device,
    batch_size: int = 512,
    workers: int = 0,
    skipped: list[SkippedFile] | None = None,
    progress: ProgressCallback = no_progress,
    stage: str = "extract",
    progress_offset: int = 0,
    progress_total: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stream ``paths`` through ``extractor`` with the deterministic evaluation transform.

    Only one batch of decoded pixels is alive at a time; the (N', C) float32 descriptors of the
    readable images are collected on the CPU. Returns ``(index (N',) int64, descriptors (N', C))``;
    unreadable files go to ``skipped``.
    """
    extractor.eval()
    # Filled in place: collecting chunks and concatenating would hold the descriptors twice.
    descriptors = torch.empty(len(paths), extractor.channels)
    kept = torch.zeros(len(paths), dtype=torch.bool)
    total = progress_total if progress_total is not None else len(paths)
    started = time.perf_counter()
    dataset = ImageDataset(paths, preprocess)
    for batch in iterate_batches(dataset, batch_size=batch_size, workers=workers,
                                 pin_memory=device.type == "cuda", skipped=skipped):
        images = preprocess.normalize(batch.images.to(device, non_blocking=True))
        descriptors[batch.indices] = extractor(images).float().cpu()
        kept[batch.indices] = True
        done = int(batch.indices[-1]) + 1
        elapsed = time.perf_counter() - started
        progress(stage, progress_offset + done, total, img_s=done / elapsed if elapsed > 0 else 0.0)
    index = kept.nonzero().flatten()
    if len(index) == len(paths):
        return index, descriptors
    return index, descriptors[index]


@torch.inference_mode()
def extract_augmented_descriptors(
    extractor: MultiScaleExtractor,
    paths: Sequence[Path],
    preprocess: Preprocess,
    augmentation: PositiveAugmentation,
    *,
    device: torch.device,
    batch_size: int = 512,
) -> torch.Tensor:
    """Descriptors of ``augmentation.copies`` augmented copies of each readable image of ``paths``.

    Augments the resized uint8 images (before normalisation), then extracts as
    :func:`extract_descriptors` does. Returns (copies * N', C) float32, copy-major; unreadable
    files are left out (the plain extraction already reported them).
    """
    extractor.eval()
    parameters = augmentation.draw(len(paths), preprocess.size)
    descriptors = torch.empty(augmentation.copies, len(paths), extractor.channels)
    kept = torch.zeros(len(paths), dtype=torch.bool)
    for batch in iterate_batches(ImageDataset(paths, preprocess), batch_size=batch_size, workers=0):
        for copy_index in range(augmentation.copies):
            images = augmentation.apply(batch.images, parameters[copy_index, batch.indices])
            descriptors[copy_index, batch.indices] = extractor(preprocess.normalize(images.to(device))).float().cpu()
        kept[batch.indices] = True
    return descriptors[:, kept].flatten(0, 1)


def load_or_extract_descriptors(
    teacher: LoadedModel,
    extractor: MultiScaleExtractor,
    positive_paths: Sequence[Path],
    unlabeled_paths: Sequence[Path],
    preprocess: Preprocess,
    *,
    scales: Scales,
    device: torch.device,
    batch_size: int = 512,
    workers: int = 0,
    use_cache: bool = True,
    augmentation: PositiveAugmentation | None = None,
    progress: ProgressCallback = no_progress,
    resume: bool = False,
) -> Descriptors | None:
    """Descriptors of P and U: from the cache when the key matches, else extracted (and cached).

    Under torchrun the ranks share the extraction (:func:`_load_or_extract_sharded`): rank 0
    gets the descriptors, the other ranks None.

    With ``augmentation``, the augmented copies of P (:func:`extract_augmented_descriptors`) are
    extracted and cached too, under a key that includes the augmentation's settings.

    The cache lives in ``pucli.paths.cache_dir()/descriptors/<key>.safetensors`` (key:
    :func:`descriptor_cache_key`), written atomically, so an interrupted run never leaves a
    half-written entry behind. While the pool is extracted, each finished part of it is saved in
    ``<key>.parts/`` (:func:`extract_descriptors_in_parts`); ``resume`` loads the parts an
    interrupted run left instead of extracting them again (without it they are discarded).
    """
    path = parts = None
    if use_cache:
        path = _cache_file(descriptor_cache_key(teacher, positive_paths, unlabeled_paths, preprocess, scales,
                                                augmentation))
    if distributed.is_distributed():
        return _load_or_extract_sharded(extractor, positive_paths, unlabeled_paths, preprocess, path,
                                        device=device, batch_size=batch_size, workers=workers,
                                        augmentation=augmentation, progress=progress)
    if path is not None:
        if path.is_file():
            cached = _read_cache(path)
            if cached is not None:
                total = len(positive_paths) + len(unlabeled_paths)
                progress("extract", total, total, cached=1)
                return cached
        parts = _parts_folder(path, keep=resume)
    skipped: list[SkippedFile] = []
    total = len(positive_paths) + len(unlabeled_paths)
    positive_index, positive = extract_descriptors(
        extractor, positive_paths, preprocess, device=device, batch_size=batch_size, workers=0,
        skipped=skipped, progress=progress, progress_total=total,
    )
    unlabeled_index, unlabeled = extract_descriptors_in_parts(
        extractor, unlabeled_paths, preprocess, parts=parts, device=device, batch_size=batch_size, workers=workers,
        skipped=skipped, progress=progress, progress_offset=len(positive_paths), progress_total=total,
    )
    positive_augmented = torch.empty(0, extractor.channels)
    if augmentation is not None:
        positive_augmented = extract_augmented_descriptors(extractor, positive_paths, preprocess, augmentation,
                                                           device=device, batch_size=batch_size)
    descriptors = Descriptors(positive, unlabeled, positive_index, unlabeled_index, skipped, path, False,
                              positive_augmented)
    if path is not None:
        try:
            _write_cache(path, descriptors)
        except OSError:
            # A read-only cache folder must not fail the run; the next run just recomputes.
            descriptors.cache_path = None
    if parts is not None and descriptors.cache_path is not None:
        shutil.rmtree(parts, ignore_errors=True)  # the whole entry now holds them
    return descriptors


def _load_or_extract_sharded(
    extractor: MultiScaleExtractor,
    positive_paths: Sequence[Path],
    unlabeled_paths: Sequence[Path],
    preprocess: Preprocess,
    path: Path | None,
    *,
    device: torch.device,
    batch_size: int,
    workers: int,
    augmentation: PositiveAugmentation | None,
    progress: ProgressCallback,
) -> Descriptors | None:
    """:func:`load_or_extract_descriptors` over the ranks of a torchrun launch.

    Rank 0 looks up the cache and tells the others. Otherwise each rank extracts its block of
    whole batches of the pool (:func:`pucli.distributed.batch_block`: the same batches, so the
    same bits, as one process), the blocks are gathered on rank 0 in pool order, and rank 0 adds
    the positives (tiny) and writes the cache entry a one-process run would have written.
    Returns the descriptors on rank 0, None elsewhere. The per-part resume of a one-process
    extraction is not used here: an interrupted run extracts the pool again.
    """
    cached = _read_cache(path) if path is not None and distributed.is_main() and path.is_file() else None
    if distributed.broadcast_object(cached is not None):
        if cached is not None:
            total = len(positive_paths) + len(unlabeled_paths)
            progress("extract", total, total, cached=1)
        return cached
    start, end = distributed.batch_block(len(unlabeled_paths), batch_size)
    skipped: list[SkippedFile] = []
    index, values = extract_descriptors(extractor, unlabeled_paths[start:end], preprocess, device=device,
                                        batch_size=batch_size, workers=workers, skipped=skipped, progress=progress)
    gathered = distributed.gather_rows(index + start, values)
    all_skipped = [item for part in distributed.gather_objects(skipped) for item in part]
    if gathered is None:
        return None
    unlabeled_index, unlabeled = gathered
    positive_skipped: list[SkippedFile] = []
    positive_index, positive = extract_descriptors(extractor, positive_paths, preprocess, device=device,
                                                   batch_size=batch_size, workers=0, skipped=positive_skipped)
    positive_augmented = torch.empty(0, extractor.channels)
    if augmentation is not None:
        positive_augmented = extract_augmented_descriptors(extractor, positive_paths, preprocess, augmentation,
                                                           device=device, batch_size=batch_size)
    descriptors = Descriptors(positive, unlabeled, positive_index, unlabeled_index, positive_skipped + all_skipped,
                              path, False, positive_augmented)
    if path is not None:
        try:
            _write_cache(path, descriptors)
        except OSError:
            descriptors.cache_path = None
    return descriptors


# Images per saved part of the pool's descriptors (rounded to whole batches): an interrupted
# extraction loses at most this much work, and each part costs one DataLoader start-up.
DESCRIPTOR_PART_IMAGES = 8192


def _parts_folder(cache_path: Path, *, keep: bool) -> Path | None:
    """``<key>.parts/`` beside the cache entry, emptied unless ``keep``; None when it cannot be
    made (a read-only cache: extraction then simply cannot resume)."""
    parts = cache_path.with_name(cache_path.stem + ".parts")
    if not keep:
        shutil.rmtree(parts, ignore_errors=True)
    try:
        parts.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return parts


def extract_descriptors_in_parts(
    extractor: MultiScaleExtractor,
    paths: Sequence[Path],
    preprocess: Preprocess,
    *,
    parts: Path | None,
    device: torch.device,
    batch_size: int = 512,
    workers: int = 0,
    skipped: list[SkippedFile] | None = None,
    progress: ProgressCallback = no_progress,
    progress_offset: int = 0,
    progress_total: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`extract_descriptors`, saving each part of :data:`DESCRIPTOR_PART_IMAGES` images to
    ``parts`` (atomically) as soon as it is done, and loading the parts already there instead of
    extracting them. Parts are whole batches starting at multiples of the batch size, so the
    descriptors are the same bits as one uninterrupted pass. ``parts`` None: one plain pass.

    Returns ``(index (N',) int64, descriptors (N', C) float32)`` as :func:`extract_descriptors`.
    """
    if parts is None:
        return extract_descriptors(extractor, paths, preprocess, device=device, batch_size=batch_size,
                                   workers=workers, skipped=skipped, progress=progress,
                                   progress_offset=progress_offset, progress_total=progress_total)
    total = progress_total if progress_total is not None else len(paths)
    size = batch_size * max(1, round(DESCRIPTOR_PART_IMAGES / batch_size))
    descriptors = torch.empty(len(paths), extractor.channels)
    kept = torch.zeros(len(paths), dtype=torch.bool)
    for start in range(0, len(paths), size):
        chunk = paths[start:start + size]
        part = parts / f"unlabeled-{start:010d}-{len(chunk)}.safetensors"
        loaded = _read_part(part, extractor.channels)
        if loaded is None:
            part_skipped: list[SkippedFile] = []
            index, values = extract_descriptors(extractor, chunk, preprocess, device=device, batch_size=batch_size,
                                                workers=workers, skipped=part_skipped, progress=progress,
                                                progress_offset=progress_offset + start, progress_total=total)
            _write_part(part, index, values, part_skipped)
        else:
            index, values, part_skipped = loaded
            progress("extract", progress_offset + start + len(chunk), total, cached=1)
        descriptors[index + start] = values
        kept[index + start] = True
        if skipped is not None:
            skipped.extend(part_skipped)
    index = kept.nonzero().flatten()
    return index, (descriptors if len(index) == len(paths) else descriptors[index])


def _read_part(path: Path, channels: int) -> tuple[torch.Tensor, torch.Tensor, list[SkippedFile]] | None:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            index, values = handle.get_tensor("index"), handle.get_tensor("descriptors")
        skipped = [SkippedFile(**item) for item in json.loads(metadata.get("skipped", "[]"))]
    except (SafetensorError, OSError, KeyError, ValueError, TypeError):
        return None  # a damaged part is extracted again
    if values.ndim != 2 or values.shape[1] != channels or len(index) != len(values):
        return None
    return index, values, skipped


def _write_part(path: Path, index: torch.Tensor, values: torch.Tensor, skipped: list[SkippedFile]) -> None:
    from safetensors.torch import save_file

    try:
        tmp = temporary_path_beside(path)
    except OSError:
        return  # parts are a shortcut: without them the run goes on, only resuming starts over
    try:
        save_file({"index": index.contiguous(), "descriptors": values.contiguous()}, str(tmp),
                  metadata={"skipped": json.dumps([asdict(s) for s in skipped])})
        os.replace(tmp, path)
    except OSError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


# --- PU training --------------------------------------------------------------------------------


def _optimizer(parameters: Any, options: SelectorOptions, lr: float | None = None) -> torch.optim.Optimizer:
    lr = options.lr if lr is None else lr
    if options.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=options.weight_decay)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=options.weight_decay)


def _positive_per_batch(options: SelectorOptions, unlabeled_batch: int) -> int:
    return options.positive_per_batch or max(1, unlabeled_batch // 4)


def _risk(scores_p: torch.Tensor, scores_u: torch.Tensor, options: SelectorOptions) -> Any:
    return nnpu_risk(scores_p, scores_u, options.class_prior, loss=options.loss, beta=options.beta,
                     gamma=options.gamma, non_negative=options.risk == "nnpu")


def _train_head_member(
    head: AttentionScoreHead,
    positive: torch.Tensor,
    unlabeled: torch.Tensor,
    options: SelectorOptions,
    generator: torch.Generator,
    on_step: Callable[[int, int], None],
) -> list[dict[str, float]]:
    """Train one head on standardised descriptors; returns per-epoch mean risks."""
    positive = head.standardize(positive)
    unlabeled = head.standardize(unlabeled)
    steps_per_epoch = max(1, math.ceil(len(unlabeled) / options.train_batch_size))
    total_steps = steps_per_epoch * options.epochs
    optimizer = _optimizer(head.parameters(), options)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    n_p = _positive_per_batch(options, options.train_batch_size)
    history = []
    step = 0
    head.train()
    for epoch in range(options.epochs):
        order = torch.randperm(len(unlabeled), generator=generator)
        sums = {"risk": 0.0, "positive_risk": 0.0, "negative_risk": 0.0, "ascent_steps": 0.0}
        for start in range(0, len(order), options.train_batch_size):
            batch_u = unlabeled[order[start:start + options.train_batch_size]]
            # P is tiny: resample with replacement and jitter, so no step sees the same few points.
            draw = torch.randint(len(positive), (n_p,), generator=generator)
            batch_p = positive[draw] + options.positive_noise * torch.randn(n_p, positive.shape[1], generator=generator)
            result = _risk(head.forward_standardized(batch_p), head.forward_standardized(batch_u), options)
            optimizer.zero_grad(set_to_none=True)
            result.objective.backward()
            optimizer.step()
            schedule.step()
            step += 1
            sums["risk"] += float(result.risk)
            sums["positive_risk"] += float(result.positive_risk)
            sums["negative_risk"] += float(result.negative_risk)
            sums["ascent_steps"] += float(result.ascent)
            on_step(step, total_steps)
        history.append({"epoch": epoch + 1, **{k: v / steps_per_epoch if k != "ascent_steps" else v for k, v in sums.items()}})
    head.eval()
    return history


def train_frozen(
    positive: torch.Tensor,
    unlabeled: torch.Tensor,
    options: SelectorOptions,
    *,
    progress: ProgressCallback = no_progress,
    state_path: Path | None = None,
) -> tuple[ScoreEnsemble, list[dict[str, float]]]:
    """Train the gate + head (an ensemble of ``options.ensemble`` members) on frozen descriptors.

    Each member draws from its own seeded generator, so members are independent: with
    ``state_path``, every finished member is saved there (atomically) and members already saved
    are loaded instead of trained, which makes an interrupted training resumable with the same
    result.

    Args:
        positive: (N_P, C) float32 descriptors of the labeled positives.
        unlabeled: (N_U, C) float32 descriptors of the pool.
        state_path: where finished members are kept (None: nowhere).

    Returns:
        The ensemble (eval mode) and one history entry per epoch, averaged over members.

    Raises:
        NoImagesError: no readable positive or unlabeled image.
    """
    if len(positive) == 0 or len(unlabeled) == 0:
        raise NoImagesError("no readable positive or unlabeled image left to train the selector on")
    members = []
    histories = []
    finished = _read_training_state(state_path) if state_path is not None else {}
    steps = options.epochs * max(1, math.ceil(len(unlabeled) / options.train_batch_size))
    for member in range(options.ensemble):
        generator = torch.Generator().manual_seed(options.seed * 1000 + member)
        torch.manual_seed(options.seed * 1000 + member)  # layer initialisation
        head = AttentionScoreHead(positive.shape[1], reduction=options.reduction, attention=options.attention)
        head.set_statistics(unlabeled)

        def on_step(step: int, _total: int, member: int = member) -> None:
            progress("train", member * steps + step, options.ensemble * steps)

        saved = finished.get(member)
        if saved is not None and _load_member(head, saved["head"]):
            histories.append(saved["history"])
            progress("train", (member + 1) * steps, options.ensemble * steps, cached=1)
        else:
            histories.append(_train_head_member(head, positive, unlabeled, options, generator, on_step))
            finished[member] = {"head": head.state_dict(), "history": histories[-1]}
            if state_path is not None:
                _write_training_state(state_path, finished)
        members.append(head.eval())
    history = [
        {key: sum(h[epoch][key] for h in histories) / len(histories) for key in histories[0][epoch]}
        for epoch in range(options.epochs)
    ]
    return ScoreEnsemble(members).eval(), history


# --- resumable training state (frozen mode) ------------------------------------------------------
# Plain tensors, numbers and dicts only, so torch.load(weights_only=True) reads them.

TRAINING_STATE_FORMAT = "pucli-selector-state"
TRAINING_STATE_VERSION = 1


def training_state_path(descriptor_cache: Path, options: SelectorOptions) -> Path:
    """Where :func:`train_frozen` keeps finished members for these descriptors and options:
    ``cache_dir()/selector-runs/<key>.pt``; the key changes with any option but the budget and
    the graph smoothing (which only act on the trained heads' scores)."""
    after_training = {"budget", "graph_neighbors", "graph_alpha", "graph_steps"}
    settings = {k: v for k, v in asdict(options).items() if k not in after_training}
    text = json.dumps({"descriptors": descriptor_cache.stem, "options": settings}, sort_keys=True, default=str)
    return cache_dir() / "selector-runs" / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.pt"


def _read_training_state(path: Path) -> dict[int, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != TRAINING_STATE_FORMAT or state.get("format_version") != TRAINING_STATE_VERSION:
            return {}
        return {int(k): v for k, v in state["members"].items()}
    except Exception:  # noqa: BLE001 - a damaged state only means training those members again
        return {}


def _write_training_state(path: Path, members: dict[int, dict[str, Any]]) -> None:
    state = {"format": TRAINING_STATE_FORMAT, "format_version": TRAINING_STATE_VERSION,
             "members": {str(k): v for k, v in members.items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path_beside(path)
    except OSError:
        return  # a read-only cache: training goes on, only resuming starts over
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _load_member(head: AttentionScoreHead, state: dict[str, torch.Tensor]) -> bool:
    try:
        head.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError):
        return False
    return True


# --- class prior ----------------------------------------------------------------------------------

#: Epochs of each cross-fitted nnPU head in the prior's refinement pass (single heads, no ensemble).
PRIOR_REFINE_EPOCHS = 10


def _nnpu_fit(options: SelectorOptions) -> Callable[[float], Fit]:
    """The refinement scorer of the prior estimate: one nnPU head with the selector's default
    settings, trained with the current estimate as its class prior."""

    def with_prior(class_prior: float) -> Fit:
        def fit(positive: torch.Tensor, unlabeled: torch.Tensor, seed: int) -> nn.Module:
            # The selector's defaults, not the run's training options, so `pucli prior` and
            # `pucli select --prior auto` give the same estimate whatever else select is told.
            member_options = SelectorOptions(class_prior=class_prior, ensemble=1, epochs=PRIOR_REFINE_EPOCHS,
                                             scales=options.scales, seed=seed)
            return train_frozen(positive, unlabeled, member_options)[0]

        return fit

    return with_prior


def estimate_prior_from_descriptors(descriptors: Descriptors, options: SelectorOptions, *,
                                    positive_labels: Sequence[int] | None = None,
                                    progress: ProgressCallback = no_progress) -> PriorEstimate:
    """The class prior of the pool, estimated from frozen descriptors (:mod:`pucli.prior`).

    Best-bin estimation on cross-fitted P-vs-U logistic scores, refined once with cross-fitted
    nnPU heads trained at that first estimate (Garg et al. 2021's alternation of estimation and
    PU training). The augmented copies of the positives, if any, join the training folds only.
    ``positive_labels`` (the class of each input positive, in input order) stratify the folds.

    Raises:
        NoImagesError: fewer than 2 readable positives, or no unlabeled image.
    """
    augmented = None
    if len(descriptors.positive_augmented):
        augmented = descriptors.positive_augmented.view(-1, len(descriptors.positive), descriptors.positive.shape[1])
    labels = None
    if positive_labels is not None:
        labels = torch.as_tensor(list(positive_labels), dtype=torch.long)[descriptors.positive_index]
    return estimate_class_prior(descriptors.positive, descriptors.unlabeled, seed=options.seed,
                                refine_fit=_nnpu_fit(options), positive_augmented=augmented, positive_labels=labels,
                                progress=progress)


@dataclass
class PriorResult:
    """What :func:`estimate_prior` produced: the estimate, the unreadable files left out, seconds
    per stage (``extract``, ``prior``) and the descriptor cache used."""

    estimate: PriorEstimate
    skipped: list[SkippedFile]
    timings: dict[str, float]
    cache_path: Path | None


def estimate_prior(
    teacher: LoadedModel,
    positive_paths: Sequence[Path],
    unlabeled_paths: Sequence[Path],
    *,
    seed: int = 0,
    scales: Scales = Scales(),
    augment_positives: int | None = None,
    device: torch.device | None = None,
    batch_size: int = 256,
    workers: int = 0,
    use_cache: bool = True,
    positive_labels: Sequence[int] | None = None,
    progress: ProgressCallback = no_progress,
) -> PriorResult:
    """Estimate the class prior of ``unlabeled_paths`` (what ``pucli prior`` runs).

    Extracts (or loads from the cache shared with ``pucli select``) the frozen descriptors, then
    :func:`estimate_prior_from_descriptors` with the selector's default options.
    ``positive_labels`` (class of each positive) stratify the cross-fitting folds.

    Raises:
        NoImagesError: fewer than 2 readable positives, or no readable unlabeled image.
    """
    device = device or torch.device("cpu")
    options = SelectorOptions(class_prior=None, augment_positives=augment_positives, scales=scales, seed=seed,
                              batch_size=batch_size)
    timings: dict[str, float] = {}
    extractor = MultiScaleExtractor(teacher.model, scales).to(device)
    augmentation = resolve_positive_augmentation(teacher.config, augment_positives, len(positive_paths), seed)
    with _timed(timings, "extract"):
        descriptors = load_or_extract_descriptors(
            teacher, extractor, list(positive_paths), list(unlabeled_paths), Preprocess(teacher.config),
            scales=scales, device=device, batch_size=batch_size, workers=workers, use_cache=use_cache,
            augmentation=augmentation, progress=progress,
            # Reuse, never discard, the saved parts of an interrupted select on the same inputs:
            # they are the same bits this call would extract.
            resume=use_cache,
        )
    extractor.cpu()
    if descriptors is None:
        raise UsageError("pucli prior runs in one process: launch it without torchrun")
    with _timed(timings, "prior"):
        estimate = estimate_prior_from_descriptors(descriptors, options, positive_labels=positive_labels,
                                                   progress=progress)
    return PriorResult(estimate, descriptors.skipped, timings, descriptors.cache_path)


def train_finetune(
    net: PUSelectorNet,
    positive_paths: Sequence[Path],
    unlabeled_paths: Sequence[Path],
    preprocess: Preprocess,
    options: SelectorOptions,
    *,
    device: torch.device,
    workers: int = 0,
    skipped: list[SkippedFile] | None = None,
    progress: ProgressCallback = no_progress,
) -> list[dict[str, float]]:
    """Train extractor + head end to end on streamed images (the paper's code path).

    P (tiny) is decoded once and held; U is streamed in a seeded shuffled order every epoch, so
    memory stays flat in the pool size. The backbone learns at a tenth of the head's rate, to
    move gently away from the teacher it starts from. Returns per-epoch mean risks.

    Raises:
        NoImagesError: no readable positive image.
    """
    generator = torch.Generator().manual_seed(options.seed)
    positive_set: list[torch.Tensor] = []
    for batch in iterate_batches(ImageDataset(positive_paths, preprocess), batch_size=options.batch_size,
                                 workers=0, skipped=skipped):
        positive_set.append(batch.images)
    if not positive_set:
        raise NoImagesError("no readable positive image to fine-tune the selector on")
    positive_images = torch.cat(positive_set)
    # Statistics for the standardisation, from a seeded sample of the pool through the start backbone.
    sample = torch.randperm(len(unlabeled_paths), generator=generator)[:4096].sort().values
    _, sample_descriptors = extract_descriptors(net.extractor, [unlabeled_paths[int(i)] for i in sample],
                                                preprocess, device=device, batch_size=options.batch_size,
                                                workers=workers, progress=progress, stage="statistics")
    net.head.set_statistics(sample_descriptors.to(device))
    optimizer = torch.optim.AdamW(
        [{"params": net.extractor.parameters(), "lr": options.lr * 0.1},
         {"params": net.head.parameters(), "lr": options.lr}],
        weight_decay=options.weight_decay,
    ) if options.optimizer == "adam" else torch.optim.SGD(
        [{"params": net.extractor.parameters(), "lr": options.lr * 0.1},
         {"params": net.head.parameters(), "lr": options.lr}],
        momentum=0.9, weight_decay=options.weight_decay,
    )
    steps_per_epoch = max(1, math.ceil(len(unlabeled_paths) / options.batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps_per_epoch * options.epochs)
    n_p = _positive_per_batch(options, options.batch_size)
    history = []
    step = 0
    for epoch in range(options.epochs):
        net.train()
        order = torch.randperm(len(unlabeled_paths), generator=generator)
        epoch_paths = [unlabeled_paths[int(i)] for i in order]
        sums = {"risk": 0.0, "positive_risk": 0.0, "negative_risk": 0.0, "ascent_steps": 0.0}
        batches = 0
        for batch in iterate_batches(ImageDataset(epoch_paths, preprocess), batch_size=options.batch_size,
                                     workers=workers, skipped=skipped if epoch == 0 else None):
            draw = torch.randint(len(positive_images), (n_p,), generator=generator)
            images_p = preprocess.normalize(positive_images[draw].to(device))
            images_u = preprocess.normalize(batch.images.to(device))
            scores = net(torch.cat([images_p, images_u]))
            result = _risk(scores[:n_p], scores[n_p:], options)
            optimizer.zero_grad(set_to_none=True)
            result.objective.backward()
            optimizer.step()
            schedule.step()
            step += 1
            batches += 1
            for key, value in (("risk", result.risk), ("positive_risk", result.positive_risk),
                               ("negative_risk", result.negative_risk), ("ascent_steps", result.ascent)):
                sums[key] += float(value)
            progress("train", step, steps_per_epoch * options.epochs, risk=float(result.risk))
        batches = max(1, batches)
        history.append({"epoch": epoch + 1, **{k: v / batches if k != "ascent_steps" else v for k, v in sums.items()}})
    net.eval()
    return history


# --- scoring and selection ------------------------------------------------------------------------


@torch.inference_mode()
def score_images(
    net: PUSelectorNet,
    paths: Sequence[Path],
    preprocess: Preprocess,
    *,
    device: torch.device,
    batch_size: int = 512,
    workers: int = 0,
    skipped: list[SkippedFile] | None = None,
    progress: ProgressCallback = no_progress,
    descriptors: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stream ``paths`` through the selector with the deterministic evaluation transform.

    Returns ``(index (N',) int64, scores (N',) float32)`` for the readable images; memory holds
    one batch of pixels at a time. With ``descriptors`` (a list), the extractor's (B, C) float32
    output of the readable images is appended to it as one (N', C) tensor (what graph smoothing
    needs after fine-tuning), filled in place rather than concatenated, so it is held once.
    """
    net.eval()
    indices: list[torch.Tensor] = []
    scores: list[torch.Tensor] = []
    buffer: torch.Tensor | None = None
    filled = 0
    started = time.perf_counter()
    for batch in iterate_batches(ImageDataset(paths, preprocess), batch_size=batch_size, workers=workers,
                                 pin_memory=device.type == "cuda", skipped=skipped):
        features = net.extractor(preprocess.normalize(batch.images.to(device, non_blocking=True)))
        scores.append(net.head(features).float().cpu())
        if descriptors is not None:
            if buffer is None:
                buffer = torch.empty(len(paths), features.shape[1])
            buffer[filled:filled + len(features)] = features.float().cpu()
            filled += len(features)
        indices.append(batch.indices)
        done = int(batch.indices[-1]) + 1
        elapsed = time.perf_counter() - started
        progress("score", done, len(paths), img_s=done / elapsed if elapsed > 0 else 0.0)
    if descriptors is not None and buffer is not None:
        descriptors.append(buffer[:filled])
    if not scores:
        return torch.empty(0, dtype=torch.int64), torch.empty(0)
    return torch.cat(indices), torch.cat(scores)


def select_indices(scores: torch.Tensor, budget: int | None = None) -> torch.Tensor:
    """The selection rule of Xu et al. 2019, Sec. 2.3, as a (N,) bool mask over ``scores`` (N,).

    PU-s1 (``budget`` None): ``F(x) > 0``. PU-s2: the ``budget`` highest scores (all of them when
    the pool is smaller); ties are broken by position, so the rule is deterministic.
    """
    if budget is None:
        return scores > 0
    keep = torch.zeros(len(scores), dtype=torch.bool)
    if len(scores):
        # A stable descending sort breaks ties by pool order.
        order = torch.sort(scores, descending=True, stable=True).indices
        keep[order[: min(budget, len(scores))]] = True
    return keep


# --- the whole stage --------------------------------------------------------------------------------


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def run_selection(
    teacher: LoadedModel,
    positive_paths: Sequence[Path],
    unlabeled_paths: Sequence[Path],
    options: SelectorOptions,
    *,
    device: torch.device | None = None,
    workers: int = 0,
    use_cache: bool = True,
    progress: ProgressCallback = no_progress,
    resume: bool = False,
    positive_labels: Sequence[int] | None = None,
) -> SelectionResult:
    """Stage 1 end to end: descriptors (or fine-tuning), nnPU training, scoring, selection.

    Args:
        teacher: the loaded teacher (its weights initialise the backbone; never modified).
        positive_paths: the labeled positives P (their class labels are not needed here).
        unlabeled_paths: the pool U, in a fixed order.
        options: hyper-parameters; ``options.seed`` makes the run reproducible.
        device: where the networks run (CPU by default).
        workers: data-loading processes for the pool.
        use_cache: frozen mode reads/writes the descriptor cache.
        resume: continue an interrupted run: reuse the parts of the pool's descriptors and the
            ensemble members it finished (frozen mode, with the cache). Without it they are
            discarded and the run starts over. Either way the result is the same bits.
        positive_labels: the teacher class of each positive (input order); used only to
            stratify the folds of the class-prior estimate when ``options.class_prior`` is None.

    Raises:
        NoImagesError: no readable positive or unlabeled image.
        UsageError: the teacher exposes no feature stages; ``resume`` with fine-tuning or
            without the cache.
    """
    import copy
    import dataclasses

    if resume and (options.finetune or not use_cache):
        raise UsageError("--resume continues from the descriptor cache and saved ensemble members: "
                         "it cannot be used with --finetune or --no-cache")
    if options.finetune and distributed.is_distributed():
        raise UsageError("--finetune trains in one process: run it without torchrun, or drop --finetune")

    device = device or torch.device("cpu")
    preprocess = Preprocess(teacher.config)
    timings: dict[str, float] = {}
    positive_paths, unlabeled_paths = list(positive_paths), list(unlabeled_paths)
    prior_estimate = None
    if options.class_prior is None and options.finetune:
        # Fine-tuning has no frozen descriptors of its own: estimate on those of the start backbone.
        prior_result = estimate_prior(teacher, positive_paths, unlabeled_paths, seed=options.seed,
                                      scales=options.scales, device=device, batch_size=options.batch_size,
                                      workers=workers, use_cache=use_cache, positive_labels=positive_labels,
                                      progress=progress)
        prior_estimate = prior_result.estimate
        timings.update(prior_result.timings)
        options = dataclasses.replace(options, class_prior=prior_estimate.class_prior)
    if options.finetune:
        torch.manual_seed(options.seed)
        extractor = MultiScaleExtractor(copy.deepcopy(teacher.model), options.scales)
        net = PUSelectorNet(extractor, AttentionScoreHead(extractor.channels, reduction=options.reduction,
                                                          attention=options.attention)).to(device)
        skipped: list[SkippedFile] = []
        with _timed(timings, "train"):
            history = train_finetune(net, positive_paths, unlabeled_paths, preprocess, options, device=device,
                                     workers=workers, skipped=skipped, progress=progress)
        streamed: list[torch.Tensor] | None = [] if options.graph_neighbors > 0 else None
        with _timed(timings, "score"):
            index, scores = score_images(net, unlabeled_paths, preprocess, device=device,
                                         batch_size=options.batch_size, workers=workers, progress=progress,
                                         descriptors=streamed)
        pool_descriptors = streamed[0] if streamed else None
        del streamed
        pool_graph = None
        positive_names = {str(p) for p in positive_paths}
        positive_count = len(positive_paths) - sum(1 for s in skipped if s.path in positive_names)
        network: nn.Module = net.cpu()
        cache_path, from_cache = None, False
        augmentation, augmented_count = None, 0
    else:
        extractor = MultiScaleExtractor(teacher.model, options.scales).to(device)
        augmentation = resolve_positive_augmentation(teacher.config, options.augment_positives,
                                                     len(positive_paths), options.seed)
        with _timed(timings, "extract"):
            descriptors = load_or_extract_descriptors(
                teacher, extractor, positive_paths, unlabeled_paths, preprocess, scales=options.scales,
                device=device, batch_size=options.batch_size, workers=workers, use_cache=use_cache,
                augmentation=augmentation, progress=progress, resume=resume,
            )
        pool_graph = None
        if options.graph_neighbors > 0 and distributed.is_distributed():
            # The graph needs only the descriptors: every rank searches its share of it now, before
            # rank 0 trains the head alone.
            with _timed(timings, "graph"):
                pool_graph = _pool_graph(descriptors.unlabeled if descriptors is not None else None, options,
                                         device=device, use_cache=use_cache, progress=progress)
        if descriptors is None:  # a rank other than 0 under torchrun: rank 0 trains and scores alone
            return _share_selection(None, None, unlabeled_paths)
        extractor.cpu()
        for images, paths, option in ((descriptors.positive, positive_paths, "--positive"),
                                      (descriptors.unlabeled, unlabeled_paths, "--unlabeled")):
            if len(images) == 0:
                names = {str(p) for p in paths}
                first = next((s for s in descriptors.skipped if s.path in names), None)
                raise NoImagesError(f"none of the {len(paths)} images of {option} could be read"
                                    + (f" (first: {first.path}: {first.reason})" if first else "")
                                    + f"; check {option}")
        if options.class_prior is None:
            with _timed(timings, "prior"):
                prior_estimate = estimate_prior_from_descriptors(descriptors, options, positive_labels=positive_labels,
                                                                 progress=progress)
            options = dataclasses.replace(options, class_prior=prior_estimate.class_prior)
        state_path = training_state_path(descriptors.cache_path, options) if descriptors.cache_path else None
        if state_path is not None and not resume:
            state_path.unlink(missing_ok=True)
        with _timed(timings, "train"):
            head, history = train_frozen(descriptors.positive_set, descriptors.unlabeled, options, progress=progress,
                                         state_path=state_path)
        with _timed(timings, "score"):
            # The descriptors were computed with the evaluation transform, so the head on them is
            # exactly the streamed score of each image; no second pass over the pool is needed.
            with torch.inference_mode():
                scores = torch.cat([head(chunk) for chunk in descriptors.unlabeled.split(65536)]) \
                    if len(descriptors.unlabeled) else torch.empty(0)
            progress("score", len(unlabeled_paths), len(unlabeled_paths))
        index = descriptors.unlabeled_index
        pool_descriptors = descriptors.unlabeled
        skipped = descriptors.skipped
        positive_count = len(descriptors.positive)
        network = head
        cache_path, from_cache = descriptors.cache_path, descriptors.from_cache
        augmented_count = len(descriptors.positive_augmented)
    if len(index) == 0:
        raise NoImagesError("no image of the unlabeled pool could be read; check --unlabeled")
    graph_metadata: dict[str, Any] = {"neighbors": 0}
    head_scores = scores
    if options.graph_neighbors > 0 and pool_descriptors is not None and len(scores) > 1:
        with _timed(timings, "graph"):
            if pool_graph is None:
                pool_graph = _pool_graph(pool_descriptors, options, device=device, use_cache=use_cache,
                                         progress=progress)
            assert pool_graph is not None
            scores, graph_metadata = _smooth_over_graph(head_scores, pool_graph, options)
        graph_metadata["changed"] = int((select_indices(scores, options.budget)
                                         != select_indices(head_scores, options.budget)).sum())
    selected = select_indices(scores, options.budget)
    paths = [unlabeled_paths[int(i)] for i in index]
    counts = {
        "positive": positive_count,
        "unlabeled": len(paths),
        "selected": int(selected.sum()),
        "skipped": len(skipped),
    }
    result = SelectionResult(
        paths=paths, scores=scores, selected=selected, network=network, history=history, timings=timings,
        skipped=skipped, counts=counts, cache_path=cache_path, from_cache=from_cache,
        metadata={"mode": "finetune" if options.finetune else "frozen", "channels": extractor.channels,
                  "scale_channels": extractor.scale_channels, "scales": options.scales.describe(),
                  "positive_augmentation": augmentation.describe() if augmentation is not None else "none",
                  "positive_augmented": augmented_count, "graph": graph_metadata},
        class_prior=options.class_prior, prior_estimate=prior_estimate, head_scores=head_scores,
    )
    return _share_selection(result, index, unlabeled_paths)


# --- graph smoothing (transductive) ---------------------------------------------------------------

GRAPH_CACHE_VERSION = 1


def _graph_cache_file(features: torch.Tensor, neighbors: int) -> Path:
    digest = hashlib.sha256()
    digest.update(f"v{GRAPH_CACHE_VERSION}-k{neighbors}-{tuple(features.shape)}".encode())
    digest.update(memoryview(features.detach().cpu().contiguous().numpy()))  # no copy of the bytes
    return cache_dir() / "graphs" / f"{digest.hexdigest()[:32]}.safetensors"


def _read_graph_cache(path: Path, count: int, neighbors: int) -> torch.Tensor | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        graph = load_file(str(path))["neighbors"]
    except (SafetensorError, OSError, KeyError, ValueError, TypeError):
        return None  # a damaged entry is only a lost shortcut: rebuild and overwrite it
    if (tuple(graph.shape) != (count, min(neighbors, count - 1)) or graph.dtype != torch.int64
            or (graph.numel() and (int(graph.min()) < 0 or int(graph.max()) >= count))):
        return None
    return graph


def _write_graph_cache(path: Path, graph: torch.Tensor) -> None:
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path_beside(path)
    except OSError:
        return  # a read-only cache only costs the next run a rebuild
    try:
        save_file({"neighbors": graph.contiguous()}, str(tmp), metadata={"format_version": str(GRAPH_CACHE_VERSION)})
        os.replace(tmp, path)
    except OSError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class _PoolGraph:
    """The pool's k-NN graph ((N, k) int64), the width of the space it was searched in, and
    whether it came from the cache."""

    neighbors: torch.Tensor
    channels: int
    from_cache: bool


def _pool_graph(pool_descriptors: torch.Tensor | None, options: SelectorOptions, *, device: torch.device,
                use_cache: bool, progress: ProgressCallback) -> _PoolGraph | None:
    """The pool's k-NN graph (:mod:`pucli.graph`), from the cache when these exact features were seen.

    Under torchrun every rank must call this (rank 0 with the gathered descriptors, the others
    with None): rank 0 shares the search features, each rank searches a contiguous run of whole
    blocks of rows (the blocks of a one-process search, so the same bits), and the rows are
    gathered on rank 0, which gets the graph; the other ranks get None. One process: the search
    runs here. None also when the pool has fewer than 2 images (nothing to smooth).
    """
    main = distributed.is_main()
    features = graph_features(pool_descriptors, seed=options.seed) if pool_descriptors is not None else None
    path = cached = None
    if features is not None and len(features) > 1:
        path = _graph_cache_file(features, options.graph_neighbors) if use_cache else None
        cached = _read_graph_cache(path, len(features), options.graph_neighbors) if path is not None else None
    # Rank 0 decides: (count, channels) to search, or None when there is nothing to build.
    plan = (tuple(features.shape) if features is not None and len(features) > 1 and cached is None else None)
    plan = distributed.broadcast_object(plan) if distributed.is_distributed() else plan
    if cached is not None:
        progress("graph", len(cached), len(cached), cached=1)
        return _PoolGraph(cached, int(features.shape[1]), True)  # type: ignore[union-attr]
    if plan is None:
        return None
    count, channels = plan
    if distributed.is_distributed():
        mine = features if main else torch.empty(0, channels)
        _, shared = distributed.gather_rows(torch.arange(len(mine), dtype=torch.int64), mine, to_all=True)
        first, last = distributed.batch_block(count, block_rows(count))
        part = knn_graph(shared, options.graph_neighbors, device=device, rows=(first, last),
                         progress=progress if main else no_progress)
        gathered = distributed.gather_rows(torch.arange(first, last, dtype=torch.int64), part)
        del shared
        if not main:
            return None
        assert gathered is not None
        graph = gathered[1]
    else:
        graph = knn_graph(features, options.graph_neighbors, device=device, progress=progress)  # type: ignore[arg-type]
    if path is not None:
        _write_graph_cache(path, graph)
    return _PoolGraph(graph, channels, False)


def _smooth_over_graph(scores: torch.Tensor, graph: _PoolGraph, options: SelectorOptions) -> tuple[torch.Tensor, dict[str, Any]]:
    """Head scores (N,) -> graph-smoothed scores (N,) with the same count above zero (:mod:`pucli.graph`)."""
    smoothed = smooth_scores(scores, graph.neighbors, alpha=options.graph_alpha, steps=options.graph_steps)
    return smoothed, {"neighbors": int(graph.neighbors.shape[1]), "alpha": options.graph_alpha,
                      "steps": options.graph_steps, "channels": graph.channels, "cache_hit": graph.from_cache}


def _share_selection(result: SelectionResult | None, index: torch.Tensor | None,
                     unlabeled_paths: Sequence[Path]) -> SelectionResult:
    """Under torchrun, rank 0's result on every rank (each rebuilds the paths from the pool and
    ``index``, the pool positions of the scored images, rather than receiving them). One process:
    ``result`` itself."""
    import dataclasses

    if not distributed.is_distributed():
        assert result is not None
        return result
    sent = (dataclasses.replace(result, paths=[]), index) if distributed.is_main() else None
    shared, shared_index = distributed.broadcast_object(sent)
    if distributed.is_main():
        assert result is not None
        return result
    shared.paths = [unlabeled_paths[int(i)] for i in shared_index]
    return shared


def save_selector(result: SelectionResult, options: SelectorOptions, path: str | os.PathLike[str],
                  teacher: LoadedModel) -> Path:
    """Write the trained selector's weights to ``path`` (safetensors, atomic).

    The metadata records the format version, mode, teacher architecture, descriptor layout and
    options, so the file says what produced it.

    Raises:
        DataError: ``path`` does not end in .safetensors.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if not path.name.endswith(".safetensors"):
        raise DataError(f"selector weights are safetensors: {path} must end in .safetensors")
    tensors = {k: v.detach().cpu().contiguous() for k, v in result.network.state_dict().items()}
    options_dict = asdict(options)
    options_dict["class_prior"] = result.class_prior if result.class_prior is not None else options.class_prior
    metadata = {
        "format_version": str(SELECTOR_FORMAT_VERSION),
        "teacher_architecture": teacher.config.architecture,
        "selector": json.dumps({**result.metadata, "options": options_dict}, default=str),
    }
    tmp = temporary_path_beside(path)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
