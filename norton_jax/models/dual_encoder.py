"""Norton / VideoCLIP dual encoder (`MMFusionSeparate`, spec §3.2-3.5, T16-T17) in Flax NNX.

Inputs follow the data pipeline's layout (spec §3.2):

* `caps [B, Lc]` int: `[CLS] [SEP] w_1 .. w_n [SEP] [PAD] ...`
* `cmasks [B, Lc]` bool: 1 for the first n+3 positions
* `vfeats [B, Lv, 512]` float: S3D features, zeros after the real frames
* `vmasks [B, Lv]` bool: 1 for real frames

Video side: `linear1 -> exact GELU -> LayerNorm(1e-5) -> linear2` per frame, then the
sequence `[word_emb(caps[:,0]), x_1..x_Lv, word_emb(caps[:,1])]` (CLS/SEP embeddings from
the video encoder's own table), positions `0..Lv+1`, token type 0, attention mask
`[cmasks[:,0], vmasks, cmasks[:,1]]`, then the video BERT.
Text side: a BERT over `[caps[:,0], caps[:,2:]]` with mask `[cmasks[:,0], cmasks[:,2:]]`.

Outputs (a dict; the names the losses consume):

| key | shape | dtype |
|---|---|---|
| pooled_video | [B, D] | float32 |
| pooled_text | [B, D] | float32 |
| video_outputs | [B, Lv+2, D] | float32 |
| text_outputs | [B, Lc-1, D] | float32 |
| video_mask_outputs | [B, Lv+2] | bool, `[0, vmasks, 1]` |
| text_mask_outputs | [B, Lc-1] | bool, `[0, cmasks[:,2:]]` |

Outputs are returned in float32 whatever the compute dtype (the cast is cheap and the
losses, Sinkhorn in particular, want float32). Pooling is a masked mean in float32.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from norton_jax.models.bert import BertModel, gelu_exact, make_layer_norm, make_linear
from norton_jax.models.config import ModelConfig

Outputs = dict[str, jax.Array]


def masked_mean(
    outputs: jax.Array,  # [batch, length, dim]
    mask: jax.Array,  # [batch, length] bool
) -> jax.Array:  # [batch, dim] float32
    """`sum_l outputs[:, l] * mask[:, l] / sum_l mask[:, l]` in float32 (reference pooling)."""
    m = mask.astype(jnp.float32)
    total = jnp.sum(outputs.astype(jnp.float32) * m[..., None], axis=1)
    return total / jnp.sum(m, axis=1, keepdims=True)


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_inputs(config: ModelConfig, caps, cmasks, vfeats, vmasks) -> None:
    """Static shape checks always; value checks (token ids in range, a poolable text token)
    only on concrete (non-traced) inputs, where they are cheap and catch NaN-producing data."""
    if caps is not None:
        if caps.ndim != 2 or cmasks is None or cmasks.shape != caps.shape:
            raise ValueError(
                f"caps and cmasks must both be [batch, Lc]; got caps {getattr(caps, 'shape', None)}, "
                f"cmasks {getattr(cmasks, 'shape', None)}"
            )
        if caps.shape[1] < 3:
            raise ValueError(f"caps must have at least 3 tokens ([CLS] [SEP] ... [SEP]); got Lc={caps.shape[1]}")
        if not jnp.issubdtype(caps.dtype, jnp.integer):
            raise ValueError(f"caps must be an integer array, got dtype {caps.dtype}")
        if caps.shape[1] - 1 > config.max_position_embeddings:
            raise ValueError(
                f"text length Lc-1={caps.shape[1] - 1} exceeds max_position_embeddings="
                f"{config.max_position_embeddings}"
            )
        if _is_concrete(caps):
            ids = np.asarray(caps)
            if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
                raise ValueError(
                    f"caps holds token ids in [{ids.min()}, {ids.max()}] outside the vocabulary "
                    f"[0, {config.vocab_size})"
                )
    if vfeats is not None:
        if vfeats.ndim != 3 or vfeats.shape[-1] != config.video_input_dim:
            raise ValueError(
                f"vfeats must be [batch, Lv, {config.video_input_dim}], got {vfeats.shape}"
            )
        if vmasks is None or vmasks.shape != vfeats.shape[:2]:
            raise ValueError(
                f"vmasks must be [batch, Lv] = {vfeats.shape[:2]}, got {getattr(vmasks, 'shape', None)}"
            )
        if vfeats.shape[1] + 2 > config.max_position_embeddings:
            raise ValueError(
                f"video length Lv+2={vfeats.shape[1] + 2} exceeds max_position_embeddings="
                f"{config.max_position_embeddings}"
            )
        if caps is not None and caps.shape[0] != vfeats.shape[0]:
            raise ValueError(f"batch mismatch: caps {caps.shape[0]} vs vfeats {vfeats.shape[0]}")


class VideoTokenMLP(nnx.Module):
    """Per-frame projection `linear2(LayerNorm_1e-5(GELU(linear1(x))))` (reference `VideoTokenMLP`)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.linear1 = make_linear(config.video_input_dim, d, config, rngs)
        self.layer_norm = make_layer_norm(d, config.videomlp_layer_norm_eps, config, rngs)
        self.linear2 = make_linear(d, d, config, rngs)

    def __call__(self, vfeats: jax.Array) -> jax.Array:  # [B, Lv, 512] -> [B, Lv, D]
        return self.linear2(self.layer_norm(gelu_exact(self.linear1(vfeats))))


