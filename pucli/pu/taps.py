"""The layers the multi-scale extractor taps on a model without timm's feature API.

A timm model says where its stages are (``feature_info``; :mod:`pucli.pu.network`). Any other
``torch.nn.Module`` (a torchvision model, the user's own code) is tapped through torchvision's
FX-based feature extraction (``torchvision.models.feature_extraction``, Paszke et al.'s
``torch.fx``): the network is traced into a graph once, and

- by default the taps are, in graph order, the **last node at each spatial resolution** (the
  output of each stage, as timm's ``feature_info`` lists them: for a CIFAR ResNet ``layer1``,
  ``layer2``, ``layer3``'s last ReLU at 32, 16 and 8 pixels), maps of 1 x 1 left out, plus the
  **penultimate features**: the last (B, F) node before the logits (the classifier's input, what
  timm's ``forward_head(pre_logits=True)`` gives);
- or the user names them (``taps``): module names (``layer1,layer2,layer3``), tapped by forward
  hooks, no tracing needed; or FX node names (``get_graph_node_names``), tapped on the traced graph.

Every tap is pooled to a vector per image: (B, C, H, W) maps by their spatial mean, (B, N, C)
token sequences by their mean over N, (B, F) as they are.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pucli.errors import OptionError

__all__ = ["Tap", "TapExtractor", "find_taps", "pool_tap"]


@dataclass(frozen=True)
class Tap:
    """One tapped node: its ``node`` name (module or FX node) and ``shape`` per image
    ((C, H, W), (N, C) or (F,)); ``channels`` is what it adds to the descriptor."""

    node: str
    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return int(self.shape[-1] if len(self.shape) == 2 else self.shape[0])

    def as_dict(self) -> dict[str, object]:
        return {"node": self.node, "shape": list(self.shape)}


def pool_tap(value: torch.Tensor) -> torch.Tensor:
    """A tap's output as (B, C) float32: spatial mean of (B, C, H, W), token mean of (B, N, C), (B, F) as is."""
    value = value.float()
    if value.ndim == 4:
        return value.mean(dim=(2, 3))
    if value.ndim == 3:
        return value.mean(dim=1)
    return value.flatten(1)


class TapExtractor(nn.Module):
    """The tapped nodes of ``model`` as a list of tensors, in tap order.

    ``network`` is either the traced graph returning only the tapped nodes (FX; it shares the
    model's layers and weights) or the model itself with forward hooks on the tapped modules.
    Shapes: ``forward`` (B, C_in, H, W) float32 -> list of (B, ...) tensors, one per tap.
    """

    def __init__(self, network: nn.Module, nodes: Sequence[str], *, hooks: bool) -> None:
        super().__init__()
        self.network = network
        self.nodes = list(nodes)
        self.hooks = hooks

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if not self.hooks:
            outputs = self.network(images)
            return [outputs[node] for node in self.nodes]
        captured: dict[str, torch.Tensor] = {}
        modules = dict(self.network.named_modules())
        handles = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
                   for name in self.nodes]
        try:
            self.network(images)
        finally:
            for handle in handles:
                handle.remove()
        return [captured[name] for name in self.nodes]


def find_taps(model: nn.Module, input_size: Sequence[int], names: Sequence[str] | None = None, *,
              stages: Sequence[int] | None = None, pre_logits: bool = True) -> tuple[TapExtractor, list[Tap]]:
    """The extractor of ``model``'s taps (module docstring) and what each gives for one image of
    ``input_size`` (C, H, W).

    Args:
        names: module or FX node names to tap; None finds the stages by FX.
        stages: with ``names`` None, indices into the stages found (negative from the end); None: all.
        pre_logits: with ``names`` None, also tap the penultimate features.

    Raises:
        OptionError: FX cannot trace the model (``taps``: name modules instead), a name the model
            has neither as module nor as node (the closest are listed), a tap that is not a tensor,
            a stage index out of range (``scales``), or no stage found.
    """
    example = torch.zeros(1, *input_size)
    if names:
        modules = {name for name, _ in model.named_modules() if name}
        if all(name in modules for name in names):
            extractor = TapExtractor(model, names, hooks=True)
        else:
            extractor = TapExtractor(_traced(model, list(names), given=",".join(names)), names, hooks=False)
        return extractor, _shapes(extractor, example, ",".join(names))
    nodes, outputs = _trace_all(model, example)
    found = _stage_nodes(nodes, outputs)
    if not found:
        raise OptionError("taps", "auto", "no node of the traced model gives a feature map: name the layers to tap, "
                          "e.g. layer1,layer2,layer3")
    if stages is not None:
        count = len(found)
        bad = [i for i in stages if not -count <= i < count]
        if bad:
            raise OptionError("scales", bad[0], f"stage {bad[0]} does not exist: the model has stages 0..{count - 1}")
        found = [found[i] for i in sorted({i % count for i in stages})]
    if pre_logits:
        penultimate = _penultimate_node(nodes, outputs)
        if penultimate is not None:
            found.append(penultimate)
    extractor = TapExtractor(_traced(model, found, given="auto"), found, hooks=False)
    return extractor, [Tap(node, tuple(outputs[node].shape[1:])) for node in found]


