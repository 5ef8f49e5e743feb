"""What every ``python -m`` command of norton-jax does with errors and exit codes.

This module is a leaf (standard library only): the entry points of ``norton_jax`` and of
``data_pipeline`` both use it, so that every command behaves the same way:

* **A user's mistake** (a bad flag or config value, a missing or damaged file, non-finite
  features) prints one line, ``error: <message>``, to stderr and exits with
  :data:`EXIT_USER_ERROR`.  ``--debug`` on the command line, or ``NORTON_DEBUG=1`` in the
  environment, prints the full traceback instead.
* **A training run that diverged** (:class:`NonFiniteError`: NaN/inf loss, gradient or
  input) exits with :data:`EXIT_NON_FINITE`; the last good checkpoint is kept.
* **An interrupted run** (SIGTERM from a scheduler, Ctrl-C) saves at the next step
  boundary and exits with ``128 + signal`` (:func:`interrupted_exit_code`: 143 for SIGTERM,
  130 for SIGINT), never 0, so that ``train && export`` does not export a partial model
  and a scheduler can requeue a preempted job.  Resume with the same ``--workdir``.
* **Anything else** is a bug: the traceback is printed and the exit status is 1.

Exit statuses (also in the README, "When things go wrong"):

======  ===========================================================================
status  meaning
======  ===========================================================================
0       the job completed
1       internal error (a bug: please report the traceback)
2       a user error: bad argument, config value, or input file (one ``error:`` line)
3       training stopped on a non-finite loss, gradient or input batch
130     interrupted by SIGINT (Ctrl-C) after saving; resume with the same workdir
143     interrupted by SIGTERM (preemption) after saving; resume with the same workdir
======  ===========================================================================
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Callable, Sequence

__all__ = [
    "EXIT_OK", "EXIT_INTERNAL", "EXIT_USER_ERROR", "EXIT_NON_FINITE",
    "UserError", "ConfigError", "NonFiniteError",
    "add_debug_flag", "debug_requested", "interrupted_exit_code", "report", "run",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3
DEBUG_ENV = "NORTON_DEBUG"


class UserError(Exception):
    """A mistake in what the user gave (argument, config, file): reported as one line."""


class ConfigError(UserError, ValueError):
    """A config value outside its allowed range; the message names the field and the value."""


class NonFiniteError(FloatingPointError):
    """Training produced (or was fed) NaN/inf; the message names what and at which step."""


# Exception types whose message is meant for the user.  ValueError covers the project's
# DataError / EvalDataError / CheckpointKeyError / ConfigError; OSError covers missing,
# unreadable and unwritable files.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, OSError)


def interrupted_exit_code(signum: int) -> int:
    """The exit status of a run stopped by ``signum`` after saving: ``128 + signum``."""
    return 128 + int(signum)


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """``--debug`` in ``argv`` (default ``sys.argv``) or ``NORTON_DEBUG`` set to a true value."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return "--debug" in argv or env not in ("", "0", "false", "no")


def add_debug_flag(parser) -> None:
    """Adds ``--debug`` (show tracebacks) to an ``argparse`` parser; :func:`run` reads it."""
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)")


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if isinstance(err, KeyError) and text.startswith("'"):
        text = text.strip("'")
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return " ".join(text.split())


def report(err: BaseException, *, prog: str | None = None, debug: bool = False) -> int:
    """Prints ``err`` the way a command should and returns its exit status."""
    if isinstance(err, KeyboardInterrupt):
        print("interrupted (SIGINT)", file=sys.stderr)
        return interrupted_exit_code(signal.SIGINT)
    if debug:
        traceback.print_exception(err)
    prefix = f"{prog}: " if prog else ""
    if isinstance(err, NonFiniteError):
        if not debug:
            print(f"{prefix}error: {_one_line(err)}", file=sys.stderr)
        return EXIT_NON_FINITE
    if isinstance(err, USER_ERRORS):
        if not debug:
            print(f"{prefix}error: {_one_line(err)}  (--debug or {DEBUG_ENV}=1 shows the traceback)",
                  file=sys.stderr)
        return EXIT_USER_ERROR
    if not debug:
        traceback.print_exception(err)
    return EXIT_INTERNAL


def run(main: Callable[[list[str] | None], int | None], argv: Sequence[str] | None = None, *,
        prog: str | None = None) -> int:
    """Calls ``main(argv)`` and turns what it raises into a message and an exit status.

    ``main`` returns an exit status (None means 0).  ``SystemExit`` (argparse's usage
    errors, ``--help``) passes through unchanged.
    """
    debug = debug_requested(argv)
    try:
        code = main(None if argv is None else list(argv))
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - this is the one place that maps errors
        return report(err, prog=prog, debug=debug)
    return EXIT_OK if code is None else int(code)
