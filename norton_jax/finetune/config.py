"""Config sections of the fine-tuning runs (``configs/finetune_*.py``; spec §5.5-5.7).

Reference values (``vtt_ft.yaml``, ``vttqa_ft.yaml``, ``coin_ft.yaml``): Adam (0.9, 0.98,
1e-8), lr 5e-5, 122 warm-up updates, gradient clip 2.0, all parameters trained (spec
§3.7: the fine-tuning configs do not set ``layernorm_only``).  The decay horizon is not
given in §5.5-5.7; we keep the pre-training one (fairseq ``total_num_update`` 1,000,000,
spec §4.6), i.e. a nearly constant learning rate after warm-up.
"""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict

from norton_jax.finetune.losses import TASK_LOSSES
from norton_jax.models.config import paper_model_config, tiny_model_config
from norton_jax.training import defaults, validate


def optim_config() -> ConfigDict:
    """Adam, lr 5e-5, 122 warm-up steps, then the fairseq polynomial decay, clip 2.0."""
    optim = defaults.optim_config()
    optim.lr = 5e-5
    optim.warmup_steps = 122
    return optim


def train_config(*, epochs: int, batch_size: int = 0, videos_per_device: int = 1) -> ConfigDict:
    return ConfigDict(
        dict(
            epochs=epochs,
            steps=0,  # > 0 overrides epochs x steps-per-epoch
            batch_size=batch_size,  # global batch of video-caption pairs (MSR-VTT tasks)
            videos_per_device=videos_per_device,  # COIN: whole videos per device per step
            seed=0,
            trainable="all",  # fine-tuning trains every parameter (spec §3.7)
            init_checkpoint="",  # --init: pre-trained Norton .pt / .safetensors / orbax dir
            log_every=10,
            checkpoint_every=0,  # steps; 0 = at the end of every epoch
            keep_checkpoints=2,
            progress=True,
            stop_after_steps=0,  # > 0: stop (and save) after this many steps of this run
            distributed=False,  # call jax.distributed.initialize()
            on_non_finite="stop",  # "stop" | "skip": a NaN/inf loss or gradient skips the update
            max_skipped=0,  # "skip": more than this many skipped steps in a row still stop the run
            init_step="",  # --init_step: "" / "latest", "best" or a step of an orbax --init
        )
    )


def msrvtt_data_config(*, train_list: str, max_video_len: int) -> ConfigDict:
    """MSR-VTT training files (relative to --data) and the ``DSAligner`` layout (spec §3.2)."""
    return ConfigDict(
        dict(
            dir="",  # --data
            train_list=train_list,
            captions="MSRVTT_data.json",
            features="msrvtt_feature_fps30_512",
            dup=20,  # each epoch repeats the list 20x, one random caption per item
            max_video_len=max_video_len,
            max_len=96,
            seed=0,
            missing="drop",  # videos without features: "drop" (reported) | "error"
        )
    )


def eval_config(test_file: str, **overrides) -> ConfigDict:
    config = ConfigDict(
        dict(
            test_file=test_file,  # relative to --data
            at_start=False,  # evaluate the starting checkpoint too
            at_end=True,
            every_steps=0,
            batch_size=64,
            max_videos=0,  # > 0: only the first N test items (quick checks)
            stride=16,  # COIN test windows
        )
    )
    config.update(overrides)
    return config


def tiny_overrides(config: ConfigDict) -> ConfigDict:
    """CPU variant: tiny model, more lr (the tiny init is random), evaluation at start and end."""
    num_labels = config.model.num_labels
    config.model = tiny_model_config()
    config.model.num_labels = num_labels
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 10
    config.optim.total_steps = None  # decay to 0 at the last step
    config.train.log_every = 5
    config.train.checkpoint_every = 0
    config.eval.at_start = True
    return config


def paper_model(num_labels: int = 0) -> ConfigDict:
    model = paper_model_config()
    model.num_labels = num_labels
    return model


def validate_finetune_config(config: Any) -> None:
    """Checks a fine-tuning config (``configs/finetune_*.py``); one ConfigError for every problem."""
    c = validate.ConfigChecker(config)
    task = c.choice("task", sorted(TASK_LOSSES))
    validate.check_model(c)
    num_labels = c.get("model.num_labels", 0)
    if task == "coin" and (not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 2):
        c.bad("model.num_labels", num_labels, "the COIN class count (779) for task 'coin'")
    if task is not None and task != "coin" and num_labels:
        c.bad("model.num_labels", num_labels, "0: only the 'coin' task has a classifier")
    steps = c.integer("train.steps", minimum=0, default=0)
    if not steps:
        c.integer("train.epochs", minimum=1)
    if task == "coin":
        c.integer("train.videos_per_device", minimum=1)
    elif task is not None:
        c.integer("train.batch_size", minimum=2)
    c.integer("train.seed", minimum=0)
    c.choice("train.trainable", validate.TRAINABLE_MODES)
    c.integer("train.log_every", minimum=1)
    c.integer("train.checkpoint_every", minimum=0)
    c.integer("train.keep_checkpoints", minimum=1)
    c.integer("train.stop_after_steps", minimum=0, default=0)
    c.choice("train.negatives", ("global", "local"), default="global")
    validate.check_loop_safety(c)
    validate.check_optim(c)
    if not c.get("data.dir", ""):
        c.problems.append("no data folder: pass --data DIR (or set config.data.dir)")
    c.integer("data.seed", minimum=0, default=0)
    c.choice("data.missing", ("drop", "error"), default="drop")
    if task == "coin":
        c.integer("data.stride", minimum=1)
        c.integer("data.size", minimum=1)
        c.integer("eval.stride", minimum=1, default=16)
    elif task is not None:
        c.integer("data.dup", minimum=1)
        c.integer("data.max_video_len", minimum=1)
        c.integer("data.max_len", minimum=1)
    c.integer("eval.batch_size", minimum=1, default=64)
    c.integer("eval.every_steps", minimum=0, default=0)
    c.integer("eval.max_videos", minimum=0, default=0)
    c.raise_if_any("fine-tuning config")
