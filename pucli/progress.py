"""How the engine reports progress without printing: a callback the front end renders.

The engine calls ``progress(stage, completed, total, **metrics)`` as work advances: ``stage`` is a
short label ("extract", "train", "score"), ``completed`` and ``total`` count items (images, steps
or epochs; ``total`` None when unknown), ``metrics`` are numbers worth showing (``loss``, ``img_s``;
``epoch`` marks a stage that runs in epochs, ``cached=1`` work read from a cache).

The CLI renders it (:mod:`pucli.cli._output`): progress bars on a terminal, plain log lines (one per
epoch or ~10 % of ``total``) anywhere else. Call it as often as is cheap: the front end throttles.

What a stage took is kept by :func:`timed`, in seconds per stage, for a result to report.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["ProgressCallback", "no_progress", "timed"]


class ProgressCallback(Protocol):
    def __call__(self, stage: str, completed: int, total: int | None, **metrics: float) -> None: ...


def no_progress(stage: str, completed: int, total: int | None, **metrics: float) -> None:
    """The default callback: reports nothing."""


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Adds the seconds (wall-clock) the block takes to ``timings[stage]``, even when it raises."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
