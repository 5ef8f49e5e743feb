"""The full train step at the paper's model geometry, ours and the reference's in PyTorch.

Helpers of ``benchmarks/train_step.py`` (``full_step``, ``compiled_memory``) and
``benchmarks/accelerator_check.py``:

* :func:`build_jax_step` - our jitted, donated step (:func:`norton_jax.training.step.make_train_step`):
  both encoders forward, Norton's loss, backward w.r.t. the 39 LayerNorms only (the frozen
  weights are a separate, non-differentiated argument, so XLA computes no weight gradient),
  global-norm clipping and Adam, on a one-device mesh;
* :func:`torch_step` - the reference's step: ``norton_jax.torch_reference`` encoders with the
  same weights, ``benchmarks/torch_norton_loss.py``, ``requires_grad`` on the LayerNorm
  parameters only, ``clip_grad_norm_(2.0)`` and ``torch.optim.Adam`` with the same settings;
* :func:`compiled_memory` - XLA's compiled (not executed) memory of the step for abstract
  inputs (``lower(...).compile().memory_analysis()``) and its FLOPs (``cost_analysis``).

Dropout is off on both sides (rates 0) so that the two losses can be compared: two
frameworks cannot draw the same masks; its cost is a few elementwise passes.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from norton_jax.losses import LossConfig  # noqa: E402
from norton_jax.models.config import ModelConfig, paper_model_config  # noqa: E402
from norton_jax.models.dual_encoder import abstract_model, init_model  # noqa: E402
from norton_jax.training.defaults import optim_config  # noqa: E402
from norton_jax.training.step import (  # noqa: E402
    ModelParts, init_train_state, make_mesh, make_optimizer, make_train_step, replicate, shard_batch,
    split_model,
)

CLIPS_PER_VIDEO = 16
CAPTION_LEN = 32  # Lc: 31 text tokens
FRAMES = 16  # Lv: 18 video tokens


def paper_model(dtype: str = "float32", remat: bool = False, dropout: bool = False) -> ModelConfig:
    """configs/pretrain.py's model (768-d, 12 text / 6 video layers) in ``dtype``."""
    config = ModelConfig.from_any(paper_model_config()).replace(dtype=dtype, remat=remat)
    if not dropout:
        config = config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return config


