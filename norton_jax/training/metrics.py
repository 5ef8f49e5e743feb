"""What a training run writes beside its checkpoints: ``metrics.jsonl`` (+ TensorBoard),
``config.json`` and ``summary.json``, on any filesystem :mod:`data_pipeline.fileio` knows
(local folders, ``gs://``, ``ram://``)."""

from __future__ import annotations

import json
from typing import Any

from data_pipeline import fileio

__all__ = ["METRICS_FILE", "MetricLogger", "truncate_metrics", "write_workdir_json"]

METRICS_FILE = "metrics.jsonl"


def write_workdir_json(workdir: str, name: str, obj: Any) -> str:
    """Writes ``obj`` to ``<workdir>/<name>`` atomically (:func:`data_pipeline.fileio.atomic_write_json`,
    NaN as null); returns the path."""
    path = fileio.join(workdir, name)
    fileio.atomic_write_json(path, obj, indent=2, nan_as_null=True)
    return path


def truncate_metrics(path: str, last_step: int) -> int:
    """Drops the rows of ``path`` (JSON lines) with ``step > last_step``; returns how many.

    A run killed after logging a step but before its checkpoint was written logs that step
    again once resumed; cutting the file back to the restored step keeps one row per step.
    Unreadable lines (a row torn by the kill) are dropped too.  The file is rewritten
    atomically (a new file, then a rename).
    """
    if not fileio.isfile(path):
        return 0
    kept, dropped = [], 0
    with fileio.open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
                step = int(row["step"])
            except (ValueError, KeyError, TypeError):
                dropped += 1
                continue
            if step > last_step:
                dropped += 1
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        tmp = f"{path}.truncate-tmp"
        with fileio.open(tmp, "w") as f:
            f.writelines(kept)
        fileio.replace(tmp, path)
    return dropped


class MetricLogger:
    """JSON lines (``<workdir>/metrics.jsonl``) + TensorBoard scalars, written by process 0 only.

    ``start_step``: the step the run starts from; rows of ``metrics.jsonl`` after it (left
    by an earlier run that was killed before saving) are dropped first.  ``tensorboard``:
    also write TensorBoard events to ``<workdir>/tensorboard``.
    """

    def __init__(self, workdir: str, enabled: bool, *, start_step: int | None = None, tensorboard: bool = True):
        self.enabled = enabled
        self.writer = None
        self.file = None
        if enabled:
            fileio.makedirs(workdir)
            self.path = fileio.join(workdir, METRICS_FILE)
            if start_step is not None:
                truncate_metrics(self.path, int(start_step))
            self.file = fileio.open(self.path, "a")
            if tensorboard:
                from flax.metrics import tensorboard as tb  # noqa: PLC0415 - TensorFlow: only when writing

                self.writer = tb.SummaryWriter(fileio.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.scalar(k, v, step)
            self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()
