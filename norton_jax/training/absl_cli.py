"""The command-line preamble the config-driven trainers share (``python -m norton_jax.train``,
``python -m norton_jax.finetune``).  The flags themselves are defined by those entry points;
this module only reads the values they pass in."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, Callable

from absl import app, flags, logging

from norton_jax import cli

__all__ = ["config_and_workdir", "exit_status", "run_absl_cli"]


class NoOrbaxTracebacks:
    """A logging filter: orbax's error records keep their one-line message, lose the traceback
    (the failure itself reaches the user as one ``error:`` line; ``--debug`` keeps them)."""

    def filter(self, record) -> bool:
        if f"{os.sep}orbax{os.sep}" in (record.pathname or ""):
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def config_and_workdir(config: Any, workdir: str | None, *, debug: bool) -> tuple[Any, str]:
    """The values of ``--config`` and ``--workdir`` (both required); quiets orbax's logging."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if not cli.debug_requested(["--debug"] if debug else []):
        logging.get_absl_handler().addFilter(NoOrbaxTracebacks())
    if config is None or workdir is None:
        raise cli.UserError("--config and --workdir are required (e.g. --config configs/tiny.py --workdir DIR)")
    return config, workdir


def exit_status(summary: dict[str, Any]) -> int:
    """0 for a completed run, ``128 + signal`` for one stopped by SIGTERM / SIGINT."""
    if summary.get("interrupted"):
        return cli.interrupted_exit_code(summary.get("signal") or signal.SIGTERM)
    return cli.EXIT_OK


def exit_watchdog(code: int, prog: str, grace_s: float = 30.0) -> None:
    """After a failed or interrupted run, ends the process if threads still block its exit.

    A daemon thread: when the interpreter exits normally it simply disappears.
    """
    if code == cli.EXIT_OK:
        return

    def end() -> None:
        time.sleep(grace_s)
        print(f"{prog}: background threads still running {grace_s:.0f} s after the end; exiting",
              file=sys.stderr, flush=True)
        os._exit(code)

    threading.Thread(target=end, name="norton-exit-watchdog", daemon=True).start()


def parse_flags(argv: list[str], prog: str) -> list[str]:
    """absl's flag parsing with a flag mistake (an unknown flag or config field, a value of
    the wrong type) reported as one ``error:`` line, exit status 2."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
        if cli.debug_requested(argv):
            raise
        text = str(err)
        while len(text) > 1 and text[0] == text[-1] == "'":  # a KeyError's quoted message
            text = text[1:-1].replace("\\'", "'").replace("\\n", " ")
        print(f"{prog}: error: bad flag: {' '.join(text.split())}  (--helpfull lists the flags)",
              file=sys.stderr)
        sys.exit(cli.EXIT_USER_ERROR)


def run_absl_cli(main_fn: Callable[[list[str]], int], prog: str, *, debug: Callable[[], bool]) -> None:
    """Runs an absl ``main_fn(argv) -> status`` the way every norton-jax command does
    (:func:`norton_jax.cli.run`: one ``error:`` line per user mistake, ``--debug`` for the
    traceback) and exits with its status.  ``debug()``: the value of the command's
    ``--debug`` flag (read once the flags are parsed)."""

    def absl_main(argv: list[str]) -> int:
        code = cli.run(lambda _: main_fn(argv), ["--debug"] if debug() else [], prog=prog)
        exit_watchdog(code, prog)
        return code

    help_asked = any(a in ("-h", "--help", "-?", "--helpshort", "--helpfull", "--helpxml") for a in sys.argv[1:])
    try:
        app.run(absl_main, flags_parser=lambda argv: parse_flags(argv, prog))
    except SystemExit as done:
        # absl ends ``--help`` with status 1; asking for help is not an error.
        if help_asked and done.code == 1:
            sys.exit(0)
        raise
