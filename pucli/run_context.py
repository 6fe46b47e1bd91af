"""How a run runs: what every stage a command calls shares, besides the stage's own options.

A :class:`RunContext` holds the device the networks run on, the data-loading processes, the
progress callback (:mod:`pucli.progress`), the run's log of the unreadable files it left out, and its
log of the model files it read or wrote (:class:`pucli.report.ModelFileLog`: what the run report lists
under ``preprocessing``). A front end makes one per command run (the CLI: from ``--device`` and
``--workers``, its progress bars and its run report's logs) and hands it to the engine's entry points
(``run=``); a library caller may leave it out: the CPU, no loader processes, no progress, fresh logs.

The batch size is not part of it: it is each stage's own option (``SelectorOptions.batch_size``,
``DistillConfig.batch_size``, ``expand``'s and ``evaluate_model``'s ``batch_size``), validated with the
others, since a batch can change what training, BN re-estimation or even a forward pass computes.

Callers written before the context existed pass ``device=``, ``workers=`` and ``progress=`` to the entry
points themselves; :meth:`RunContext.given` turns those keywords into a context, in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from pucli.data.files import SkippedFile
from pucli.progress import ProgressCallback, no_progress
from pucli.report import ModelFileLog

__all__ = ["RunContext"]


@dataclass
class RunContext:
    """What a run's stages share (module docstring).

    Attributes:
        device: where the networks run.
        workers: data-loading processes (0: decode in the calling process).
        progress: the callback stages report through.
        skipped: the run's log of unreadable input files left out, in the order met (stages append).
        model_files: the run's log of model files read or written (:class:`pucli.report.ModelFileLog`).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workers: int = 0
    progress: ProgressCallback = no_progress
    skipped: list[SkippedFile] = field(default_factory=list)
    model_files: ModelFileLog = field(default_factory=ModelFileLog)

    def with_(self, **changes: Any) -> RunContext:
        """This context with ``changes`` (``progress=``, ``workers=``, ...); the logs stay the same objects."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def given(cls, run: RunContext | None = None, *, device: torch.device | None = None, workers: int | None = None,
              progress: ProgressCallback | None = None, skipped: list[SkippedFile] | None = None) -> RunContext:
        """``run`` (a fresh context when None) with the keywords of callers written before contexts
        (``device=``, ``workers=``, ``progress=``, ``skipped=``) put in; the ones not given keep ``run``'s."""
        changes = {name: value for name, value in
                   (("device", device), ("workers", workers), ("progress", progress), ("skipped", skipped))
                   if value is not None}
        base = run if run is not None else cls()
        return base.with_(**changes) if changes else base
