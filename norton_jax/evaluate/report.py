"""Reporting of evaluation results: the plain-text table and the JSON file.

Both go through :mod:`data_pipeline.fileio`, so ``--out gs://bucket/metrics.json`` (or
``ram://``) works like a local path.  Each task's table lines come from its entry in the
task registry (:data:`norton_jax.evaluate.tasks.TASKS`).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Mapping

from data_pipeline import fileio
from norton_jax.cli import UserError
from norton_jax.evaluate.tasks import TASKS

__all__ = ["check_writable", "format_table", "write_json"]

PathLike = str | os.PathLike


def check_writable(path: PathLike, flag: str = "--out") -> Path | str:
    """Checks, before any work, that the file ``path`` can be written later.

    Creates its folder if needed, then writes and removes a probe file next to it; a
    problem raises :class:`norton_jax.cli.UserError` naming ``flag`` and the path, so a
    long evaluation does not end with its result lost.  Returns ``path`` (a Path for local
    paths, the URL string for ``scheme://`` ones).
    """
    text = os.fspath(path)
    if fileio.isdir(text):
        raise UserError(f"{flag} {text}: is a folder; give a file name")
    folder = fileio.dirname(text) or "."
    try:
        fileio.makedirs(folder)
        probe = fileio.join(folder, f".{fileio.basename(text)}.{os.getpid()}-{uuid.uuid4().hex[:6]}.probe")
        fileio.write_bytes(probe, b"")
        fileio.remove(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        raise UserError(f"{flag} {text}: cannot write in {folder} ({reason})") from err
    return text if fileio.is_url(text) else Path(text)


def write_json(obj: Any, path: PathLike) -> None:
    """Writes ``obj`` atomically (:func:`data_pipeline.fileio.atomic_write_json`, indent 1);
    numpy values become numbers, NaN/inf become null; the folder is created if needed."""
    path = os.fspath(path)
    folder = fileio.dirname(path)
    if folder:
        fileio.makedirs(folder)
    fileio.atomic_write_json(path, obj, indent=1, nan_as_null=True)


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text table of one result (recalls/accuracies in percent)."""
    task, m = result["task"], result["metrics"]
    counts = ", ".join(f"{v} {k}" for k, v in result["counts"].items())
    where = result["source"] + (f" {result['split']}" if result.get("split") else "")
    step = "" if result.get("step") is None else f" (step {result['step']})"
    lines = [f"{task} on {where}: {counts}; checkpoint {result['checkpoint']}{step}"]
    if result["missing"]["count"]:
        miss = result["missing"]
        lines.append(f"  missing features: {miss['count']} of {miss['total_videos']} videos "
                     f"({miss['dropped_items']} items dropped)")
    lines += TASKS[task].table(m)
    return "\n".join(lines)
