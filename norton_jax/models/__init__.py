"""Norton dual encoder (Flax NNX), its configuration and trainable-parameter filters.

Main entry points::

    from norton_jax.models import DualEncoder, init_model, paper_model_config, tiny_model_config
    model = init_model(tiny_model_config(), seed=0)
    model.eval()                                   # dropout off (model.train() turns it on)
    out = model(caps, cmasks, vfeats, vmasks)      # dict: pooled_video, pooled_text, ...

Summary of the paper-size model (no allocation)::

    python -m norton_jax.models --config configs/pretrain.py --summary
"""

from norton_jax.models.config import (
    ModelConfig,
    load_config_file,
    paper_model_config,
    tiny_model_config,
)
from norton_jax.models.dual_encoder import (
    DualEncoder,
    VideoEncoder,
    VideoTokenMLP,
    abstract_model,
    init_model,
    masked_mean,
)
from norton_jax.models.keys import CheckpointKeyError
from norton_jax.models.trainable import (
    TRAINABLE_MODES,
    count_trainable,
    freeze_non_trainable,
    layernorm_only_count,
    param_labels,
    trainable_filter,
    trainable_mask,
)

__all__ = [
    "CheckpointKeyError",
    "DualEncoder",
    "ModelConfig",
    "TRAINABLE_MODES",
    "VideoEncoder",
    "VideoTokenMLP",
    "abstract_model",
    "count_trainable",
    "freeze_non_trainable",
    "init_model",
    "layernorm_only_count",
    "load_config_file",
    "masked_mean",
    "paper_model_config",
    "param_labels",
    "tiny_model_config",
    "trainable_filter",
    "trainable_mask",
]
