"""Problem sets and solver variants of ``benchmarks/sinkhorn.py`` (also used by
``benchmarks/accelerator_check.py``).

A :class:`Problem` holds one batch of OT problems (scores, weights, epsilon, masks); a
:class:`Variant` prepares a solver for it (ours, ott-jax, POT, the PyTorch loop on CPU or
CUDA) as a :class:`Prepared` whose ``run()`` returns the plan.  The timing, the targets
and the report stay in ``benchmarks/sinkhorn.py``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from norton_jax.ot import bucket_problem, sinkhorn, sinkhorn_with_bucket  # noqa: E402

ITERS = 50
REF_ITERS = 2000
EARLY_TOL = 1e-5
EARLY_MAX_ITERS = 1000


# --------------------------------------------------------------------------- problems


@dataclasses.dataclass
class Problem:
    """One problem set: ``S [B, M, N]`` scores, normalised weights, epsilon."""

    name: str
    scores: np.ndarray  # [B, M, N] float32 (scores to maximise, not divided by epsilon)
    a: np.ndarray  # [B, M] float32, sums to 1 over valid rows (0 on masked rows)
    b: np.ndarray  # [B, N]
    epsilon: float
    row_mask: np.ndarray | None = None  # [B, M] bool
    col_mask: np.ndarray | None = None  # [B, N] bool
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    reference: np.ndarray | None = None  # [B, M, N] float64 plan after REF_ITERS iterations
    reference_marginal_error: float | None = None

    @property
    def batch(self) -> int:
        return self.scores.shape[0]


def _normalise(w: np.ndarray) -> np.ndarray:
    return (w / w.sum(-1, keepdims=True)).astype(np.float32)


def video_paragraph_problem(num_pairs: int, seq_len: int = 8, *, ragged: bool = False,
                            bucket: bool = True, seed: int = 0) -> Problem:
    """``num_pairs`` sequence pairs of ``seq_len`` clips, eps 0.1, similarities in [0, 1]."""
    rng = np.random.default_rng(seed)
    grid = rng.uniform(0.0, 1.0, size=(num_pairs, seq_len, seq_len)).astype(np.float32)
    p = float(np.quantile(grid, 0.3))
    row_mask = col_mask = None
    if ragged:
        row_mask = np.arange(seq_len) < rng.integers(2, seq_len + 1, size=(num_pairs, 1))
        col_mask = np.arange(seq_len) < rng.integers(2, seq_len + 1, size=(num_pairs, 1))
    name = "video_paragraph" + ("_ragged" if ragged else "") + ("" if bucket else "_nobucket")
    if not bucket:
        ones = np.ones(grid.shape[:-1], np.float32)
        return Problem(name, grid, _normalise(ones), _normalise(ones), 0.1,
                       extra=dict(grid=grid, bucket_value=p))
    bp = bucket_problem(grid, p, row_mask=row_mask, col_mask=col_mask)
    rm = None if bp.row_mask is None else np.asarray(bp.row_mask)
    cm = None if bp.col_mask is None else np.asarray(bp.col_mask)
    a = np.asarray(bp.row_weights) * (1 if rm is None else rm)
    b = np.asarray(bp.col_weights) * (1 if cm is None else cm)
    return Problem(name, np.asarray(bp.similarity, np.float32), _normalise(a), _normalise(b), 0.1,
                   row_mask=rm, col_mask=cm,
                   extra=dict(grid=grid, bucket_value=p, row_mask_grid=row_mask, col_mask_grid=col_mask))


def clip_caption_problem(side: int = 1024, dim: int = 768, seed: int = 0) -> Problem:
    """Raw dot products of synthetic un-normalised pooled embeddings (spec 2.3), eps 1.

    Video and caption embeddings share an offset (norm 6) and a per-video topic (norm 12,
    16 clips per video, as in a pre-training batch) plus independent noise: diagonal
    logits ~130, unrelated pairs ~40, so ``(max - min) / eps`` is about 100-140, beyond
    the ~88 where ``exp`` over-flows in float32.
    """
    rng = np.random.default_rng(seed)
    offset = rng.normal(size=dim)
    offset *= 6.0 / np.linalg.norm(offset)
    topics = rng.normal(size=(max(side // 16, 1), dim))
    topics *= 12.0 / np.linalg.norm(topics, axis=1, keepdims=True)
    content = np.repeat(topics, 16, axis=0)[:side] * 0.6 + rng.normal(size=(side, dim)) * 0.4 * 12 / np.sqrt(dim)
    pooled_video = offset + content + rng.normal(size=(side, dim)) * 4 / np.sqrt(dim)
    pooled_text = offset + content + rng.normal(size=(side, dim)) * 4 / np.sqrt(dim)
    scores = (pooled_video @ pooled_text.T).astype(np.float32)[None]  # [1, side, side]
    ones = np.ones((1, side), np.float32)
    return Problem(f"clip_caption_{side}" if side != 1024 else "clip_caption", scores,
                   _normalise(ones), _normalise(ones), 1.0,
                   extra=dict(log_range=float(scores.max() - scores.min())))


def attach_reference(problem: Problem) -> None:
    """float64 solution after REF_ITERS iterations (our kernel method, exact in float64).

    ``method="kernel"`` runs the same iterations as the log-domain reference (the tests
    check it to 1e-12 in float64) and falls back to the log domain outside its float64
    safe range (log-range 319), ~20x faster than the float64 log scan.
    """
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        res = sinkhorn(
            jnp.asarray(problem.scores, jnp.float64), epsilon=problem.epsilon, num_iters=REF_ITERS,
            row_weights=jnp.asarray(problem.a, jnp.float64), col_weights=jnp.asarray(problem.b, jnp.float64),
            row_mask=problem.row_mask, col_mask=problem.col_mask, method="kernel",
        )
        problem.reference = np.asarray(res.plan, np.float64)
        problem.reference_marginal_error = float(np.max(np.asarray(res.marginal_error)))
    finally:
        jax.config.update("jax_enable_x64", previous)


# --------------------------------------------------------------------------- variants


@dataclasses.dataclass
class Prepared:
    """A ready-to-time solver: ``run()`` returns the plan (device array or tensor)."""

    run: Callable[[], Any]
    compile_s: float | None = None
    to_numpy: Callable[[Any], np.ndarray] = lambda x: np.asarray(x)
    iterations: Callable[[], int] | None = None
    plan_kind: str = "problem"  # "problem": plan of the problem; "bucket_scaled": sinkhorn_with_bucket output


@dataclasses.dataclass
class Variant:
    name: str
    family: str
    trade: str
    prepare: Callable[[Problem], Prepared]
    applies: Callable[[Problem], bool] = lambda p: True


def _jit_prepare(fn: Callable, *args) -> Prepared:
    jitted = jax.jit(fn)
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    return Prepared(run=lambda: compiled(*args), compile_s=compile_s)


def _device_inputs(problem: Problem, dtype=jnp.float32):
    return (jnp.asarray(problem.scores, dtype), jnp.asarray(problem.a), jnp.asarray(problem.b),
            None if problem.row_mask is None else jnp.asarray(problem.row_mask),
            None if problem.col_mask is None else jnp.asarray(problem.col_mask))


def norton_variant(method: str, *, tol: float | None = None, dtype=jnp.float32) -> Callable[[Problem], Prepared]:
    def prepare(problem: Problem) -> Prepared:
        s, a, b, rm, cm = _device_inputs(problem, dtype)
        num_iters = ITERS if tol is None else EARLY_MAX_ITERS

        def fn(s, a, b, rm, cm):
            return sinkhorn(s, epsilon=problem.epsilon, num_iters=num_iters, row_weights=a, col_weights=b,
                            row_mask=rm, col_mask=cm, method=method, tol=tol)

        prepared = _jit_prepare(fn, s, a, b, rm, cm)
        run = prepared.run
        prepared.run = lambda: run()
        prepared.to_numpy = lambda res: np.asarray(res.plan)
        prepared.iterations = lambda: int(run().iterations)
        return prepared

    return prepare


def norton_bucket_api(problem: Problem) -> Prepared:
    """End to end through the public sinkhorn_with_bucket from the [B, 8, 8] grid."""
    grid = jnp.asarray(problem.extra["grid"])
    p = problem.extra["bucket_value"]
    rm = problem.extra.get("row_mask_grid")
    cm = problem.extra.get("col_mask_grid")
    rm = None if rm is None else jnp.asarray(rm)
    cm = None if cm is None else jnp.asarray(cm)

    def fn(grid, rm, cm):
        return sinkhorn_with_bucket(grid, p, epsilon=problem.epsilon, num_iters=ITERS, row_mask=rm, col_mask=cm)

    prepared = _jit_prepare(fn, grid, rm, cm)
    prepared.plan_kind = "bucket_scaled"
    return prepared


def ott_variant(*, fixed: bool, lse_mode: bool = True) -> Callable[[Problem], Prepared]:
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn as ott_sinkhorn

    if fixed:
        solver = ott_sinkhorn.Sinkhorn(lse_mode=lse_mode, threshold=0.0, min_iterations=ITERS, max_iterations=ITERS)
    else:
        solver = ott_sinkhorn.Sinkhorn(lse_mode=lse_mode)  # defaults: threshold 1e-3, <= 2000 iterations

    def one(scores_t, a, b, eps):
        # ott updates the column potential first; on the transposed problem its sequence of
        # updates is ours (rows of S first), so fixed-iteration plans are comparable.
        geom = geometry.Geometry(cost_matrix=-scores_t, epsilon=eps)
        out = solver(linear_problem.LinearProblem(geom, a=b, b=a))
        return out.matrix.T, out.n_iters

    def prepare(problem: Problem) -> Prepared:
        s, a, b, _, _ = _device_inputs(problem)
        st = jnp.swapaxes(s, -1, -2)
        eps = problem.epsilon
        prepared = _jit_prepare(jax.vmap(lambda x, y, z: one(x, y, z, eps)), st, a, b)
        run = prepared.run
        prepared.to_numpy = lambda res: np.asarray(res[0])
        prepared.iterations = lambda: int(np.max(np.asarray(run()[1])))
        return prepared

    return prepare


def pot_variant(problem: Problem) -> Prepared:
    """POT's batched log-domain Sinkhorn on numpy float32 (tol=0: exactly ITERS iterations)."""
    from ot.batch import bregman_log_projection_batch

    z = (problem.scores / np.float32(problem.epsilon)).astype(np.float32)
    a, b = problem.a, problem.b
    return Prepared(run=lambda: bregman_log_projection_batch(z, a, b, max_iter=ITERS, tol=0.0)["T"])


