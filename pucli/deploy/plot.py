"""The picture at the end of compression: accuracy against latency and against size.

Two panels drawn with matplotlib (the ``plot`` extra): top-1 accuracy (%) against CPU latency at
batch 1 (ms, log scale) and against the model file's size (KiB, log scale), one point per
evaluated model, labelled with its name; the first model (the teacher) is drawn as a star.
Colours tell the runtime: PyTorch, ONNX Runtime float32, ONNX Runtime int8.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pucli.errors import OptionError, UsageError
from pucli.evaluate import ModelEvaluation
from pucli.paths import replace_atomically

__all__ = ["check_plot_output", "plot_evaluations", "require_matplotlib"]

_COLOURS = {"pytorch": "#1f77b4", "onnxruntime": "#ff7f0e", "onnxruntime int8": "#2ca02c"}
_LABELS = {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime float32", "onnxruntime int8": "ONNX Runtime int8"}


def require_matplotlib(parameter: str = "plot") -> None:
    """Raises: UsageError: matplotlib is not installed (says which extra installs it, and names
    ``parameter``, what asked for a plot)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"{parameter} needs matplotlib: pip install 'pucli[plot]'", parameter=parameter) from None


def check_plot_output(path: str | os.PathLike[str], parameter: str = "plot") -> None:
    """Fail before any work when the picture could not be written (``parameter`` named ``path``).

    Raises:
        UsageError: matplotlib missing; the folder is missing or read-only; not a ``.png`` name.
    """
    path = Path(path)
    require_matplotlib(parameter)
    if path.suffix.lower() != ".png":
        raise OptionError(parameter, path, "give a .png file name", path=path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise OptionError(parameter, path, f"folder {folder} does not exist or is not writable; choose another path",
                          path=path)


def plot_evaluations(results: Sequence[ModelEvaluation], out: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Draw ``results`` (the first is the teacher) to the PNG ``out``, atomically; returns ``out``.

    Raises:
        UsageError: matplotlib missing, or ``results`` empty.
    """
    require_matplotlib()
    if not results:
        raise UsageError("no model was evaluated: nothing to plot")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    figure = Figure(figsize=(11, 4.6), dpi=120, layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    axes = (("latency_ms", "CPU latency at batch 1 (ms, log scale)", 1.0),
            ("file_bytes", "model file size (KiB, log scale)", 1 / 1024))
    low = min(r.top1 for r in results)
    high = max(r.top1 for r in results)
    pad = max(0.5, 0.15 * (high - low))
    panels[0].set_ylim(low - pad, min(100.0, high + pad))
    for panel, (field, label, scale) in zip(panels, axes):
        xs = [getattr(r, field) * scale for r in results]
        for k, (result, x) in enumerate(zip(results, xs)):
            panel.scatter([x], [result.top1], s=220 if k == 0 else 60, marker="*" if k == 0 else "o",
                          color=_COLOURS[_kind(result)], edgecolors="black", linewidths=0.6, zorder=3)
        panel.set_xscale("log")
        span = max(xs) / min(xs) if min(xs) > 0 else 10.0
        panel.set_xlim(min(xs) / span ** 0.15, max(xs) * span ** 0.35)  # room for the labels on the right
        panel.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        panel.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        panel.xaxis.set_minor_formatter(NullFormatter())
        _label_points(panel, xs, [r.top1 for r in results], [("teacher: " if k == 0 else "") + r.name for k, r in enumerate(results)])
        panel.set_xlabel(label)
        panel.grid(True, which="both", alpha=0.3)
    panels[0].set_ylabel("top-1 accuracy (%)")
    kinds = sorted({_kind(r) for r in results}, key=list(_COLOURS).index)
    handles = [Line2D([], [], marker="o", linestyle="", color=_COLOURS[k], markeredgecolor="black", label=_LABELS[k]) for k in kinds]
    handles.append(Line2D([], [], marker="*", linestyle="", color="white", markeredgecolor="black", markersize=12, label="teacher"))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    figure.suptitle(title or f"accuracy vs latency and size ({results[0].images:,} test images; "
                              f"latency: CPU, batch 1, median)", fontsize=10)

    def write(tmp: Path) -> None:
        figure.savefig(tmp, format="png")

    return replace_atomically(out, write)


def _label_points(panel: object, xs: list[float], ys: list[float], labels: list[str]) -> None:
    """Name each point; a label that would sit on an earlier one (points at nearly the same place,
    e.g. a model and its float ONNX export on the size axis) moves down a line."""
    placed: list[tuple[float, float]] = []
    figure = panel.figure  # type: ignore[attr-defined]
    figure.canvas.draw()  # the axes' limits and transform as they will be drawn
    for x, y, text in zip(xs, ys, labels):
        px, py = panel.transData.transform((x, y))  # type: ignore[attr-defined]
        dy = 5.0
        while any(abs(px - qx) < 90 and abs(py + dy - qy) < 11 for qx, qy in placed):
            dy -= 11.0
        placed.append((px, py + dy))
        panel.annotate(text, (x, y), xytext=(6, dy), textcoords="offset points", fontsize=8)  # type: ignore[attr-defined]


def _kind(result: ModelEvaluation) -> str:
    if result.runtime != "onnxruntime":
        return "pytorch"
    return "onnxruntime int8" if "(int8)" in result.architecture else "onnxruntime"
