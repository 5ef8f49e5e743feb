"""Post-LN BERT encoder in Flax NNX with the reference's numerics (spec §3.3-3.4, §3.9, T16).

The reference encoders are transformers-3.4 `BertModel`s. Parity-relevant details kept here:

* exact-erf GELU in the FFN (Flax's `nnx.gelu` default is the tanh approximation);
* LayerNorm eps 1e-12 with the two-pass variance (`use_fast_variance=False`);
* embeddings summed as `(inputs + position) + token_type`, then LayerNorm, then dropout;
* attention scores `q k^T / sqrt(head_dim)` plus the additive key mask `(1 - mask) * -10000`,
  eager softmax, dropout on the probabilities;
* post-LN residual blocks: `LN(x + dropout(dense(attn)))`, `LN(h + dropout(dense(gelu(dense(h)))))`.

Module and attribute names mirror the reference state dict (spec §3.8) so that the
Flax <-> PyTorch key mapping in `norton_jax.models.keys` is mechanical:
`LayerNorm` -> `layer_norm`, `attention.self` -> `attention.self_attn`,
`encoder.layer.{i}` -> `encoder.layers.{i}`. The BERT pooler is not built (unused, §3.3).

Mixed precision: parameters are stored in `config.param_dtype`, activations computed in
`config.dtype`; LayerNorm statistics, the mask addition and the softmax run in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from norton_jax.models.config import ModelConfig

# BERT's initializer_range: weights and embeddings ~ N(0, 0.02), biases 0, LayerNorm 1/0.
_INIT = nnx.initializers.normal(stddev=0.02)


def gelu_exact(x: jax.Array) -> jax.Array:
    """The erf form of GELU used by BERT (not the tanh approximation)."""
    return jax.nn.gelu(x, approximate=False)


def make_layer_norm(features: int, eps: float, config: ModelConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm with torch semantics: biased two-pass variance, eps inside the sqrt."""
    return nnx.LayerNorm(
        features,
        epsilon=eps,
        use_fast_variance=False,
        dtype=config.compute_dtype,
        param_dtype=config.params_dtype,
        rngs=rngs,
    )


def make_linear(din: int, dout: int, config: ModelConfig, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        din,
        dout,
        kernel_init=_INIT,
        dtype=config.compute_dtype,
        param_dtype=config.params_dtype,
        rngs=rngs,
    )