def torch_variant(threads: int | None, device: str = "cpu") -> Callable[[Problem], Prepared]:
    """The PyTorch loop with torch's default thread count, or pinned to ``threads``; on
    ``device`` (``"cuda"``: the GPU, synchronised before ``run()`` returns)."""

    def prepare(problem: Problem) -> Prepared:
        import torch
        from torch_reference_sinkhorn import TorchSinkhorn

        solver = TorchSinkhorn(problem.scores, problem.a, problem.b, problem.epsilon, ITERS, device=device)
        if threads is None:
            return Prepared(run=solver, to_numpy=lambda t: t.cpu().numpy())

        def run():
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                return solver()
            finally:
                torch.set_num_threads(previous)

        return Prepared(run=run, to_numpy=lambda t: t.numpy())

    return prepare


def _torch_has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _no_masks(p: Problem) -> bool:
    return p.row_mask is None and p.col_mask is None


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("norton_auto", "norton", "default: kernel domain when the log-range is safe, else "
                "stabilized; float64 runs log", norton_variant("auto")),
        Variant("norton_log", "norton", "reference log-domain scan: 2 exp passes per iteration, safe for "
                "any range", norton_variant("log")),
        Variant("norton_kernel", "norton", "kernel domain (2 mat-vecs per iteration); falls back to the log "
                "scan when the range is unsafe", norton_variant("kernel")),
        Variant("norton_stabilized", "norton", "kernel domain, potentials absorbed every 10 iterations "
                "(1 exp pass each), log fallback per block: safe for any range", norton_variant("stabilized")),
        Variant("norton_auto_early", "norton", f"auto with early stopping: tol {EARLY_TOL:g} checked every 10 "
                f"iterations (lax.while_loop), at most {EARLY_MAX_ITERS}", norton_variant("auto", tol=EARLY_TOL)),
        Variant("norton_auto_bf16", "norton", "auto on bfloat16 scores (promoted to float32 inside): input "
                "rounding moves the plan", norton_variant("auto", dtype=jnp.bfloat16)),
        Variant("norton_bucket_api", "norton", "auto through sinkhorn_with_bucket from the 8x8 grid "
                "(bucket padding and rescale included)", norton_bucket_api,
                applies=lambda p: "grid" in p.extra and not p.name.endswith("nobucket")),
        Variant("ott_fixed", "ott-jax", "ott-jax Sinkhorn, lse_mode, exactly 50 iterations (vmap over the batch)",
                ott_variant(fixed=True), applies=_no_masks),
        Variant("ott_fixed_kernel", "ott-jax", "ott-jax Sinkhorn, lse_mode=False (scaling), exactly 50 iterations",
                ott_variant(fixed=True, lse_mode=False), applies=_no_masks),
        Variant("ott_default", "ott-jax", "ott-jax Sinkhorn defaults (threshold 1e-3, <= 2000 iterations)",
                ott_variant(fixed=False), applies=_no_masks),
        Variant("pot_batch", "POT", "POT ot.batch log-domain Sinkhorn on numpy float32, 50 iterations",
                pot_variant, applies=_no_masks),
        Variant("torch_loop", "torch", "reference-style PyTorch log-domain loop (spec 2.2), float32, "
                "torch's default threads", torch_variant(None), applies=_no_masks),
        Variant("torch_loop_1t", "torch", "the same PyTorch loop on 1 thread (immune to thread "
                "over-subscription on a shared CPU)", torch_variant(1), applies=_no_masks),
        Variant("torch_loop_cuda", "torch", "the same PyTorch loop on the CUDA GPU torch sees (only "
                "when torch.cuda.is_available())", torch_variant(None, "cuda"),
                applies=lambda p: _no_masks(p) and _torch_has_cuda()),
    ]
}

SWEEP_VARIANTS = ["norton_auto", "norton_log", "torch_loop_1t", "ott_fixed"]