class VideoEncoder(nnx.Module):
    """`MMBertForEncoder`: video MLP + BERT over `[CLS] frames [SEP]` (no pooler).

    With `config.num_labels > 0` it is `MMBertForTokenClassification` (COIN fine-tuning,
    spec §3.6): a `classifier` Linear(D, num_labels) applied by `DualEncoder.classify_frames`
    (state-dict key `video_encoder.classifier.{weight,bias}`).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.videomlp = VideoTokenMLP(config, rngs=rngs)
        self.bert = BertModel(config, config.num_hidden_video_layers, rngs=rngs)
        if config.num_labels > 0:
            self.classifier = make_linear(config.hidden_size, config.num_labels, config, rngs)

    def __call__(
        self,
        caps: jax.Array,  # [B, Lc] int (only [:, :2] used)
        cmasks: jax.Array,  # [B, Lc] bool (only [:, :2] used)
        vfeats: jax.Array,  # [B, Lv, 512]
        vmasks: jax.Array,  # [B, Lv] bool
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> Outputs:
        tokens = self.videomlp(vfeats)  # [B, Lv, D]
        cls_sep = self.bert.embeddings.word_embeddings(caps[:, :2])  # [B, 2, D]
        inputs = jnp.concatenate([cls_sep[:, :1], tokens.astype(cls_sep.dtype), cls_sep[:, 1:]], axis=1)
        length = inputs.shape[1]  # Lv + 2
        position_ids = jnp.arange(length, dtype=jnp.int32)
        token_type_ids = jnp.zeros((length,), dtype=jnp.int32)
        attention_mask = jnp.concatenate(
            [cmasks[:, :1].astype(bool), vmasks.astype(bool), cmasks[:, 1:2].astype(bool)], axis=1
        )
        out, emb = self.bert(
            inputs, attention_mask, position_ids, token_type_ids,
            deterministic=deterministic, rngs=rngs,
        )
        b = vmasks.shape[0]
        pool_mask = jnp.concatenate(
            [jnp.zeros((b, 1), bool), vmasks.astype(bool), jnp.ones((b, 1), bool)], axis=1
        )
        return {
            "video_outputs": out.astype(jnp.float32),
            "video_mask_outputs": pool_mask,
            "pooled_video": masked_mean(out, pool_mask),
            "video_tokens": tokens.astype(jnp.float32),
            "video_embeddings": emb.astype(jnp.float32),
        }


def encode_text(
    bert: BertModel,
    caps: jax.Array,  # [B, Lc] int
    cmasks: jax.Array,  # [B, Lc] bool
    *,
    deterministic: bool | None = None,
    rngs: nnx.Rngs | None = None,
) -> Outputs:
    """Text side of `MMFusionSeparate.forward_text`: BERT over `[caps[:,0], caps[:,2:]]`."""
    ids = jnp.concatenate([caps[:, :1], caps[:, 2:]], axis=1)  # [B, Lc-1]
    attention_mask = jnp.concatenate([cmasks[:, :1], cmasks[:, 2:]], axis=1).astype(bool)
    length = ids.shape[1]
    inputs = bert.embeddings.word_embeddings(ids)
    position_ids = jnp.arange(length, dtype=jnp.int32)
    token_type_ids = jnp.zeros((length,), dtype=jnp.int32)
    out, emb = bert(
        inputs, attention_mask, position_ids, token_type_ids, deterministic=deterministic, rngs=rngs
    )
    b = caps.shape[0]
    pool_mask = jnp.concatenate([jnp.zeros((b, 1), bool), cmasks[:, 2:].astype(bool)], axis=1)
    return {
        "text_outputs": out.astype(jnp.float32),
        "text_mask_outputs": pool_mask,
        "pooled_text": masked_mean(out, pool_mask),
        "text_embeddings": emb.astype(jnp.float32),
    }


_INTERMEDIATES = ("video_tokens", "video_embeddings", "text_embeddings")


class DualEncoder(nnx.Module):
    """Norton's two separate encoders (`MMFusionSeparate`).

    Attributes mirror the reference state dict: `video_encoder.videomlp`,
    `video_encoder.bert`, `text_encoder` (a BERT). Dropout follows NNX conventions:
    `model.train()` / `model.eval()` (or `nnx.view(model, deterministic=...)`), or pass
    `deterministic=` to the call; dropout keys come from the `dropout` stream of the `rngs`
    given at construction, or from `rngs=` passed to the call.

    Example::

        model = DualEncoder(tiny_model_config(), rngs=nnx.Rngs(params=0, dropout=1))
        model.eval()
        out = model(caps, cmasks, vfeats, vmasks)
        out["pooled_video"]  # [B, D]
    """

    def __init__(
        self,
        config: ModelConfig | ml_collections.ConfigDict | Mapping[str, Any],
        *,
        rngs: nnx.Rngs,
    ):
        self.config = ModelConfig.from_any(config)
        self.video_encoder = VideoEncoder(self.config, rngs=rngs)
        self.text_encoder = BertModel(self.config, self.config.num_hidden_text_layers, rngs=rngs)

    def encode_video(
        self,
        caps: jax.Array,  # [B, Lc] int
        cmasks: jax.Array,  # [B, Lc] bool
        vfeats: jax.Array,  # [B, Lv, 512]
        vmasks: jax.Array,  # [B, Lv] bool
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> Outputs:
        """`video_outputs [B, Lv+2, D]`, `video_mask_outputs [B, Lv+2]`, `pooled_video [B, D]`."""
        _check_inputs(self.config, caps, cmasks, vfeats, vmasks)
        out = self.video_encoder(caps, cmasks, vfeats, vmasks, deterministic=deterministic, rngs=rngs)
        return {k: v for k, v in out.items() if k not in _INTERMEDIATES}

    def classify_frames(
        self,
        caps: jax.Array,  # [B, Lc] int (only [:, :2] used; COIN: [CLS][SEP][PAD][SEP])
        cmasks: jax.Array,  # [B, Lc] bool (COIN: [0, 1, 0, 1], [CLS] masked)
        vfeats: jax.Array,  # [B, Lv, 512]
        vmasks: jax.Array,  # [B, Lv] bool
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:  # [B, Lv, num_labels] float32
        """Per-frame class logits of `MMFusionSeparateActionSegmentation` (spec §3.6):
        `classifier(video_outputs)[:, 1:Lv+1]` (frame positions only; no dropout before
        the classifier, as the reference's unused `dropout` member)."""
        if self.config.num_labels <= 0:
            raise ValueError("classify_frames needs a model built with model.num_labels > 0 (COIN: 779)")
        _check_inputs(self.config, caps, cmasks, vfeats, vmasks)
        out = self.video_encoder(caps, cmasks, vfeats, vmasks, deterministic=deterministic, rngs=rngs)
        frames = out["video_outputs"][:, 1 : vfeats.shape[1] + 1]  # [B, Lv, D]
        return self.video_encoder.classifier(frames).astype(jnp.float32)

    def encode_text(
        self,
        caps: jax.Array,  # [B, Lc] int
        cmasks: jax.Array,  # [B, Lc] bool
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> Outputs:
        """`text_outputs [B, Lc-1, D]`, `text_mask_outputs [B, Lc-1]`, `pooled_text [B, D]`."""
        _check_inputs(self.config, caps, cmasks, None, None)
        out = encode_text(self.text_encoder, caps, cmasks, deterministic=deterministic, rngs=rngs)
        return {k: v for k, v in out.items() if k not in _INTERMEDIATES}

    def __call__(
        self,
        caps: jax.Array,  # [B, Lc] int
        cmasks: jax.Array,  # [B, Lc] bool
        vfeats: jax.Array,  # [B, Lv, 512]
        vmasks: jax.Array,  # [B, Lv] bool
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | None = None,
        return_intermediates: bool = False,
    ) -> Outputs:
        """Both encoders. Returns the six keys of the module docstring; with
        `return_intermediates` also `video_tokens [B, Lv, D]` (MLP output),
        `video_embeddings [B, Lv+2, D]` and `text_embeddings [B, Lc-1, D]` (embedding LN output)."""
        _check_inputs(self.config, caps, cmasks, vfeats, vmasks)
        out = dict(self.video_encoder(caps, cmasks, vfeats, vmasks, deterministic=deterministic, rngs=rngs))
        out.update(encode_text(self.text_encoder, caps, cmasks, deterministic=deterministic, rngs=rngs))
        if not return_intermediates:
            out = {k: v for k, v in out.items() if k not in _INTERMEDIATES}
        return out


def init_model(
    config: ModelConfig | ml_collections.ConfigDict | Mapping[str, Any],
    seed: int = 0,
) -> DualEncoder:
    """A randomly initialised DualEncoder (BERT init: N(0, 0.02)); dropout stream seeded `seed + 1`."""
    return DualEncoder(config, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def abstract_model(
    config: ModelConfig | ml_collections.ConfigDict | Mapping[str, Any],
) -> DualEncoder:
    """The model with `jax.ShapeDtypeStruct` leaves (`nnx.eval_shape`): no memory allocated."""
    return nnx.eval_shape(lambda: init_model(config))
