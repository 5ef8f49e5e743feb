"""Tiny geometry for CPU tests and demos (hidden 32, 2 heads, 2 video / 3 text layers)."""

from ml_collections import ConfigDict

from norton_jax.models.config import tiny_model_config


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.model = tiny_model_config()
    return config
