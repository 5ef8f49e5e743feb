"""Soft-DTW (``norton_jax.dtw.soft_dtw_*``) and the ``sequence_distance="soft_dtw"`` loss."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from norton_jax import dtw, losses


def soft_dtw_loop(cost: np.ndarray, gamma: float) -> float:
    """Slow textbook soft-DTW (Cuturi & Blondel 2017, Algorithm 1) in float64 Python loops."""
    m, n = cost.shape
    r = np.full((m + 1, n + 1), np.inf)
    r[0, 0] = 0.0
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            prev = np.array([r[i - 1, j - 1], r[i - 1, j], r[i, j - 1]])
            finite = prev[np.isfinite(prev)]
            lo = finite.min()
            soft = lo - gamma * math.log(np.sum(np.exp(-(finite - lo) / gamma)))
            r[i, j] = cost[i - 1, j - 1] + soft
    return float(r[m, n])


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 1), (3, 3), (5, 7), (8, 8)])
@pytest.mark.parametrize("gamma", [0.05, 0.1, 1.0])
def test_soft_dtw_matches_loop(x64, shape, gamma):
    rng = np.random.default_rng(hash((shape, gamma)) % 2**32)
    cost = rng.uniform(0, 1, shape)
    got = float(dtw.soft_dtw_distance(jnp.asarray(cost), gamma))
    np.testing.assert_allclose(got, soft_dtw_loop(cost, gamma), rtol=1e-10, atol=1e-10)
    full = np.asarray(dtw.soft_dtw_cumulative_cost(jnp.asarray(cost), gamma))
    for i in range(shape[0]):
        for j in range(shape[1]):
            np.testing.assert_allclose(full[i, j], soft_dtw_loop(cost[: i + 1, : j + 1], gamma), rtol=1e-10, atol=1e-10)


def test_soft_dtw_gradient_matches_finite_differences(x64):
    rng = np.random.default_rng(0)
    cost = rng.uniform(0, 1, (5, 6))
    gamma = 0.3
    grad = np.asarray(jax.grad(lambda c: dtw.soft_dtw_distance(c, gamma))(jnp.asarray(cost)))
    assert np.all(np.isfinite(grad))
    h = 1e-6
    fd = np.zeros_like(cost)
    for idx in np.ndindex(cost.shape):
        up, down = cost.copy(), cost.copy()
        up[idx] += h
        down[idx] -= h
        fd[idx] = (soft_dtw_loop(up, gamma) - soft_dtw_loop(down, gamma)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)
    # dR/dcost is an expected alignment: entries in [0, 1], both corners always on the path.
    assert grad.min() >= -1e-12 and grad.max() <= 1 + 1e-12
    np.testing.assert_allclose([grad[0, 0], grad[-1, -1]], [1.0, 1.0], atol=1e-12)


def test_soft_dtw_batched_equals_per_problem():
    rng = np.random.default_rng(1)
    cost = jnp.asarray(rng.uniform(0, 1, (3, 4, 6, 5)), jnp.float32)
    batched = np.asarray(dtw.soft_dtw_distance(cost, 0.1))
    assert batched.shape == (3, 4)
    for a in range(3):
        for b in range(4):
            np.testing.assert_allclose(batched[a, b], float(dtw.soft_dtw_distance(cost[a, b], 0.1)), rtol=1e-6)


def test_soft_dtw_tends_to_dtw(x64):
    rng = np.random.default_rng(2)
    cost = jnp.asarray(rng.uniform(0, 1, (4, 7, 9)))
    hard = np.asarray(dtw.dtw_distance(cost))
    errors = []
    for gamma in (1.0, 0.1, 0.01, 1e-3, 1e-4):
        soft = np.asarray(dtw.soft_dtw_distance(cost, gamma))
        # The soft minimum is below the hard one by at most gamma * log 3 per step.
        assert np.all(soft <= hard + 1e-12)
        assert np.all(hard - soft <= gamma * math.log(3) * (7 + 9 - 2) + 1e-12)
        errors.append(np.max(hard - soft))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-3
    np.testing.assert_allclose(
        np.asarray(dtw.soft_dtw_cumulative_cost(cost, 1e-4)), np.asarray(dtw.dtw_cumulative_cost(cost)), atol=1e-2
    )


def test_soft_dtw_gradient_finite_at_small_gamma():
    cost = jnp.asarray(np.random.default_rng(3).uniform(0, 1, (8, 8)), jnp.float32)
    for gamma in (1e-3, 0.1, 10.0):
        g = jax.grad(lambda c: dtw.soft_dtw_distance(c, gamma))(cost)
        assert np.all(np.isfinite(np.asarray(g)))


def test_soft_dtw_rejects_bad_gamma():
    with pytest.raises(ValueError, match="gamma"):
        dtw.soft_dtw_distance(jnp.ones((2, 2)), 0.0)


def _inputs(b=32, f=4, t=6, d=16, seed=0):
    rng = np.random.default_rng(seed)
    pv = jnp.asarray(rng.standard_normal((b, d)), jnp.float32)
    pt = jnp.asarray(rng.standard_normal((b, d)), jnp.float32)
    vt = jnp.asarray(rng.standard_normal((b, f, d)), jnp.float32)
    tt = jnp.asarray(rng.standard_normal((b, t, d)), jnp.float32)
    vm = jnp.asarray(rng.uniform(size=(b, f)) > 0.2).at[:, 0].set(True)
    tm = jnp.asarray(rng.uniform(size=(b, t)) > 0.2).at[:, 0].set(True)
    return pv, pt, vt, tt, vm, tm


def test_soft_dtw_loss_under_jit_with_finite_gradients():
    args = _inputs()

    @jax.jit
    def loss_and_grad(pv, pt, vt, tt, vm, tm):
        def f(pv, pt, vt, tt):
            return losses.video_paragraph_loss(
                pv, pt, vt, tt, vm, tm, seq_len=8, prompt_ratio=None, sequence_distance="soft_dtw"
            )
        return jax.value_and_grad(f, argnums=(0, 1, 2, 3))(pv, pt, vt, tt)

    value, grads = loss_and_grad(*args)
    assert np.isfinite(float(value)) and float(value) > 0
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    assert any(float(jnp.abs(g).max()) > 0 for g in grads)
    # Through norton_loss (as training calls it) too, with metrics.
    total, metrics = jax.jit(
        lambda *a: losses.norton_loss(*a, prompt_ratio=None, sequence_distance="soft_dtw")
    )(*args)
    assert np.isfinite(float(total))
    assert "paragraph_accuracy" in metrics and "bucket_mass" not in metrics


def test_soft_dtw_loss_matches_explicit_formula():
    pv, pt, vt, tt, vm, tm = _inputs(b=16, seed=4)
    got = losses.video_paragraph_loss(
        pv, pt, vt, tt, vm, tm, seq_len=4, prompt_ratio=None, sequence_distance="soft_dtw", soft_dtw_gamma=0.2
    )
    from norton_jax.similarity import clip_similarity

    c = clip_similarity(pt, pv, tt, vt, tm, vm, kind="lse", alpha=1.0, fusion_weight=0.5, fine_grained="reference")
    grid = np.asarray(losses.sequence_pair_grid(c, 4), np.float64)
    n = grid.shape[0]
    dist = np.array([[soft_dtw_loop(1.0 - grid[i, j], 0.2) for j in range(n)] for i in range(n)])
    logits = -np.exp(np.float32(losses.DEFAULT_LOGIT_SCALE)) * dist

    def ce(x):
        x = x - x.max(axis=1, keepdims=True)
        logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(logp))

    np.testing.assert_allclose(float(got), ce(logits) + ce(logits.T), rtol=1e-4)


def test_soft_dtw_loss_errors():
    args = _inputs(b=16)
    with pytest.raises(ValueError, match="prompt_ratio=None"):
        losses.video_paragraph_loss(*args, seq_len=8, sequence_distance="soft_dtw")
    with pytest.raises(ValueError, match="sequence_distance"):
        losses.video_paragraph_loss(*args, seq_len=8, sequence_distance="dtw")


def test_config_and_ablation_rows_select_soft_dtw():
    import importlib.util
    import os

    from norton_jax.losses import LossConfig

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "ablation.py")
    spec = importlib.util.spec_from_file_location("ablation_config_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = LossConfig.from_config(module.get_config("TempCLR"))
    assert cfg.sequence_distance == "soft_dtw" and cfg.prompt_ratio is None
    cfg = LossConfig.from_config(module.get_config("OT").loss)
    assert cfg.sequence_distance == "ot" and cfg.prompt_ratio is None and cfg.alpha == 1.0
    assert LossConfig.from_config(module.get_config("J").loss).sequence_distance == "ot"


def test_config_soft_dtw_gamma_reaches_the_loss():
    """``loss.soft_dtw_gamma`` from a config changes the loss (the old keyword mirror dropped it)."""
    from norton_jax.losses import LossConfig

    config = {"prompt_ratio": None, "sequence_distance": "soft_dtw", "soft_dtw_gamma": 1.0, "seq_len": 8}
    cfg = LossConfig.from_config(config)
    assert cfg.soft_dtw_gamma == 1.0
    args = _inputs(b=16)
    a = float(losses.video_paragraph_loss(*args, config=cfg))
    b = float(losses.video_paragraph_loss(*args, config=cfg.replace(soft_dtw_gamma=0.1)))
    assert abs(a - b) > 1e-4
    with pytest.raises(ValueError, match="soft_dtw_gama"):
        LossConfig.from_config({"soft_dtw_gama": 1.0})
