"""Self-contained PyTorch rebuild of the Norton / VideoCLIP dual encoder (`MMFusionSeparate`).

For users who want to run a norton-jax export in PyTorch without the reference code or
transformers. Only this module imports torch. Numerics follow the reference
(transformers 3.4 BERT; spec §3.3-3.5, §3.9): exact-erf GELU, LayerNorm eps 1e-12 (1e-5 in
the video MLP), embeddings summed as `(inputs + position) + token_type`, scores
`q k^T / sqrt(head_dim)` plus the additive `(1 - mask) * -10000` key mask, eager softmax,
post-LN blocks, dropout 0.1 in `train()` mode only, masked-mean pooling.

Its `state_dict()` keys are exactly those written by `norton_jax.export_torch` (the
reference keys minus poolers and `position_ids`), so::

    from norton_jax.torch_reference import load_torch_dual_encoder
    model = load_torch_dual_encoder("model.safetensors")       # eval mode
    out = model(caps, cmasks, vfeats, vmasks)                  # torch tensors
    out["pooled_video"], out["pooled_text"]                    # [B, D]
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["TorchDualEncoder", "load_torch_dual_encoder"]

_DEFAULTS = {
    "hidden_size": 768,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "num_hidden_video_layers": 6,
    "num_hidden_text_layers": 12,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "video_input_dim": 512,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "layer_norm_eps": 1e-12,
    "videomlp_layer_norm_eps": 1e-5,
    "attention_mask_value": -10000.0,
}


class _Embeddings(nn.Module):
    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        d = c["hidden_size"]
        self.word_embeddings = nn.Embedding(c["vocab_size"], d)
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], d)
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], d)
        self.LayerNorm = nn.LayerNorm(d, eps=c["layer_norm_eps"])
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])

    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        x = inputs_embeds + self.position_embeddings(position_ids)
        x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class _SelfAttention(nn.Module):
    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        d = c["hidden_size"]
        self.num_heads = c["num_attention_heads"]
        self.head_dim = d // self.num_heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.dropout = nn.Dropout(c["attention_probs_dropout_prob"])

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, l, _ = x.shape
        return x.view(b, l, self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, hidden: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(hidden)), self._heads(self.value(hidden))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask_bias
        probs = self.dropout(torch.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.shape[0], ctx.shape[1], -1)


class _ResidualOutput(nn.Module):
    def __init__(self, din: int, c: Mapping[str, Any]):
        super().__init__()
        self.dense = nn.Linear(din, c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _ResidualOutput(c["hidden_size"], c)

    def forward(self, hidden: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, mask_bias), hidden)


class _Intermediate(nn.Module):
    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(x))  # exact erf form


class _Layer(nn.Module):
    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _ResidualOutput(c["intermediate_size"], c)

    def forward(self, hidden: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        a = self.attention(hidden, mask_bias)
        return self.output(self.intermediate(a), a)


class _Encoder(nn.Module):
    def __init__(self, c: Mapping[str, Any], num_layers: int):
        super().__init__()
        self.layer = nn.ModuleList([_Layer(c) for _ in range(num_layers)])

    def forward(self, hidden: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, mask_bias)
        return hidden


class _Bert(nn.Module):
    """BERT without pooler; input embeddings are supplied by the caller."""

    def __init__(self, c: Mapping[str, Any], num_layers: int):
        super().__init__()
        self.mask_value = float(c["attention_mask_value"])
        self.embeddings = _Embeddings(c)
        self.encoder = _Encoder(c, num_layers)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = inputs_embeds.shape[1]
        device = inputs_embeds.device
        position_ids = torch.arange(length, device=device)[None]
        token_type_ids = torch.zeros_like(position_ids)
        emb = self.embeddings(inputs_embeds, position_ids, token_type_ids)
        bias = (1.0 - attention_mask.to(emb.dtype))[:, None, None, :] * self.mask_value
        return self.encoder(emb, bias)


class _VideoTokenMLP(nn.Module):
    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        d = c["hidden_size"]
        self.linear1 = nn.Linear(c["video_input_dim"], d)
        self.LayerNorm = nn.LayerNorm(d, eps=c["videomlp_layer_norm_eps"])
        self.linear2 = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.LayerNorm(nn.functional.gelu(self.linear1(x))))


class _VideoEncoder(nn.Module):
    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        self.videomlp = _VideoTokenMLP(c)
        self.bert = _Bert(c, c["num_hidden_video_layers"])


def _masked_mean(outputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(outputs.dtype)
    return (outputs * m[..., None]).sum(dim=1) / m.sum(dim=1, keepdim=True)


class TorchDualEncoder(nn.Module):
    """PyTorch dual encoder; `forward(caps, cmasks, vfeats, vmasks)` returns the same dict
    as the Flax `DualEncoder` (`pooled_video`, `pooled_text`, `video_outputs`,
    `text_outputs`, `video_mask_outputs`, `text_mask_outputs`)."""

    def __init__(self, config: Mapping[str, Any] | None = None, **overrides: Any):
        super().__init__()
        c = dict(_DEFAULTS)
        c.update({k: v for k, v in (config or {}).items() if k in _DEFAULTS})
        c.update(overrides)
        if c["hidden_size"] % c["num_attention_heads"]:
            raise ValueError(f"hidden_size {c['hidden_size']} not divisible by num_attention_heads {c['num_attention_heads']}")
        self.config = c
        self.video_encoder = _VideoEncoder(c)
        self.text_encoder = _Bert(c, c["num_hidden_text_layers"])

    def forward(
        self,
        caps: torch.Tensor,  # [B, Lc] long
        cmasks: torch.Tensor,  # [B, Lc] bool
        vfeats: torch.Tensor,  # [B, Lv, 512]
        vmasks: torch.Tensor,  # [B, Lv] bool
    ) -> dict[str, torch.Tensor]:
        caps = caps.long()
        cmasks = cmasks.bool()
        vmasks = vmasks.bool()
        b = caps.shape[0]
        # video: [CLS] frames [SEP], CLS/SEP word embeddings from the video encoder's table
        venc = self.video_encoder
        tokens = venc.videomlp(vfeats.float())
        cls_sep = venc.bert.embeddings.word_embeddings(caps[:, :2])
        vin = torch.cat([cls_sep[:, :1], tokens, cls_sep[:, 1:]], dim=1)
        vattn = torch.cat([cmasks[:, :1], vmasks, cmasks[:, 1:2]], dim=1)
        video_outputs = venc.bert(vin, vattn)
        vpool = torch.cat([torch.zeros_like(vmasks[:, :1]), vmasks, torch.ones_like(vmasks[:, :1])], dim=1)
        # text: [CLS] words [SEP] (drops the video [SEP] at position 1)
        ids = torch.cat([caps[:, :1], caps[:, 2:]], dim=1)
        tattn = torch.cat([cmasks[:, :1], cmasks[:, 2:]], dim=1)
        text_outputs = self.text_encoder(self.text_encoder.embeddings.word_embeddings(ids), tattn)
        tpool = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=caps.device), cmasks[:, 2:]], dim=1)
        return {
            "pooled_video": _masked_mean(video_outputs, vpool),
            "pooled_text": _masked_mean(text_outputs, tpool),
            "video_outputs": video_outputs,
            "text_outputs": text_outputs,
            "video_mask_outputs": vpool,
            "text_mask_outputs": tpool,
        }


def load_torch_dual_encoder(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | None = None,
) -> TorchDualEncoder:
    """Builds a `TorchDualEncoder` in eval mode from a `.safetensors` export (config read
    from its metadata) or a state dict plus `config`; loads with `strict=True`."""
    if isinstance(source, (str, os.PathLike)):
        from safetensors import safe_open  # noqa: PLC0415
        from safetensors.torch import load_file  # noqa: PLC0415

        path = os.fspath(source)
        with safe_open(path, framework="pt") as f:
            metadata = dict(f.metadata() or {})
        state = load_file(path)
        if config is None and "norton_jax_model_config" in metadata:
            config = json.loads(metadata["norton_jax_model_config"])
    else:
        state = dict(source)
    if config is None:
        raise ValueError("no model config given and none found in the file metadata")
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    model = TorchDualEncoder(config)
    model.load_state_dict(state, strict=True)
    return model.eval()
