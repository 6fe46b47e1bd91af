"""Structured channel pruning of a timm CNN, by Torch-Pruning (the ``compress`` extra).

Torch-Pruning (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023,
https://github.com/VainF/Torch-Pruning) traces the network into a dependency graph, groups the
channels that must go together (a conv's outputs, its BatchNorm, the next layer's inputs, every
layer a residual sum ties to them), ranks the groups by an importance and removes the least
important ``ratio`` of each layer's channels physically. pucli keeps Torch-Pruning's
``pruning_history()`` (which channels of which module went) so that a fresh timm model plus the
history rebuilds the pruned network exactly (:func:`pucli.compressed_files.replay_pruning`, beside
the file format); nothing is pickled.

Importances: ``group-norm`` (default; Torch-Pruning's ``GroupMagnitudeImportance(p=2)``: the L2
norm of each channel's weights summed over its whole group, normalised by the group mean) and
``magnitude`` (the L1 norm of the channel's weights in its own layer alone, as Li et al., "Pruning
Filters for Efficient ConvNets", ICLR 2017). The classifier is never pruned (its outputs are the
classes); ``ignore`` names more modules to keep whole.

Pruning leaves every BatchNorm with the statistics of the unpruned network: re-estimate them
(:mod:`pucli.compress.renorm`) before evaluating or distilling.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pucli.compressed_files import PruningHistory, torch_pruning
from pucli.errors import DataError, OptionError

__all__ = ["IMPORTANCES", "PruneOutcome", "check_importance", "check_ratio", "prune_channels"]

IMPORTANCES = ("group-norm", "magnitude")


@dataclass
class PruneOutcome:
    """What :func:`prune_channels` did: the ``history`` to save and the channels before/after of
    the layers it changed (``channels``: name -> (before, after), output channels)."""

    history: PruningHistory
    channels: dict[str, tuple[int, int]]


def check_ratio(ratio: float) -> float:
    """``ratio`` if it lies in (0, 1).

    Raises:
        OptionError: ``ratio`` outside (0, 1).
    """
    if not 0.0 < ratio < 1.0:
        raise OptionError("ratio", ratio, "must be in (0, 1), the share of each layer's channels to remove")
    return ratio


def check_importance(importance: str) -> str:
    """``importance`` if it is one of :data:`IMPORTANCES`.

    Raises:
        OptionError: any other name.
    """
    if importance not in IMPORTANCES:
        raise OptionError("importance", importance, f"choose one of {', '.join(IMPORTANCES)}")
    return importance


def prune_channels(
    model: nn.Module,
    input_size: tuple[int, int, int],
    *,
    ratio: float,
    importance: str = "group-norm",
    ignore: Sequence[str] = (),
    architecture: str = "the architecture",
) -> PruneOutcome:
    """Remove ``ratio`` of the output channels of every prunable layer of ``model`` (in place).

    Args:
        model: a timm CNN in eval mode; ``input_size`` (C, H, W) is its input, for tracing.
        ratio: share of each layer's channels to remove, in (0, 1).
        importance: one of :data:`IMPORTANCES`.
        ignore: module names kept whole, besides the classifier.

    Raises:
        UsageError: a bad ratio or importance, an ``ignore`` name the model lacks, Torch-Pruning
            missing.
        DataError: Torch-Pruning cannot prune ``architecture`` (tracing fails, the pruned network
            no longer runs or gives other output shapes, or nothing was prunable).
    """
    tp = torch_pruning()
    check_ratio(ratio)
    check_importance(importance)
    modules = dict(model.named_modules())
    ignored = [_classifier(model)]
    for name in ignore:
        if name not in modules:
            close = difflib.get_close_matches(name, list(modules), n=3)
            hint = f" (closest: {', '.join(close)})" if close else ""
            raise OptionError("ignore", name, f"the model has no module of that name{hint}")
        ignored.append(modules[name])
    scorer = (tp.importance.GroupMagnitudeImportance(p=2) if importance == "group-norm"
              else tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first", normalizer=None))
    example = torch.zeros(1, *input_size)
    with torch.no_grad():
        expected = tuple(model(example).shape)
    before = {name: _width(m) for name, m in model.named_modules() if _width(m) is not None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Torch-Pruning warns about every unwrapped parameter
            pruner = tp.pruner.BasePruner(model, example, importance=scorer, pruning_ratio=ratio,
                                          ignored_layers=[m for m in ignored if m is not None])
            pruner.step()
    except Exception as exc:
        raise DataError(_cannot(architecture, exc)) from exc
    try:
        with torch.no_grad():
            got = tuple(model(example).shape)
    except Exception as exc:
        # Torch-Pruning pruned channels that an operation it does not follow ties to others
        # (the CIFAR ResNets' "option A" shortcut pads channels with F.pad, for one).
        raise DataError(_cannot(architecture, f"the pruned network no longer runs: {_first_line(exc)}; an operation "
                                              "ties channels together in a way Torch-Pruning does not follow, such as "
                                              "a shortcut that pads or slices channels")) from exc
    if got != expected:
        raise DataError(_cannot(architecture, f"output shape {got} instead of {expected}"))
    history = [(str(name), bool(out), [int(i) for i in idxs]) for name, out, idxs in pruner.pruning_history()]
    if not history:
        raise DataError(_cannot(architecture, "no layer had channels to remove"))
    after = {name: _width(m) for name, m in model.named_modules() if name in before}
    changed = {name: (before[name], after[name]) for name in before if after.get(name) != before[name]}
    return PruneOutcome(history, changed)


def _classifier(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_classifier", None)
    head = getter() if callable(getter) else None
    if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _width(module: nn.Module) -> int | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return None


def _cannot(architecture: str, reason: object) -> str:
    text = _first_line(reason) if isinstance(reason, BaseException) else str(reason)
    return (f"Torch-Pruning cannot prune {architecture} ({text}): prune another architecture, or keep "
            "the failing modules whole with `ignore=NAME`")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__
