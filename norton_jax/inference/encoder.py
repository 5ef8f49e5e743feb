"""The embedding API: a model's text and video encoders, jitted and batched (eval mode, spec §5.0).

For unpaired inputs (a folder of videos, a list of sentences)::

    from norton_jax.inference import encode_texts, encode_videos, load_model, unit_normalize
    model, _ = load_model("workdir/")
    clips = encode_videos(model, [feat_a, feat_b])  # [2, D]  (feat: [T, 512] S3D features)
    caps = encode_texts(model, ["crack the eggs", "whisk"])  # [2, D]
    ranking = unit_normalize(caps) @ unit_normalize(clips).T  # cosine, [captions, clips]

:class:`Encoder` is the same machinery for callers that lay inputs out themselves (the
evaluation protocols): it keeps the split model and one jitted function per shape.
"""

from __future__ import annotations

import functools
from typing import Sequence, Union

import jax
import numpy as np
from flax import nnx

from norton_jax.inference.batching import run_padded
from norton_jax.inference.layout import RETRIEVAL_LAYOUT, Layout, text_inputs, video_inputs
from norton_jax.models.dual_encoder import DualEncoder

__all__ = ["Encoder", "encode_texts", "encode_videos", "unit_normalize"]


def unit_normalize(x: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """``x / max(||x||, eps)`` along the last axis (rows of embeddings -> unit length)."""
    x = np.asarray(x)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnums=(0,))
def _text_fn(graphdef, state, caps, cmasks):
    model = nnx.merge(graphdef, state)
    return model.encode_text(caps, cmasks, deterministic=True)["pooled_text"]  # [B, D]


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("frames",))
def _video_fn(graphdef, state, caps, cmasks, vfeats, vmasks, *, frames: bool):
    model = nnx.merge(graphdef, state)
    out = model.encode_video(caps, cmasks, vfeats, vmasks, deterministic=True)
    # pooled [B, D]; frame outputs [B, Lv, D] (positions 1..Lv, padded slots included)
    return out["pooled_video"], (out["video_outputs"][:, 1:-1] if frames else None)


class Encoder:
    """The model's text and video encoders, jitted and batched (eval mode, spec §5.0).

    Inputs are numpy arrays of any length; they are processed in chunks of at most
    ``batch_size`` rows padded to a power of two (:func:`~norton_jax.inference.batching.run_padded`),
    so a run compiles a handful of shapes.
    """

    def __init__(self, model: DualEncoder, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        model.eval()
        self.config = model.config
        self.graphdef, self.state = nnx.split(model)
        self.batch_size = batch_size

    def pooled_text(self, caps: np.ndarray, cmasks: np.ndarray) -> np.ndarray:
        """``pooled_text [N, D]`` of ``caps/cmasks [N, Lc]``."""
        fn = functools.partial(_text_fn, self.graphdef, self.state)
        return run_padded(fn, [caps, cmasks], self.batch_size)[0]

    def texts(self, texts: Sequence[object], layout: Layout = RETRIEVAL_LAYOUT) -> np.ndarray:
        """``pooled_text [N, D]`` of raw sentences laid out as ``DSAligner``."""
        return self.pooled_text(*text_inputs(texts, layout))

    def video(
        self, caps: np.ndarray, cmasks: np.ndarray, vfeats: np.ndarray, vmasks: np.ndarray, *, frames: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``pooled_video [N, D]`` and (with ``frames``) frame outputs ``[N, Lv, D]``."""
        fn = functools.partial(_video_fn, self.graphdef, self.state, frames=frames)
        pooled, frame_out = run_padded(fn, [caps, cmasks, vfeats, vmasks], self.batch_size)
        return pooled, frame_out

    def segments(
        self, segments: Sequence[np.ndarray], max_video_len: int = 32, *, mask_cls: bool = False, frames: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Encodes feature segments ``[t_i, D]`` (first ``max_video_len`` rows of each)."""
        return self.video(
            *video_inputs(segments, max_video_len, mask_cls=mask_cls, feature_dim=self.config.video_input_dim),
            frames=frames,
        )


ModelOrEncoder = Union[DualEncoder, Encoder]


def _encoder(model: ModelOrEncoder, batch_size: int) -> Encoder:
    return model if isinstance(model, Encoder) else Encoder(model, batch_size=batch_size)


def encode_videos(
    model: ModelOrEncoder,
    features: Sequence[np.ndarray] | np.ndarray,
    *,
    batch_size: int = 64,
    max_video_len: int = RETRIEVAL_LAYOUT.max_video_len,
    normalize: bool = False,
) -> np.ndarray:
    """``pooled_video [N, D]`` float32 of N feature arrays (one embedding per clip/video).

    ``features``: a list of ``[t_i, 512]`` arrays (any lengths), a ``[N, t, 512]`` array, or
    one ``[t, 512]`` array (N = 1).  Each clip is laid out as ``DSAligner`` (spec §3.2): its
    first ``max_video_len`` seconds (32 by default; longer clips are cut, as the reference
    evaluation does), zero padded, [CLS] attended.  ``normalize`` returns unit rows (for
    cosine search).  ``model`` may also be an :class:`Encoder` (reuses its compiled functions).
    """
    if isinstance(features, np.ndarray) and features.ndim == 2:
        features = [features]
    segments = [np.asarray(f, np.float32) for f in features]
    if not segments:
        raise ValueError("encode_videos: no feature arrays given")
    bad = [i for i, s in enumerate(segments) if s.ndim != 2 or s.shape[0] == 0]
    if bad:
        raise ValueError(f"encode_videos: feature array {bad[0]} has shape {segments[bad[0]].shape}; "
                         "expected a non-empty [T, D] array per clip")
    pooled, _ = _encoder(model, batch_size).segments(segments, max_video_len)
    return unit_normalize(pooled) if normalize else pooled


def encode_texts(
    model: ModelOrEncoder,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    layout: Layout = RETRIEVAL_LAYOUT,
    normalize: bool = False,
) -> np.ndarray:
    """``pooled_text [N, D]`` float32 of N sentences (``[CLS] [SEP] words [SEP]``, at most
    ``layout.text_len - 3`` word pieces: 61 in the retrieval layout).  ``normalize`` returns
    unit rows.  ``model`` may also be an :class:`Encoder`."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("encode_texts: no texts given")
    pooled = _encoder(model, batch_size).texts(texts, layout)
    return unit_normalize(pooled) if normalize else pooled
