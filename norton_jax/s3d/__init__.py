"""S3D-G (MIL-NCE, HowTo100M) in Flax NNX: the video network whose 512-d ``video_embedding``
Norton and VideoCLIP use as video tokens (one per second; spec §4.1, ``docs/extraction.md``).

* :mod:`norton_jax.s3d.model`: the :class:`S3D` module (``[B, T, H, W, 3]`` in ``[0, 1]``).
* :mod:`norton_jax.s3d.weights`: the importer of the public PyTorch state dict
  (``s3d_howto100m.pth`` layout): :func:`read_state_dict`, :func:`build_s3d`.
* :mod:`norton_jax.s3d.encoder`: :class:`S3DEncoder`, batched jitted inference on uint8 chunks.
* :mod:`norton_jax.s3d.video`: decoding with PyAV at 30 fps, resize + centre crop to 224.
"""
from norton_jax.s3d.encoder import S3DEncoder, l2_normalize
from norton_jax.s3d.model import EMBEDDING_DIM, S3D
from norton_jax.s3d.weights import S3DWeightsError, build_s3d, load_state_dict, read_state_dict

__all__ = ["S3D", "EMBEDDING_DIM", "S3DEncoder", "l2_normalize", "S3DWeightsError", "build_s3d",
           "load_state_dict", "read_state_dict"]
