"""`python -m norton_jax.models --config configs/pretrain.py --summary`.

A missing or broken config file prints one `error:` line and exits with status 2
(`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys

from norton_jax import cli
from norton_jax.models.config import load_config_file
from norton_jax.models.summary import format_summary, parameter_counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m norton_jax.models", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config file with get_config().model")
    parser.add_argument("--summary", action="store_true", help="print parameter counts (no allocation)")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    if not args.summary:
        parser.error("nothing to do: pass --summary")
    config = load_config_file(args.config)
    print(format_summary(parameter_counts(config.model)))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m norton_jax.models"))
