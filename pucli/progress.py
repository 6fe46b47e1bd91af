"""How the engine reports progress without printing: a callback the front end renders.

The engine calls ``progress(stage, completed, total, **metrics)`` as work advances: ``stage`` is a
short label ("extract", "train", "score"), ``completed`` and ``total`` count items (images, steps
or epochs; ``total`` None when unknown), ``metrics`` are numbers worth showing (``loss``, ``img_s``;
``epoch`` marks a stage that runs in epochs, ``cached=1`` work read from a cache).

The CLI renders it (:mod:`pucli.cli._output`): progress bars on a terminal, plain log lines (one per
epoch or ~10 % of ``total``) anywhere else. Call it as often as is cheap: the front end throttles.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ProgressCallback", "no_progress"]


class ProgressCallback(Protocol):
    def __call__(self, stage: str, completed: int, total: int | None, **metrics: float) -> None: ...


def no_progress(stage: str, completed: int, total: int | None, **metrics: float) -> None:
    """The default callback: reports nothing."""