def synthetic_batch(clips: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Model inputs of the pipeline's layout (spec 3.2): ragged captions and frames."""
    rng = np.random.default_rng(seed)
    caps = rng.integers(1000, 30000, (clips, CAPTION_LEN)).astype(np.int32)
    cmasks = np.zeros((clips, CAPTION_LEN), bool)
    for i, n in enumerate(rng.integers(6, CAPTION_LEN - 2, clips)):
        caps[i, 0], caps[i, 1], caps[i, n + 2] = 101, 102, 102
        caps[i, n + 3:] = 0
        cmasks[i, : n + 3] = True
    vfeats = rng.normal(size=(clips, FRAMES, 512)).astype(np.float32)
    vmasks = np.zeros((clips, FRAMES), bool)
    for i, n in enumerate(rng.integers(3, FRAMES + 1, clips)):
        vmasks[i, :n] = True
    vfeats *= vmasks[..., None]
    return dict(caps=caps, cmasks=cmasks, vfeats=vfeats, vmasks=vmasks)


def optimizer(lr: float = 1e-5):
    """The reference's Adam (0.9, 0.98, 1e-8), clip 2.0, at a constant ``lr`` (no warm-up)."""
    optim = ml_collections.ConfigDict(optim_config())
    optim.warmup_steps, optim.lr, optim.end_lr = 0, lr, lr
    tx, _ = make_optimizer(optim, 1000)
    return tx


def build_jax_step(config: ModelConfig, *, abstract: bool = False, seed: int = 0,
                   loss_config: LossConfig | None = None):
    """``(step, state, model, mesh, parts)`` on a one-device mesh, parameters and state
    placed as the train script places them; with ``abstract`` no array is allocated.

    ``step.lower(state, batch).compile()`` is the executable; call it as
    ``compiled(state, parts.frozen, parts.rest, batch)`` (one compilation, no jit cache)."""
    mesh = make_mesh(jax.devices()[:1])
    model = abstract_model(config) if abstract else init_model(config, seed=seed)
    parts, trainable = split_model(model, "layernorm_only")
    tx = optimizer()
    if abstract:
        state = jax.eval_shape(lambda t: init_train_state(t, tx, seed), trainable)
    else:
        parts = ModelParts(parts.graphdef, replicate(parts.frozen, mesh), replicate(parts.rest, mesh))
        state = replicate(init_train_state(trainable, tx, seed), mesh)
    step = make_train_step(parts, tx, mesh, loss_config=loss_config or LossConfig())
    return step, state, model, mesh, parts


def abstract_batch(clips: int) -> dict[str, jax.ShapeDtypeStruct]:
    return dict(caps=jax.ShapeDtypeStruct((clips, CAPTION_LEN), jnp.int32),
                cmasks=jax.ShapeDtypeStruct((clips, CAPTION_LEN), jnp.bool_),
                vfeats=jax.ShapeDtypeStruct((clips, FRAMES, 512), jnp.float32),
                vmasks=jax.ShapeDtypeStruct((clips, FRAMES), jnp.bool_))


def memory_of(compiled) -> dict[str, Any]:
    """Compiled memory: arguments + outputs - donated aliases + temporaries = the peak."""
    mem = compiled.memory_analysis()
    if mem is None:
        return {}
    arg, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
    return {"argument_bytes": arg, "output_bytes": out, "alias_bytes": alias, "temp_bytes": temp,
            "peak_bytes": arg + out - alias + temp, "working_bytes": out - alias + temp}


def flops_of(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def model_flops(clips: int, config: ModelConfig) -> float:
    """Matmul FLOPs of one LayerNorm-only step (forward + input-gradient backward).

    Per layer of ``n = clips * length`` tokens: ``2n(4d^2 + 2 d ffn)`` for the projections
    and ``4 clips L^2 d`` for the two attention products; the backward pass needs input
    gradients only (frozen weights: no weight gradients), the same FLOPs for the
    projections and twice for the attention products (both operands are activations).
    The loss adds ``2 B^2 T F d`` for the frame-word products (forward, recomputed
    backward and its gradient: x3) and ``4 B^2 d`` for the pooled logits.
    """
    d, ffn = config.hidden_size, config.intermediate_size

    def encoder(length: int, layers: int) -> float:
        n = clips * length
        proj = 2 * n * (4 * d * d + 2 * d * ffn)
        attn = 4 * clips * length * length * d
        return layers * (2 * proj + 3 * attn)

    text, video = CAPTION_LEN - 1, FRAMES + 2
    mlp = 2 * clips * FRAMES * (512 * d + d * d) * 2
    loss = 3 * 2 * clips * clips * text * video * d + 3 * 4 * clips * clips * d
    return float(encoder(text, config.num_hidden_text_layers) + encoder(video, config.num_hidden_video_layers)
                 + mlp + loss)


def compiled_memory(videos: int, dtype: str, remat: bool) -> dict[str, Any]:
    """Compiled (not executed) memory and FLOPs of the full step at ``videos`` per device."""
    step, state, _, _, _ = build_jax_step(paper_model(dtype, remat, dropout=True), abstract=True)
    t0 = time.perf_counter()
    compiled = step.lower(state, abstract_batch(videos * CLIPS_PER_VIDEO)).compile()
    row = {"videos_per_device": videos, "dtype": dtype, "remat": remat,
           "compile_s": time.perf_counter() - t0, **memory_of(compiled), "flops": flops_of(compiled)}
    row["peak_gb"] = row.get("peak_bytes", 0) / 1e9
    return row


# --------------------------------------------------------------------------- RSS peaks


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakRss:
    """Peak resident-set growth over a block (Linux: VmHWM reset through clear_refs)."""

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.exact = True
        except OSError:
            self.exact = False
        self.start_kb = _status_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        peak = _status_kb("VmHWM") if self.exact else None
        peak = peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.growth_bytes = max(peak - self.start_kb, 0) * 1024
        return False


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


# --------------------------------------------------------------------------- the two steps


def jax_step_run(config: ModelConfig, batch: dict[str, np.ndarray], repeats: int) -> dict[str, Any]:
    from norton_jax.export_torch import export_state_dict

    step, state, model, mesh, parts = build_jax_step(config)
    weights = export_state_dict(model)  # before the donated step deletes the LayerNorm buffers
    sharded = shard_batch(batch, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, sharded).compile()
    compile_s = time.perf_counter() - t0
    compiled_mem = memory_of(compiled)
    flops = flops_of(compiled)
    holder = {"state": state}

    def run():
        holder["state"], m = compiled(holder["state"], parts.frozen, parts.rest, sharded)
        return jax.block_until_ready(m)

    with PeakRss() as rss:  # from the first executed step on, as the torch side
        first = jax.device_get(run())  # the first step: same weights as torch's first step
        median, times = median_time(run, repeats)
    return {"weights": weights, "loss": float(first["loss_total"]), "grad_norm": float(first["grad_norm"]),
            "compile_s": compile_s, "xla_cost_analysis_flops": flops,
            "model_flops": model_flops(len(batch["caps"]), config), "step_s": median, "step_times_s": times,
            "compiled": compiled_mem, "rss_growth_bytes": rss.growth_bytes}


def torch_step(weights: dict[str, np.ndarray], config: ModelConfig, batch: dict[str, np.ndarray], repeats: int,
               device: str = "cpu") -> dict[str, Any]:
    """The reference's step on ``weights`` (a reference state dict) and ``batch``."""
    import torch
    import torch_norton_loss

    from norton_jax.torch_reference import TorchDualEncoder

    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    net = TorchDualEncoder(config.to_dict())
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    net.load_state_dict(state, strict=True)
    net = net.to(device).train()
    trainable = []
    for name, p in net.named_parameters():
        p.requires_grad_(name.split(".")[-2] == "LayerNorm")
        if p.requires_grad:
            trainable.append(p)
    opt = torch.optim.Adam(trainable, lr=1e-5, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)
    inputs = [torch.from_numpy(batch[k]).to(device) for k in ("caps", "cmasks", "vfeats", "vmasks")]

    def run():
        opt.zero_grad(set_to_none=True)
        out = net(*inputs)
        loss = torch_norton_loss.norton_loss(
            out["pooled_video"], out["pooled_text"], out["video_outputs"], out["text_outputs"],
            out["video_mask_outputs"].float(), out["text_mask_outputs"].float(),
        )
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(trainable, 2.0)
        opt.step()
        if device != "cpu":
            torch.cuda.synchronize()
        return float(loss.detach()), float(norm)

    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    with PeakRss() as rss:
        loss, norm = run()  # the first step: same weights as ours
        median, times = median_time(run, repeats)
    out = {"loss": loss, "grad_norm": norm, "step_s": median, "step_times_s": times,
           "trainable_tensors": len(trainable), "trainable_scalars": int(sum(p.numel() for p in trainable)),
           "rss_growth_bytes": rss.growth_bytes}
    if device != "cpu":
        out["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def full_step(videos: int, repeats: int, *, dtype: str = "float32", with_torch: bool = True,
              torch_device: str = "cpu") -> dict[str, Any]:
    """Ours against the reference's step on the same inputs and weights (one run)."""
    clips = videos * CLIPS_PER_VIDEO
    config = paper_model(dtype)
    batch = synthetic_batch(clips)
    ours = jax_step_run(config, batch, repeats)
    weights = ours.pop("weights")
    report: dict[str, Any] = {
        "geometry": {"videos": videos, "clips": clips, "sequences": clips // 8, "text_tokens": CAPTION_LEN - 1,
                     "video_tokens": FRAMES + 2, "hidden": config.hidden_size,
                     "text_layers": config.num_hidden_text_layers, "video_layers": config.num_hidden_video_layers,
                     "trainable": "layernorm_only", "dtype": dtype, "dropout": 0.0},
        "repeats": repeats, "jax": ours,
    }
    if with_torch:
        ref = torch_step(weights, config, batch, repeats, torch_device)
        report["torch"] = ref
        report["loss_abs_diff"] = abs(ours["loss"] - ref["loss"])
        report["loss_rel_diff"] = abs(ours["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-12)
        report["speedup_vs_torch"] = ref["step_s"] / ours["step_s"]
        torch_bytes = ref.get("cuda_peak_allocated_bytes") or ref["rss_growth_bytes"]
        # Same method on both sides (peak RSS growth over the timed steps, weights and
        # inputs already resident); and XLA's compiled working memory over torch's growth.
        report["peak_memory_ratio"] = ours["rss_growth_bytes"] / max(torch_bytes, 1)
        report["compiled_working_over_torch"] = ours["compiled"].get("working_bytes", 0) / max(torch_bytes, 1)
    del weights
    return report


def compile_loss_and_grad(pv, pt, tv, tt, mv, mt):
    """Our jitted Norton loss + gradient w.r.t. the four float inputs (masks fixed), compiled
    ahead of time: ``(compiled, device arguments, compile seconds)``.  Shared by
    ``train_step.py`` and ``accelerator_check.py`` so that both time the same program."""
    from norton_jax.losses import norton_loss

    fn = jax.jit(jax.value_and_grad(lambda *a: norton_loss(*a, jnp.asarray(mv), jnp.asarray(mt))[0],
                                    argnums=(0, 1, 2, 3)))
    args = [jnp.asarray(x) for x in (pv, pt, tv, tt)]
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, args, time.perf_counter() - t0