def make_embed(num: int, features: int, config: ModelConfig, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(
        num,
        features,
        embedding_init=_INIT,
        dtype=config.compute_dtype,
        param_dtype=config.params_dtype,
        rngs=rngs,
    )


def additive_attention_mask(mask: jax.Array, value: float) -> jax.Array:
    """Key-padding mask `[batch, keys]` (1 = attend) -> additive bias `[batch, 1, 1, keys]` (float32)."""
    mask = mask.astype(jnp.float32)
    return ((1.0 - mask) * value)[:, None, None, :]


class BertEmbeddings(nnx.Module):
    """Word / position / token-type tables and the embedding LayerNorm + dropout."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.word_embeddings = make_embed(config.vocab_size, d, config, rngs)
        self.position_embeddings = make_embed(config.max_position_embeddings, d, config, rngs)
        self.token_type_embeddings = make_embed(config.type_vocab_size, d, config, rngs)
        self.layer_norm = make_layer_norm(d, config.layer_norm_eps, config, rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout_prob, rngs=rngs)

    def __call__(
        self,
        inputs_embeds: jax.Array,  # [batch, length, dim]
        position_ids: jax.Array,  # [length] or [batch, length]
        token_type_ids: jax.Array,  # [length] or [batch, length]
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:  # [batch, length, dim]
        """`LayerNorm((inputs + position) + token_type)` followed by dropout."""
        x = inputs_embeds + self.position_embeddings(position_ids)
        x = x + self.token_type_embeddings(token_type_ids)
        x = self.layer_norm(x)
        return self.dropout(x, deterministic=deterministic, rngs=rngs)


class BertSelfAttention(nnx.Module):
    """Multi-head scaled dot-product attention with separate query/key/value projections."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.compute_dtype = config.compute_dtype
        self.query = make_linear(d, d, config, rngs)
        self.key = make_linear(d, d, config, rngs)
        self.value = make_linear(d, d, config, rngs)
        self.dropout = nnx.Dropout(config.attention_probs_dropout_prob, rngs=rngs)

    def _heads(self, x: jax.Array) -> jax.Array:
        b, l, _ = x.shape
        return x.reshape(b, l, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)  # [b, h, l, hd]

    def __call__(
        self,
        hidden: jax.Array,  # [batch, length, dim]
        mask_bias: jax.Array,  # [batch, 1, 1, length] float32 additive
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:  # [batch, length, dim]
        q = self._heads(self.query(hidden))
        k = self._heads(self.key(hidden))
        v = self._heads(self.value(hidden))
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
        scores = scores / math.sqrt(self.head_dim) + mask_bias
        probs = jax.nn.softmax(scores, axis=-1).astype(self.compute_dtype)
        probs = self.dropout(probs, deterministic=deterministic, rngs=rngs)
        ctx = jnp.einsum("bhqk,bhkd->bhqd", probs, v)
        b, _, l, _ = ctx.shape
        return ctx.transpose(0, 2, 1, 3).reshape(b, l, self.num_heads * self.head_dim)


class BertResidualOutput(nnx.Module):
    """`LayerNorm(residual + dropout(dense(x)))` (BertSelfOutput / BertOutput)."""

    def __init__(self, din: int, config: ModelConfig, *, rngs: nnx.Rngs):
        self.dense = make_linear(din, config.hidden_size, config, rngs)
        self.layer_norm = make_layer_norm(config.hidden_size, config.layer_norm_eps, config, rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout_prob, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,  # [batch, length, din]
        residual: jax.Array,  # [batch, length, dim]
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:  # [batch, length, dim]
        h = self.dropout(self.dense(x), deterministic=deterministic, rngs=rngs)
        return self.layer_norm(h + residual)


class BertAttention(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.self_attn = BertSelfAttention(config, rngs=rngs)
        self.output = BertResidualOutput(config.hidden_size, config, rngs=rngs)

    def __call__(self, hidden, mask_bias, *, deterministic=None, rngs=None):
        ctx = self.self_attn(hidden, mask_bias, deterministic=deterministic, rngs=rngs)
        return self.output(ctx, hidden, deterministic=deterministic, rngs=rngs)


class BertIntermediate(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.dense = make_linear(config.hidden_size, config.intermediate_size, config, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return gelu_exact(self.dense(x))


class BertLayer(nnx.Module):
    """One post-LN transformer block."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.attention = BertAttention(config, rngs=rngs)
        self.intermediate = BertIntermediate(config, rngs=rngs)
        self.output = BertResidualOutput(config.intermediate_size, config, rngs=rngs)

    def __call__(
        self,
        hidden: jax.Array,  # [batch, length, dim]
        mask_bias: jax.Array,  # [batch, 1, 1, length]
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:  # [batch, length, dim]
        a = self.attention(hidden, mask_bias, deterministic=deterministic, rngs=rngs)
        return self.output(self.intermediate(a), a, deterministic=deterministic, rngs=rngs)


class BertStack(nnx.Module):
    """`encoder.layer.{0..n-1}` of the reference."""

    def __init__(self, config: ModelConfig, num_layers: int, *, rngs: nnx.Rngs):
        self.remat = config.remat
        self.layers = nnx.List([BertLayer(config, rngs=rngs) for _ in range(num_layers)])

    def __call__(self, hidden, mask_bias, *, deterministic=None, rngs=None):
        """With `config.remat`, each layer is a `jax.checkpoint` block (`_remat_layer`): only
        its input is kept for the backward pass, which recomputes the layer's activations.
        Without dropout the numbers equal the plain call's; with dropout each layer draws
        its masks from one key of `rngs` (other masks than the plain call, same rate)."""
        for layer in self.layers:
            if self.remat:
                hidden = _remat_layer(layer, hidden, mask_bias, rngs, deterministic=deterministic)
            else:
                hidden = layer(hidden, mask_bias, deterministic=deterministic, rngs=rngs)
        return hidden


def _remat_layer(layer: BertLayer, hidden, mask_bias, rngs, *, deterministic):
    """`layer(...)` under `jax.checkpoint` (only `hidden` is saved for the backward pass).

    The layer enters as state; its dropout draws from one key taken from `rngs` here
    (`rngs.dropout()`, outside the checkpoint), so the recomputation in the backward pass
    draws the same masks.  Without `rngs` the layer's own streams would advance inside the
    checkpoint only, so with dropout active and no `rngs` the layer runs un-rematerialised.
    """
    if rngs is None and deterministic is not True:
        return layer(hidden, mask_bias, deterministic=deterministic, rngs=rngs)
    graphdef, state = nnx.split(layer)
    key = None if rngs is None or deterministic is True else rngs.dropout()

    def pure(state, key, hidden, mask_bias):
        inner = nnx.merge(graphdef, state)
        inner_rngs = None if key is None else nnx.Rngs(dropout=key)
        return inner(hidden, mask_bias, deterministic=deterministic, rngs=inner_rngs)

    return jax.checkpoint(pure)(state, key, hidden, mask_bias)


class BertModel(nnx.Module):
    """BERT without pooler: embeddings + `num_layers` post-LN blocks."""

    def __init__(self, config: ModelConfig, num_layers: int, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = BertEmbeddings(config, rngs=rngs)
        self.encoder = BertStack(config, num_layers, rngs=rngs)

    def __call__(
        self,
        inputs_embeds: jax.Array,  # [batch, length, dim]
        attention_mask: jax.Array,  # [batch, length] 1 = attend
        position_ids: jax.Array,  # [length] or [batch, length]
        token_type_ids: jax.Array,  # [length] or [batch, length]
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Returns `(last_hidden_state [batch, length, dim], embedding_output [batch, length, dim])`."""
        emb = self.embeddings(
            inputs_embeds, position_ids, token_type_ids, deterministic=deterministic, rngs=rngs
        )
        bias = additive_attention_mask(attention_mask, self.config.attention_mask_value)
        out = self.encoder(emb, bias, deterministic=deterministic, rngs=rngs)
        return out, emb
