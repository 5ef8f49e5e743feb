"""Work-arounds for orbax's failure paths: short error reasons, releasing the helper threads
of a failed asynchronous save, and silencing the echo of one failed read."""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from typing import Any

import jax

__all__ = ["current_operation_id", "install_read_noise_filter", "release_orbax_waiters", "short_reason"]


def short_reason(err: BaseException) -> str:
    """The first line of an orbax / tensorstore error, without the long TensorStore spec dump.

    Orbax's "Encountered error while reading array index" is replaced by the tensorstore
    error it wraps (which names the array and what is wrong with its bytes)."""
    seen = set()
    while (str(err).startswith("Encountered error while reading") and err.__cause__ is not None
           and id(err) not in seen):
        seen.add(id(err))
        err = err.__cause__
    text = str(err).strip() or type(err).__name__
    text = text.split("See full TensorStore details")[0]
    line = " ".join(text.splitlines()[0].split()) if text.strip() else type(err).__name__
    return line if len(line) <= 240 else line[:237] + "..."



def release_orbax_waiters(operation_ids: set[str]) -> None:
    """Lets orbax's helper threads of a failed save finish instead of waiting 5 minutes.

    When one part of an asynchronous save fails, the other parts' threads keep waiting for
    signals that never come (up to orbax's coordination timeout) and, being non-daemon
    threads, keep the interpreter from exiting.  They are cancelled and their signals set,
    so they return at once.  Only threads of ``operation_ids`` (the failed saves) are
    touched, and only in a single-process run (across hosts the signals are shared).
    """
    if not operation_ids or jax.process_count() > 1:
        return
    try:
        from orbax.checkpoint._src.futures import future as orbax_future  # noqa: PLC0415
    except ImportError:  # a later orbax: nothing we know how to release
        return
    thread_type = getattr(orbax_future, "_SignalingThread", None)
    set_signals = getattr(orbax_future, "set_signals", None)
    if thread_type is None or set_signals is None:
        return
    waiting = [t for t in threading.enumerate()
               if isinstance(t, thread_type) and t.is_alive()
               and str(getattr(t, "_operation_id", None)) in operation_ids]
    for t in waiting:
        try:
            t.cancel()
            set_signals(getattr(t, "_receive_signals", ()), operation_id=t._operation_id)
        except Exception:  # noqa: BLE001 - best effort on a failure path
            pass
    for t in waiting:
        threading.Thread.join(t, timeout=5)  # orbax's own join() raises for a cancelled thread
    if waiting:  # the cancelled threads never ran their coroutines: not worth a warning at exit
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


def is_orbax_read_noise(unraisable: Any) -> bool:
    """Whether an "exception ignored" report is the echo of one failed orbax read.

    When one array of a restore cannot be read, orbax abandons the other reads of the
    same call: their coroutines are collected with the same error, and the I/O callbacks
    that complete later find the event loop closed.  Python reports each of these as an
    ignored exception (hundreds of tracebacks); the failure itself is raised once.
    """
    obj = unraisable.object
    code = getattr(obj, "cr_code", None)
    if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
        return True
    exc = unraisable.exc_value
    if obj is None and isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        tb = unraisable.exc_traceback
        while tb is not None:
            if tb.tb_frame.f_code.co_filename.endswith(os.path.join("asyncio", "base_events.py")):
                return True
            tb = tb.tb_next
    return False


def drop_orbax_read_futures(record: logging.LogRecord) -> bool:
    """asyncio's "exception was never retrieved" report of an abandoned orbax read: dropped."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and str(exc).startswith("Encountered error while reading array index"))


_NOISE_FILTER_INSTALLED = False


def install_read_noise_filter() -> None:
    """Drops :func:`is_orbax_read_noise` reports (unless ``--debug`` / NORTON_DEBUG is set);
    every other ignored exception goes to the previous hook."""
    global _NOISE_FILTER_INSTALLED
    if _NOISE_FILTER_INSTALLED:
        return
    from norton_jax import cli  # noqa: PLC0415

    if cli.debug_requested():
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not is_orbax_read_noise(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(drop_orbax_read_futures)
    warnings.filterwarnings("ignore", message="coroutine '_read_array_index_and_device_put' was never awaited",
                            category=RuntimeWarning)
    _NOISE_FILTER_INSTALLED = True


def current_operation_id() -> str | None:
    try:
        from orbax.checkpoint._src.futures import synchronization  # noqa: PLC0415

        return str(synchronization.OperationIdGenerator.get_current_operation_id())
    except Exception:  # noqa: BLE001 - only used to release threads after a failure
        return None

