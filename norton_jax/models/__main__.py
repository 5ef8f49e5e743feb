"""`python -m norton_jax.models --config configs/pretrain.py --summary`."""

from __future__ import annotations

import argparse

from norton_jax.models.config import load_config_file
from norton_jax.models.summary import format_summary, parameter_counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m norton_jax.models", description=__doc__)
    parser.add_argument("--config", required=True, help="config file with get_config().model")
    parser.add_argument("--summary", action="store_true", help="print parameter counts (no allocation)")
    args = parser.parse_args(argv)
    if not args.summary:
        parser.error("nothing to do: pass --summary")
    config = load_config_file(args.config)
    print(format_summary(parameter_counts(config.model)))


if __name__ == "__main__":
    main()
