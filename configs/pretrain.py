"""Norton post-pretraining on HowTo100M: the paper's settings (spec 3.1, 4.6).

    python -m norton_jax.train --config configs/pretrain.py --workdir DIR \
        --config.data.store=/data/howto100m_store \
        --config.train.init_checkpoint=/ckpt/videoclip_checkpoint_best.pt
    python -m norton_jax.models --config configs/pretrain.py --summary

Starts from a VideoCLIP checkpoint and trains only the 39 LayerNorms; 64 videos x 16 clips
per device and step; Adam (0.9, 0.98), lr 1e-5 with 1000 warm-up updates, clip 2.0;
hard-negative batches rebuilt every epoch; each device's loss on its own batch.
"""

from ml_collections import ConfigDict

from norton_jax.models.config import paper_model_config
from norton_jax.training import defaults


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.model = paper_model_config()
    config.loss = defaults.loss_config()
    config.optim = defaults.optim_config()
    config.train = defaults.train_config()
    # The reference runs 6 epochs of ~n_videos/64 hard-negative batches per GPU.
    config.train.steps = 60_000
    config.data = defaults.data_config()  # data.store must be set
    return config
