"""What every tool that runs a trained model shares (layer 2, see ``docs/architecture.md``).

* :mod:`~norton_jax.inference.layout`: the reference's model-input layout (``DSAligner``,
  spec §3.2) and tokenisation: :class:`Layout`, :data:`RETRIEVAL_LAYOUT`, :func:`text_inputs`,
  :func:`video_inputs`.
* :mod:`~norton_jax.inference.checkpoints`: :func:`resolve_checkpoint`, :func:`load_model`.
* :mod:`~norton_jax.inference.batching`: :func:`run_padded` (pad to a power-of-two bucket, run jitted).
* :mod:`~norton_jax.inference.encoder`: the embedding API :func:`encode_videos`,
  :func:`encode_texts`, :func:`unit_normalize` and the batched jitted :class:`Encoder`.
"""

from norton_jax.inference.batching import bucket_size, run_padded
from norton_jax.inference.checkpoints import (CheckpointRef, load_model, model_config_arg, parse_step_arg,
                                              resolve_checkpoint)
from norton_jax.inference.encoder import Encoder, encode_texts, encode_videos, unit_normalize
from norton_jax.inference.layout import (
    QA_LAYOUT,
    RETRIEVAL_LAYOUT,
    Layout,
    text_inputs,
    tokenize_texts,
    video_inputs,
)

__all__ = [
    "CheckpointRef", "Encoder", "Layout", "QA_LAYOUT", "RETRIEVAL_LAYOUT", "bucket_size", "encode_texts",
    "encode_videos", "load_model", "model_config_arg", "parse_step_arg", "resolve_checkpoint", "run_padded", "text_inputs",
    "tokenize_texts", "unit_normalize", "video_inputs",
]
