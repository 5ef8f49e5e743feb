"""Norton post-pretraining on HowTo100M (paper geometry, spec §3.1).

Usage: `python -m norton_jax.models --config configs/pretrain.py --summary`.
"""

from ml_collections import ConfigDict

from norton_jax.models.config import paper_model_config


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.model = paper_model_config()
    return config
