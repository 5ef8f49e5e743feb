"""Model-input layout of the reference's ``DSAligner`` (spec §3.2, §5.0) and its tokenisation.

Text: ``caps [N, Lc] = [CLS] [SEP] w.. [SEP] [PAD]..`` with ``Lc = max_len - max_video_len``.
Video: each segment's first ``max_video_len`` feature rows, zero padded, with the dummy
caption ``[CLS][SEP][PAD][SEP]`` the video encoder reads.  The special token ids are those of
:mod:`data_pipeline.tokenization` (one definition for the data path and the model inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from data_pipeline.tokenization import CLS_ID, PAD_ID, SEP_ID, build_text_seq, get_tokenizer

__all__ = ["Layout", "RETRIEVAL_LAYOUT", "QA_LAYOUT", "tokenize_texts", "text_inputs", "video_inputs"]


@dataclass(frozen=True)
class Layout:
    """``DSAligner`` geometry: ``max_video_len`` frames, ``max_len - max_video_len`` text slots."""

    max_video_len: int
    max_len: int

    @property
    def text_len(self) -> int:  # Lc
        return self.max_len - self.max_video_len


RETRIEVAL_LAYOUT = Layout(32, 96)  # YouCook, MSR-VTT retrieval, COIN, HTM-Align (Lc 64, <= 61 words)
QA_LAYOUT = Layout(16, 96)  # MSR-VTT multiple choice (Lc 80, <= 77 words)


def tokenize_texts(texts: Sequence[object]) -> list[np.ndarray]:
    """bert-base-uncased WordPiece ids of each text, no special tokens, not truncated.

    ``DSAligner`` tokenises the whole sentence (no 96-character / 32-token cut of the
    pretraining store) and truncates to the layout when the sequence is built.
    Non-strings give no tokens.
    """
    clean = [t if isinstance(t, str) else "" for t in texts]
    if not clean:
        return []
    tok = get_tokenizer()
    return [np.asarray(e.ids, np.int32) for e in tok.encode_batch(clean, add_special_tokens=False)]


def text_inputs(texts: Sequence[object], layout: Layout = RETRIEVAL_LAYOUT) -> tuple[np.ndarray, np.ndarray]:
    """``caps [N, Lc] int32 = [CLS] [SEP] w.. [SEP] [PAD]..``, ``cmasks [N, Lc] bool`` (spec §3.2).

    Words are cut to ``Lc - 3`` (61 for the retrieval layout, 77 for QA).
    """
    rows = [build_text_seq(t, layout.max_len, layout.max_video_len) for t in tokenize_texts(texts)]
    if not rows:
        lc = layout.text_len
        return np.zeros((0, lc), np.int32), np.zeros((0, lc), bool)
    caps, cmasks = zip(*rows)
    return np.stack(caps), np.stack(cmasks)


def video_inputs(
    segments: Sequence[np.ndarray], max_video_len: int, *, mask_cls: bool = False, feature_dim: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Video side of ``DSAligner`` (spec §3.2): each segment's first ``max_video_len`` rows.

    Returns ``caps [N, 4]`` (``[CLS][SEP][PAD][SEP]``; the video encoder reads ``[:, :2]``),
    ``cmasks [N, 4]`` (``[1,1,0,1]``, or ``[0,1,0,1]`` with ``mask_cls``: the dummy captions
    of COIN and YouCook-with-background that mask [CLS] out of the attention, §3.3 step 5),
    ``vfeats [N, max_video_len, D] float32`` (zeros after the real frames) and
    ``vmasks [N, max_video_len] bool``.
    """
    n = len(segments)
    dims = {int(np.shape(s)[-1]) for s in segments if np.ndim(s) == 2}
    if any(np.ndim(s) != 2 for s in segments) or len(dims) > 1:
        raise ValueError(f"video segments must all be [t, D] with one D; got dims {sorted(dims)}")
    dim = dims.pop() if dims else (feature_dim or 512)
    if feature_dim is not None and dim != feature_dim:
        raise ValueError(f"video features have {dim} dims, the model expects {feature_dim}")
    vfeats = np.zeros((n, max_video_len, dim), np.float32)
    vmasks = np.zeros((n, max_video_len), bool)
    for i, seg in enumerate(segments):
        seg = np.asarray(seg[:max_video_len], np.float32)
        vfeats[i, : len(seg)] = seg
        vmasks[i, : len(seg)] = True
    caps = np.tile(np.asarray([[CLS_ID, SEP_ID, PAD_ID, SEP_ID]], np.int32), (n, 1))
    cmasks = np.tile(np.asarray([[not mask_cls, True, False, True]], bool), (n, 1))
    return caps, cmasks, vfeats, vmasks
