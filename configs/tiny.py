"""Tiny Norton for CPU: the `make demo` main job and the tests.

    python -m norton_jax.train --config configs/tiny.py --workdir /tmp/norton-tiny

Trains the tiny dual encoder (hidden 32, 2 video / 3 text layers) from scratch on the
embedded `youcook2-mnc` corpus (built on first use into `data/build/youcook2-mnc`):
8 videos x 16 clips = 128 clips and 16 sequences per step; every other setting is the
reference's (loss, Sinkhorn, bucket), except a larger learning rate for a model trained
from scratch in a few minutes.
"""

from ml_collections import ConfigDict

from norton_jax.models.config import tiny_model_config
from norton_jax.training import defaults


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.model = tiny_model_config()
    config.loss = defaults.loss_config()
    config.optim = defaults.optim_config()
    config.optim.lr = 5e-4
    config.optim.warmup_steps = 20
    config.optim.total_steps = None  # decay to 0 at train.steps
    config.train = defaults.train_config()
    config.train.steps = 300
    config.train.trainable = "all"  # from scratch
    config.train.log_every = 10
    config.train.checkpoint_every = 100
    config.train.keep_checkpoints = 2
    config.train.hard_negatives.num_candidates = 32
    config.data = defaults.data_config()
    config.data.store = "data/build/youcook2-mnc"
    config.data.build_if_missing = "youcook2-mnc"
    config.data.videos_per_device = 8
    return config
