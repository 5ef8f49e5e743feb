"""The Sinkhorn solver against ott-jax, POT and the reference loop; invariants; failures."""

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from numpy_reference import bucket_plan, sinkhorn_log
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn as ott_sinkhorn

from norton_jax.ot import sinkhorn, sinkhorn_with_bucket

CONVERGED_ITERS = {1.0: 300, 0.1: 1500, 0.03: 5000}


def random_problem(rng, m, n):
    sim = rng.uniform(0, 1, size=(m, n))
    a = rng.uniform(0.5, 1.5, size=m)
    b = rng.uniform(0.5, 1.5, size=n)
    return sim, a / a.sum(), b / b.sum()


def ott_plan(sim, a, b, eps):
    geom = geometry.Geometry(cost_matrix=jnp.asarray(-sim), epsilon=eps)
    prob = linear_problem.LinearProblem(geom, a=jnp.asarray(a), b=jnp.asarray(b))
    out = ott_sinkhorn.Sinkhorn(threshold=1e-12, max_iterations=20000, lse_mode=True)(prob)
    assert bool(out.converged)
    return np.asarray(out.matrix)


@pytest.mark.parametrize("eps", [1.0, 0.1, 0.03])
def test_matches_ott_and_pot_with_masks(eps, x64):
    rng = np.random.default_rng(int(eps * 100))
    for _ in range(3):
        m, n = rng.integers(2, 9, size=2)
        sim, a, b = random_problem(rng, m, n)
        # Pad to a ragged batch slot of size 10 x 12 with garbage in the padding.
        pad = np.full((10, 12), 7.0)
        pad[:m, :n] = sim
        row_mask = np.arange(10) < m
        col_mask = np.arange(12) < n
        row_w = np.zeros(10)
        row_w[:m] = a * 3.0  # unnormalised on purpose
        col_w = np.zeros(12)
        col_w[:n] = b
        res = sinkhorn(
            jnp.asarray(pad), epsilon=eps, num_iters=CONVERGED_ITERS[eps],
            row_weights=row_w, col_weights=col_w, row_mask=row_mask, col_mask=col_mask,
        )
        plan = np.asarray(res.plan)
        assert np.all(plan[m:, :] == 0) and np.all(plan[:, n:] == 0)
        assert np.all(np.isneginf(np.asarray(res.log_plan)[m:, :]))
        ref_ott = ott_plan(sim, a, b, eps)
        ref_pot = pot.bregman.sinkhorn_log(a, b, -sim, eps, numItermax=100000, stopThr=1e-13)
        np.testing.assert_allclose(plan[:m, :n], ref_ott, atol=1e-5, rtol=0)
        np.testing.assert_allclose(plan[:m, :n], ref_pot, atol=1e-5, rtol=0)
        assert float(res.marginal_error) < 1e-8


def test_reference_iteration_order_and_column_marginals(x64):
    """Fixed iteration count: equals the reference loop; columns exact, rows approximate."""
    rng = np.random.default_rng(1)
    sim = rng.normal(size=(4, 6, 7))
    eps, iters = 0.1, 5
    log_a = np.full(6, -np.log(6.0))
    log_b = np.full(7, -np.log(7.0))
    ref = np.exp(sinkhorn_log(sim / eps, log_a, log_b, iters))
    res = sinkhorn(jnp.asarray(sim), epsilon=eps, num_iters=iters)
    np.testing.assert_allclose(np.asarray(res.plan), ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.asarray(res.plan).sum(-2), 1 / 7, rtol=1e-12)
    row_err = np.abs(np.asarray(res.plan).sum(-1) - 1 / 6).max()
    assert row_err > 1e-6  # 5 iterations: rows not yet converged
    np.testing.assert_allclose(np.asarray(res.marginal_error), np.abs(ref.sum(-1) - 1 / 6).sum(-1), rtol=1e-6)


def test_batching_equals_loop_and_jit_equals_eager():
    rng = np.random.default_rng(2)
    sim = jnp.asarray(rng.uniform(size=(3, 2, 5, 6)), jnp.float32)
    mask = jnp.asarray(rng.uniform(size=(3, 2, 5)) > 0.3)
    batched = sinkhorn(sim, epsilon=0.1, row_mask=mask).plan
    for i in range(3):
        for j in range(2):
            single = sinkhorn(sim[i, j], epsilon=0.1, row_mask=mask[i, j]).plan
            np.testing.assert_allclose(batched[i, j], single, rtol=1e-6, atol=1e-7)
    with jax.disable_jit():
        eager = sinkhorn(sim, epsilon=0.1, row_mask=mask).plan
    np.testing.assert_allclose(batched, eager, rtol=1e-6, atol=1e-7)


def test_bucket_matches_reference_loop(x64):
    rng = np.random.default_rng(3)
    grid = rng.uniform(size=(3, 4, 8, 8))
    p = rng.uniform(size=(3, 4))
    plan = np.asarray(sinkhorn_with_bucket(jnp.asarray(grid), jnp.asarray(p), epsilon=0.1, num_iters=50))
    for i in range(3):
        for j in range(4):
            ref = bucket_plan(grid[i, j], p[i, j], 0.1, 50)
            np.testing.assert_allclose(plan[i, j], ref, rtol=1e-10, atol=1e-14)
    # A scalar bucket value broadcasts over all problems.
    scalar = np.asarray(sinkhorn_with_bucket(jnp.asarray(grid), 0.4, epsilon=0.1))
    np.testing.assert_allclose(scalar[1, 2], bucket_plan(grid[1, 2], 0.4, 0.1, 50), rtol=1e-10)


