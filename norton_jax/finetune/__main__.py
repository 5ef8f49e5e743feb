"""``python -m norton_jax.finetune``: fine-tune a pre-trained Norton on a downstream task.

    python -m norton_jax.finetune --config configs/finetune_msrvtt.py \\
        --init CHECKPOINT --data DATA_DIR --workdir WORKDIR [--config.train.epochs=3]
    python -m norton_jax.finetune --config configs/finetune_coin.py --data DATA_DIR \\
        --workdir WORKDIR --eval_only        # test-split metrics of the latest checkpoint

``--init``: a reference ``.pt`` (VideoCLIP / Norton), a ``.safetensors`` export, or an
orbax checkpoint folder / training workdir; ``--init_step best`` (or an integer) picks a
step of the latter (default: the latest; ``best``: the lowest validation loss).  ``--data``: the folder with the task's
official files (``docs/finetuning.md``).  Any config field can be overridden with
``--config.<field>=value`` (ml_collections).  Progress goes to stderr, the summary JSON
to stdout; see :mod:`norton_jax.finetune.trainer` for what the workdir holds.

Exit statuses are those of :mod:`norton_jax.cli`: 0 done, 2 a user error (one ``error:``
line; ``--debug`` shows the traceback), 3 non-finite loss, 143 / 130 stopped by SIGTERM /
SIGINT after saving (rerun the same command to resume).
"""

from __future__ import annotations

import json

from data_pipeline.tf_utils import configure_tensorflow_environment  # noqa: E402

configure_tensorflow_environment()

import jax  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from norton_jax import cli  # noqa: E402
from norton_jax.checkpoint import parse_step  # noqa: E402
from norton_jax.finetune.trainer import finetune  # noqa: E402
from norton_jax.training import absl_cli  # noqa: E402
from norton_jax.training.absl_cli import exit_status  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config file (configs/finetune_*.py[:tiny]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and config go.")
_DEBUG = flags.DEFINE_bool("debug", False, f"Show the full traceback of an error (or set {cli.DEBUG_ENV}=1).")
_INIT = flags.DEFINE_string("init", None, "Pre-trained checkpoint to start from (.pt, .safetensors, orbax dir).")
_INIT_STEP = flags.DEFINE_string("init_step", None,
                                 "Step of an orbax --init folder: an integer, 'best' or 'latest' (default).")
_DATA = flags.DEFINE_string("data", None, "Folder with the task's files (overrides config.data.dir).")
_EVAL_ONLY = flags.DEFINE_bool("eval_only", False, "Only evaluate the latest checkpoint on the test split.")


def main(argv: list[str]) -> int:
    del argv
    config, workdir = absl_cli.config_and_workdir(_CONFIG.value, _WORKDIR.value, debug=_DEBUG.value)
    if _INIT.value:
        config.train.init_checkpoint = _INIT.value
    if _INIT_STEP.value is not None:
        try:
            step = parse_step(_INIT_STEP.value)
        except ValueError as err:
            raise cli.UserError(f"--init_step: {err}") from None
        config.train.init_step = "" if step is None else str(step)
    if _DATA.value:
        config.data.dir = _DATA.value
    summary = finetune(config, workdir, eval_only=_EVAL_ONLY.value)
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2))
    return exit_status(summary)


if __name__ == "__main__":
    absl_cli.run_absl_cli(main, "python -m norton_jax.finetune", debug=lambda: _DEBUG.value)
