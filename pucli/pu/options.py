"""The PU selector's options, validated once (no torch import: the CLI builds them before loading it).

Every check of a single option lives in :meth:`SelectorOptions.__post_init__`; errors name the
parameter (:class:`pucli.errors.OptionError`), and the CLI maps parameters to its flags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pucli.errors import OptionError, UsageError

__all__ = ["OPTIMIZERS", "RANKINGS", "RISKS", "SURROGATES", "Scales", "SelectorOptions", "options_record", "parse_taps"]

OPTIMIZERS = ("adamw", "sgd")
RANKINGS = ("auto", "propagation", "nnpu")
RISKS = ("nnpu", "upu")
SURROGATES = ("sigmoid", "logistic")


@dataclass(frozen=True)
class Scales:
    """Which of the backbone's outputs make the multi-scale descriptor ``o`` (Eq. 4).

    Attributes:
        stages: indices into the model's feature stages (timm ``feature_info`` order; negative
            counts from the end); None takes every stage.
        pre_logits: also append the penultimate features ``forward_head(x, pre_logits=True)``
            as the last scale (see the module docstring for why).
        taps: the model's layers to tap instead, by module or FX node name (``layer1``,
            ``layer2``, ``layer3``); then exactly these, ``stages`` and ``pre_logits`` unused
            (:mod:`pucli.pu.taps`). None: timm's stages, or for a model without timm's feature
            API the stages torch.fx finds.
    """

    stages: tuple[int, ...] | None = None
    pre_logits: bool = True
    taps: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.taps is not None and (not self.taps or any(not name.strip() for name in self.taps)):
            raise OptionError("taps", ",".join(self.taps), "give layer names separated by commas, e.g. layer1,layer2,layer3")

    def describe(self) -> str:
        stages = "all" if self.stages is None else ",".join(str(s) for s in self.stages)
        taps = "" if self.taps is None else f";taps={','.join(self.taps)}"
        return f"stages={stages};pre_logits={int(self.pre_logits)}{taps}"


def parse_taps(text: str | None) -> tuple[str, ...] | None:
    """Layer names separated by commas (``"layer1,layer2,layer3"``) as :attr:`Scales.taps`; None
    (or blank) leaves the choice to the model (timm's stages, or those torch.fx finds)."""
    if text is None or not text.strip():
        return None
    return tuple(name.strip() for name in text.split(","))


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
        epoch_pool_max: at most this many pool descriptors per frozen-mode training epoch (and
            per epoch of the head's warm-up before fine-tuning): a larger pool contributes a fresh
            seeded random sample of this size to each epoch, so training costs the same from this
            size on (a million-image pool: 32 steps of 4,096 an epoch instead of 245); None sees
            the whole pool every epoch. Pools up to this size train exactly as without it.
        positive_per_batch: P samples drawn with replacement per mini-batch (the fixed P:U mix);
            None uses a quarter of the unlabeled batch.
        lr, weight_decay, optimizer: ``"adamw"`` (AdamW, as ``pucli distill`` spells it) or ``"sgd"``
            (momentum 0.9); cosine schedule.
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
            are smoothed (:mod:`pucli.pu.propagation`); 0 turns graph smoothing off (scores are the head's
            ``F(x)``).
        graph_alpha, graph_steps: label spreading's ``alpha`` and number of iterations.
        graph_exact_max: pools of up to this many images get the exact k-NN search, larger ones
            the approximate IVF-Flat index (faiss, the ``scale`` extra; :mod:`pucli.pu.neighbors`);
            0 searches every pool approximately.
        ranking: how the pool is ranked. ``"propagation"``: label propagation from the labeled
            positives over the k-NN graph of pool and positives (Zhou et al. 2003), PU-s1 keeping
            the top ``class_prior * N``; ``"nnpu"``: the nnPU head's ``F(x)`` smoothed over the
            pool's graph, PU-s1 keeping as many as ``F(x) > 0`` (the paper's rule); ``"auto"``
            (default): propagation when every class has at least 5 labeled positives
            (``pucli.pu.mixture_proportion.propagation_applies``, the rule of the class-prior
            estimate; resolved once, by :func:`pucli.pu.ranking.resolve_ranking`), else nnpu (with
            1-4 per class the seeds miss too much of each class; docs/benchmarks.md, "Pool grid"). Without the graph (``graph_neighbors`` 0) the head
            ranks either way.
        seed: seeds every random draw.
    """

    class_prior: float | None
    budget: int | None = None
    finetune: bool = False
    epochs: int = 20
    batch_size: int = 256
    train_batch_size: int = 4096
    epoch_pool_max: int | None = 131_072
    positive_per_batch: int | None = None
    lr: float = 0.03
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
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
    graph_exact_max: int = 200_000  # pucli.pu.neighbors.GRAPH_EXACT_MAX (not imported: it imports torch)
    seed: int = 0
    ranking: str = "auto"

    def __post_init__(self) -> None:
        """Raises OptionError naming the first parameter out of range (UsageError for a bad pair)."""
        checks = (
            ("class_prior", self.class_prior is None or 0.0 < self.class_prior < 1.0,
             "must be between 0 and 1 (exclusive), or auto"),
            ("budget", self.budget is None or self.budget >= 1, "must be >= 1 (the number of images to keep)"),
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("train_batch_size", self.train_batch_size >= 1, "must be >= 1"),
            ("epoch_pool_max", self.epoch_pool_max is None or self.epoch_pool_max >= 1,
             "must be >= 1 pool images per training epoch, or None for the whole pool every epoch"),
            ("positive_per_batch", self.positive_per_batch is None or self.positive_per_batch >= 1, "must be >= 1"),
            ("risk", self.risk in RISKS, "use nnpu or upu"),
            ("loss", self.loss in SURROGATES, "use sigmoid or logistic"),
            ("beta", self.beta >= 0.0, "must be >= 0"),
            ("gamma", 0.0 <= self.gamma <= 1.0, "must be in [0, 1]"),
            ("optimizer", self.optimizer in OPTIMIZERS, "use adamw or sgd"),
            ("ranking", self.ranking in RANKINGS, "use auto, propagation or nnpu"),
            ("ensemble", self.ensemble >= 1, "must be >= 1"),
            ("reduction", self.reduction >= 1, "must be >= 1"),
            ("augment_positives", self.augment_positives is None or self.augment_positives >= 0, "must be >= 0"),
            ("graph_neighbors", self.graph_neighbors >= 0, "must be >= 0 (0 turns it off)"),
            ("graph_alpha", 0.0 <= self.graph_alpha < 1.0, "must be in [0, 1)"),
            ("graph_steps", self.graph_steps >= 0, "must be >= 0"),
            ("graph_exact_max", self.graph_exact_max >= 0,
             "must be >= 0 (the largest pool that gets the exact neighbour search; 0: always approximate)"),
        )
        for parameter, ok, problem in checks:
            if not ok:
                raise OptionError(parameter, getattr(self, parameter), problem)
        if self.finetune and self.augment_positives:
            raise UsageError("augment_positives applies to frozen descriptors: drop it or finetune")


def options_record(options: SelectorOptions) -> dict[str, Any]:
    """``options`` as a plain dict (``dataclasses.asdict``), for files and cache keys; ``scales.taps``
    only when set, so what runs without taps writes and finds what it did before taps existed."""
    record = asdict(options)
    if record["scales"].get("taps") is None:
        del record["scales"]["taps"]
    return record
