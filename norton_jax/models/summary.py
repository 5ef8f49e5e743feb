"""Parameter counts of the dual encoder, from `nnx.eval_shape` (nothing is allocated)."""

from __future__ import annotations

from typing import Any

from flax import nnx

from norton_jax.models.config import ModelConfig
from norton_jax.models.dual_encoder import abstract_model
from norton_jax.models.keys import flax_path_to_torch_key, iter_paths
from norton_jax.models.trainable import TRAINABLE_MODES, count_trainable, layernorm_only_count


def analytic_counts(config: Any) -> dict[str, int]:
    """Closed-form counts (BERT without pooler), used to cross-check the eval_shape counts."""
    c = ModelConfig.from_any(config)
    d, f = c.hidden_size, c.intermediate_size
    embeddings = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * d + 2 * d
    layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d
    videomlp = (c.video_input_dim * d + d) + 2 * d + (d * d + d)
    video = videomlp + embeddings + c.num_hidden_video_layers * layer
    text = embeddings + c.num_hidden_text_layers * layer
    return {"video_encoder": video, "text_encoder": text, "total": video + text}


def parameter_counts(config: Any) -> dict[str, Any]:
    """Counts per encoder / component and trainable counts per mode (eval_shape based)."""
    c = ModelConfig.from_any(config)
    params = nnx.to_pure_dict(nnx.state(abstract_model(c), nnx.Param))
    per_component: dict[str, int] = {}
    per_encoder: dict[str, int] = {}
    n_tensors = 0
    for path, leaf in iter_paths(params):
        key, _ = flax_path_to_torch_key(path)
        parts = key.split(".")
        component = ".".join(parts[:3] if parts[0] == "video_encoder" else parts[:2])
        if ".encoder.layer." in key:
            component = key.split(".layer.")[0] + ".layer.*"
        per_component[component] = per_component.get(component, 0) + leaf.size
        per_encoder[parts[0]] = per_encoder.get(parts[0], 0) + leaf.size
        n_tensors += 1
    total = sum(per_encoder.values())
    return {
        "config": c,
        "per_encoder": per_encoder,
        "per_component": dict(sorted(per_component.items())),
        "total": total,
        "n_tensors": n_tensors,
        "trainable": {mode: count_trainable(params, mode) for mode in TRAINABLE_MODES},
        "layernorm_only_analytic": layernorm_only_count(c),
        "analytic": analytic_counts(c),
    }


def format_summary(counts: dict[str, Any]) -> str:
    c: ModelConfig = counts["config"]
    lines = [
        "Norton dual encoder (MMFusionSeparate) parameter summary",
        f"geometry: hidden {c.hidden_size}, heads {c.num_attention_heads}, intermediate "
        f"{c.intermediate_size}, video layers {c.num_hidden_video_layers}, text layers "
        f"{c.num_hidden_text_layers}, vocab {c.vocab_size}, positions {c.max_position_embeddings}, "
        f"token types {c.type_vocab_size}, video input {c.video_input_dim}; param dtype {c.param_dtype}, "
        f"compute dtype {c.dtype}",
        "included: video MLP, both encoders' embedding tables (word/position/token-type + LayerNorm) "
        "and transformer layers;",
        "excluded: the two BERT poolers (computed but unused by the reference forward) and the "
        "position_ids buffers.",
        "",
    ]
    width = max(len(k) for k in counts["per_component"]) + 2
    for name, n in counts["per_component"].items():
        lines.append(f"  {name:<{width}} {n:>13,}")
    lines.append("")
    for name, n in counts["per_encoder"].items():
        lines.append(f"{name:<{width + 2}} {n:>13,}")
    lines.append(f"{'total':<{width + 2}} {counts['total']:>13,}  ({counts['n_tensors']} tensors)")
    analytic = counts["analytic"]
    ok = all(analytic[k] == counts["per_encoder"][k] for k in ("video_encoder", "text_encoder"))
    lines.append(f"closed-form cross-check: {'matches' if ok else 'MISMATCH ' + str(analytic)}")
    pooler = c.hidden_size * c.hidden_size + c.hidden_size
    lines.append(
        f"(a reference state dict additionally holds 2 poolers x {pooler:,} = {2 * pooler:,}: "
        f"{counts['total'] + 2 * pooler:,} with poolers)"
    )
    lines.append("")
    lines.append("trainable parameters:")
    for mode, n in counts["trainable"].items():
        lines.append(f"  {mode:<16} {n:>13,}")
    n_norms = counts["trainable"]["layernorm_only"] // (2 * c.hidden_size)
    lines.append(
        f"  (layernorm_only = {n_norms} LayerNorms x (scale + bias) x {c.hidden_size}; closed form "
        f"{counts['layernorm_only_analytic']:,})"
    )
    return "\n".join(lines)