def test_bucket_masses_and_ragged_masks(x64):
    """Real rows sum to <= 1 (rest in the bucket); masked = cropped problem (spec 2.4.6)."""
    rng = np.random.default_rng(4)
    grid = rng.uniform(size=(8, 8))
    full = np.asarray(sinkhorn_with_bucket(jnp.asarray(grid), 0.5, epsilon=0.1, num_iters=200))
    assert np.all(full.sum(1) <= 1 + 1e-9)
    # Columns (incl. the bucket row entry) sum to exactly 1 after the last column update;
    # without the bucket row they are <= 1.
    assert np.all(full.sum(0) <= 1 + 1e-9)
    m, n = 5, 6
    row_mask = np.arange(8) < m
    col_mask = np.arange(8) < n
    masked = np.asarray(sinkhorn_with_bucket(
        jnp.asarray(grid), 0.5, epsilon=0.1, num_iters=50, row_mask=row_mask, col_mask=col_mask))
    ref = bucket_plan(grid[:m, :n], 0.5, 0.1, 50)
    np.testing.assert_allclose(masked[:m, :n], ref, rtol=1e-10, atol=1e-14)
    assert np.all(masked[m:] == 0) and np.all(masked[:, n:] == 0)


def test_low_bucket_value_keeps_mass_high_value_absorbs_it():
    rng = np.random.default_rng(5)
    grid = jnp.asarray(rng.uniform(0.2, 0.8, size=(6, 6)), jnp.float32)
    low = sinkhorn_with_bucket(grid, -10.0, epsilon=0.1)
    high = sinkhorn_with_bucket(grid, 10.0, epsilon=0.1)
    assert float(low.sum()) > 5.9  # nearly all of the 6 rows' mass stays aligned
    assert float(high.sum()) < 1e-3  # everything goes to the bucket


def test_plan_has_no_gradient():
    sim = jnp.asarray(np.random.default_rng(6).uniform(size=(4, 5)), jnp.float32)
    grad = jax.grad(lambda s: jnp.sum(sinkhorn(s, epsilon=0.1).plan * 3.0))(sim)
    assert np.all(np.asarray(grad) == 0)
    grad_b = jax.grad(lambda s: jnp.sum(sinkhorn_with_bucket(s, 0.3, epsilon=0.1)))(sim)
    assert np.all(np.asarray(grad_b) == 0)


def test_stability_large_scores_small_epsilon_and_bfloat16():
    rng = np.random.default_rng(7)
    sim = jnp.asarray(rng.uniform(-100, 100, size=(2, 16, 16)), jnp.float32)
    res = sinkhorn(sim, epsilon=0.01, num_iters=50)
    assert np.all(np.isfinite(np.asarray(res.plan)))
    # float32 potentials of magnitude 1e4 carry ~1e-3 relative rounding in exp().
    np.testing.assert_allclose(np.asarray(res.plan).sum(-2), 1 / 16, rtol=2e-3)
    bucket = sinkhorn_with_bucket(sim, 50.0, epsilon=0.01)
    assert np.all(np.isfinite(np.asarray(bucket)))

    bf = jnp.asarray(rng.uniform(0, 1, size=(8, 8)), jnp.bfloat16)
    res_bf = sinkhorn(bf, epsilon=0.1)
    assert res_bf.plan.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(res_bf.plan)))
    np.testing.assert_allclose(
        np.asarray(res_bf.plan), np.asarray(sinkhorn(bf.astype(jnp.float32), epsilon=0.1).plan), rtol=1e-6)
    assert sinkhorn_with_bucket(bf, 0.3, epsilon=0.1).dtype == jnp.float32


def test_empty_problem_gives_zero_plan_not_nan():
    sim = jnp.ones((2, 3, 3))
    mask = jnp.asarray([[True, True, False], [False, False, False]])
    res = sinkhorn(sim, epsilon=0.1, row_mask=mask)
    plan = np.asarray(res.plan)
    assert np.all(np.isfinite(plan)) and np.all(plan[1] == 0)
    np.testing.assert_allclose(plan[0].sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epsilon=0.0), "epsilon"),
        (dict(epsilon=-1.0), "epsilon"),
        (dict(epsilon=0.1, num_iters=0), "num_iters"),
        (dict(epsilon=0.1, row_weights=np.ones(4)), "row_weights"),
        (dict(epsilon=0.1, col_mask=np.ones(3, bool)), "col_mask"),
    ],
)
def test_bad_arguments_raise_at_trace_time(kwargs, match):
    spec = jax.ShapeDtypeStruct((5, 6), jnp.float32)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda s: sinkhorn(s, **kwargs), spec)


def test_bad_bucket_value_shape():
    with pytest.raises(ValueError, match="bucket_value"):
        sinkhorn_with_bucket(jnp.ones((2, 3, 4, 4)), jnp.ones(5), epsilon=0.1)
    with pytest.raises(ValueError, match="similarity"):
        sinkhorn(jnp.ones(4), epsilon=0.1)