def _trace_all(model: nn.Module, example: torch.Tensor) -> tuple[list[str], dict[str, object]]:
    """Every node of ``model``'s eval-mode graph (graph order) and its output on ``example``."""
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        _, nodes = get_graph_node_names(model)
    except Exception as exc:  # noqa: BLE001  (torch.fx raises many types for code it cannot trace)
        raise OptionError("taps", "auto", f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: "
                          f"{_first_line(exc)}); name the modules to tap instead, e.g. layer1,layer2,layer3") from exc
    probe = _traced(model, nodes, given="auto")
    return nodes, _run(probe, example, "auto")


def _stage_nodes(nodes: Sequence[str], outputs: dict[str, object]) -> list[str]:
    """The last node at each spatial resolution (4-D outputs larger than 1 x 1), in graph order."""
    last: dict[tuple[int, int], int] = {}
    for position, node in enumerate(nodes):
        value = outputs.get(node)
        if position == 0 or not isinstance(value, torch.Tensor) or value.ndim != 4:
            continue  # position 0: the input itself
        height, width = value.shape[-2:]
        if height * width > 1:
            last[(int(height), int(width))] = position
    return [nodes[position] for position in sorted(last.values())]


def _penultimate_node(nodes: Sequence[str], outputs: dict[str, object]) -> str | None:
    """The last (B, F) node before the model's output node (the classifier's input), if any."""
    for node in reversed(list(nodes[:-1])):
        value = outputs.get(node)
        if isinstance(value, torch.Tensor) and value.ndim == 2:
            return node
    return None


def _traced(model: nn.Module, nodes: list[str], *, given: str) -> nn.Module:
    """``model`` traced by FX, returning ``{node: output}`` for ``nodes`` (sharing its layers and weights).

    Raises:
        OptionError: a node the graph lacks, or a model FX cannot trace.
    """
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    try:
        return create_feature_extractor(model, return_nodes=nodes, suppress_diff_warning=True)
    except ValueError as exc:
        if "is not present in model" not in str(exc):
            raise OptionError("taps", given, f"torch.fx cannot trace it ({_first_line(exc)})") from exc
        _, known = get_graph_node_names(model)
        modules = [name for name, _ in model.named_modules() if name]
        missing = next((n for n in nodes if n not in known and n not in modules), nodes[0])
        close = difflib.get_close_matches(missing, known + modules, n=4, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else "module names as model.named_modules() gives them"
        raise OptionError("taps", given, f"the model has no layer or node {missing} ({hint})") from exc
    except Exception as exc:  # noqa: BLE001  (torch.fx raises many types for code it cannot trace)
        raise OptionError("taps", given, f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: "
                          f"{_first_line(exc)}); name modules to tap instead, e.g. layer1,layer2,layer3") from exc


def _shapes(extractor: TapExtractor, example: torch.Tensor, given: str) -> list[Tap]:
    """What each tap of ``extractor`` gives for ``example``.

    Raises:
        OptionError: a tap whose output is not a 2-, 3- or 4-D tensor.
    """
    values = _run(extractor, example, given)
    taps = []
    for node, value in zip(extractor.nodes, values):
        if not isinstance(value, torch.Tensor) or value.ndim not in (2, 3, 4):
            what = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise OptionError("taps", given, f"{node} gives {what}, not a (B, C, H, W) map, (B, N, C) tokens or (B, F) "
                              "features: tap another layer")
        taps.append(Tap(node, tuple(value.shape[1:])))
    return taps


def _run(module: nn.Module, example: torch.Tensor, given: str):  # type: ignore[no-untyped-def]
    """``module(example)`` in eval mode without gradients (the mode is restored)."""
    training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            return module(example)
    except Exception as exc:  # noqa: BLE001
        raise OptionError("taps", given, f"the tapped model fails on one image ({type(exc).__name__}: "
                          f"{_first_line(exc)})") from exc
    finally:
        module.train(training)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
