"""The ``method=`` variants of the Sinkhorn solver agree with the log-domain reference.

Same iterations, same order (rows, then columns): at a fixed iteration count every
variant must return the log-domain plan to float32 rounding, whatever the range of the
scores; ``tol`` early stopping must stop at or below its tolerance.  No timings here:
those live in ``benchmarks/sinkhorn.py``.
"""

import importlib.util
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from norton_jax.ot import METHODS, safe_kernel_range, sinkhorn, sinkhorn_with_bucket

FAST = [m for m in METHODS if m != "log"]
# float32: plans agree to 1e-5; marginal errors may differ by float32 rounding of the
# L1 sums (~1e-7 per entry) but not more.
PLAN_ATOL = 1e-5
MARGINAL_SLACK = 2e-6


def ragged_batch(rng, eps_range=1.0):
    """Six problems in a [6, 10, 12] slot: full, ragged (incl. 1 x 1) and weighted."""
    sim = rng.uniform(0, eps_range, size=(6, 10, 12)).astype(np.float32)
    rows = np.array([10, 10, 7, 3, 1, 9])
    cols = np.array([12, 5, 12, 8, 1, 2])
    row_mask = np.arange(10) < rows[:, None]
    col_mask = np.arange(12) < cols[:, None]
    sim[~(row_mask[:, :, None] & col_mask[:, None, :])] = 1e4  # garbage in the padding
    row_w = rng.uniform(0.5, 1.5, size=(6, 10)).astype(np.float32)
    col_w = rng.uniform(0.5, 1.5, size=(6, 12)).astype(np.float32)
    return dict(similarity=jnp.asarray(sim), row_weights=row_w, col_weights=col_w,
                row_mask=row_mask, col_mask=col_mask)


def assert_same_as_log(res, ref):
    np.testing.assert_allclose(np.asarray(res.plan), np.asarray(ref.plan), atol=PLAN_ATOL, rtol=0)
    assert np.all(np.isfinite(np.asarray(res.plan)))
    assert np.all(np.asarray(res.marginal_error) <= np.asarray(ref.marginal_error) + MARGINAL_SLACK)
    # -inf potentials exactly where the reference has them (masked rows/columns).
    for a, b in ((res.row_potential, ref.row_potential), (res.col_potential, ref.col_potential)):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b))


@pytest.mark.parametrize("eps", [1.0, 0.1, 0.03])
def test_every_variant_matches_log_domain_with_masks_and_weights(eps):
    kwargs = ragged_batch(np.random.default_rng(int(eps * 100)))
    ref = sinkhorn(epsilon=eps, method="log", **kwargs)
    for method in FAST:
        res = sinkhorn(epsilon=eps, method=method, **kwargs)
        assert_same_as_log(res, ref)
        assert int(res.iterations) == 50
        plan = np.asarray(res.plan)
        rows, cols = kwargs["row_mask"], kwargs["col_mask"]
        assert np.all(plan[~(rows[:, :, None] & cols[:, None, :])] == 0)


def test_variants_match_on_a_larger_problem_and_absorption_period():
    rng = np.random.default_rng(11)
    sim = jnp.asarray(rng.normal(size=(2, 96, 130)), jnp.float32)
    ref = sinkhorn(sim, epsilon=0.1, num_iters=37, method="log")
    # Larger than SMALL_PROBLEM_ENTRIES: the batched-dot kernel path ("kernel" runs the
    # same code as "auto" in the safe range).
    assert_same_as_log(sinkhorn(sim, epsilon=0.1, num_iters=37), ref)
    assert_same_as_log(sinkhorn(sim, epsilon=0.1, num_iters=37, method="stabilized", absorb_every=4), ref)


def test_auto_on_unsafe_range_is_finite_and_equals_log():
    """(max - min) / eps = 500: exp() of the kernel would over-flow in float32."""
    rng = np.random.default_rng(3)
    eps = 0.1
    sim = rng.uniform(size=(3, 16, 20)).astype(np.float32)
    sim = (sim - sim.min()) / (sim.max() - sim.min()) * 500 * eps
    # Problem 1: a column that every row dislikes by the whole range (its kernel column
    # under-flows; the stabilized blocks must fall back to the log domain there).
    sim[1, :, 3] = 0.0
    sim[1, :, :3] = 500 * eps
    sim = jnp.asarray(sim)
    assert float((sim.max() - sim.min()) / eps) == pytest.approx(500, rel=1e-5)
    assert 500 > safe_kernel_range(jnp.float32)
    ref = sinkhorn(sim, epsilon=eps, method="log")
    assert np.all(np.isfinite(np.asarray(ref.plan)))
    for method in FAST:
        assert_same_as_log(sinkhorn(sim, epsilon=eps, method=method), ref)
    bucket_ref = sinkhorn_with_bucket(sim, 25.0, epsilon=eps, method="log")
    bucket = sinkhorn_with_bucket(sim, 25.0, epsilon=eps)
    assert np.all(np.isfinite(np.asarray(bucket)))
    np.testing.assert_allclose(np.asarray(bucket), np.asarray(bucket_ref), atol=PLAN_ATOL * 36, rtol=0)


def test_bucket_variants_match_log_with_ragged_masks():
    rng = np.random.default_rng(4)
    grid = jnp.asarray(rng.uniform(size=(5, 4, 8, 8)), jnp.float32)
    p = jnp.asarray(rng.uniform(0.2, 0.5, size=(5, 4)), jnp.float32)
    row_mask = np.arange(8) < rng.integers(1, 9, size=(5, 4, 1))
    col_mask = np.arange(8) < rng.integers(1, 9, size=(5, 4, 1))
    ref = sinkhorn_with_bucket(grid, p, epsilon=0.1, row_mask=row_mask, col_mask=col_mask, method="log")
    for method in ("auto", "stabilized"):
        got = sinkhorn_with_bucket(grid, p, epsilon=0.1, row_mask=row_mask, col_mask=col_mask, method=method)
        # The bucket plan is x (m + n) <= 16: 1e-5 of the problem's plan scale.
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=16 * PLAN_ATOL, rtol=0)


@pytest.mark.parametrize("method", ["auto", "log"])
def test_early_stopping_respects_its_tolerance(method):
    rng = np.random.default_rng(5)
    sim = jnp.asarray(rng.uniform(size=(4, 9, 9)), jnp.float32)
    for tol, check_every in ((1e-5, 7),):
        res = sinkhorn(sim, epsilon=0.1, num_iters=500, method=method, tol=tol, check_every=check_every)
        iters = int(res.iterations)
        assert float(jnp.max(res.marginal_error)) <= tol
        assert 0 < iters < 500 and iters % check_every == 0
        if method == "auto":
            # Stopped as early as the checks allow: one check earlier was above tol.
            before = sinkhorn(sim, epsilon=0.1, num_iters=max(iters - check_every, 1), method="log")
            assert float(jnp.max(before.marginal_error)) > tol
        # And it is the fixed-count result at that count.
        fixed = sinkhorn(sim, epsilon=0.1, num_iters=iters, method="log")
        np.testing.assert_allclose(np.asarray(res.plan), np.asarray(fixed.plan), atol=PLAN_ATOL, rtol=0)
    # An unreachable tolerance runs num_iters exactly (23 = 3 checks of 7 + a remainder of 2).
    res = sinkhorn(sim, epsilon=0.1, num_iters=23, method=method, tol=1e-12, check_every=7)
    assert int(res.iterations) == 23
    fixed = sinkhorn(sim, epsilon=0.1, num_iters=23, method="log")
    np.testing.assert_allclose(np.asarray(res.plan), np.asarray(fixed.plan), atol=PLAN_ATOL, rtol=0)


def test_early_stopping_stabilized_on_unsafe_range():
    rng = np.random.default_rng(6)
    sim = jnp.asarray(rng.uniform(size=(2, 12, 12)) * 60, jnp.float32)  # range 60 > 40: unsafe
    res = sinkhorn(sim, epsilon=1.0, num_iters=2000, method="stabilized", tol=1e-5)
    assert np.all(np.isfinite(np.asarray(res.plan)))
    assert float(jnp.max(res.marginal_error)) <= 1e-5
    fixed = sinkhorn(sim, epsilon=1.0, num_iters=int(res.iterations), method="log")
    np.testing.assert_allclose(np.asarray(res.plan), np.asarray(fixed.plan), atol=PLAN_ATOL, rtol=0)


def test_float64_auto_is_the_log_scan_and_kernel_is_exact(x64):
    rng = np.random.default_rng(7)
    sim = jnp.asarray(rng.uniform(size=(3, 6, 7)))
    ref = sinkhorn(sim, epsilon=0.1, method="log")
    auto = sinkhorn(sim, epsilon=0.1)
    assert auto.plan.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(auto.plan), np.asarray(ref.plan))
    for method in ("kernel", "stabilized"):
        res = sinkhorn(sim, epsilon=0.1, method=method)
        np.testing.assert_allclose(np.asarray(res.plan), np.asarray(ref.plan), rtol=1e-11, atol=1e-15)


def test_bf16_scores_run_in_float32():
    rng = np.random.default_rng(8)
    sim = jnp.asarray(rng.uniform(size=(2, 8, 8)), jnp.bfloat16)
    res = sinkhorn(sim, epsilon=0.1)
    assert res.plan.dtype == jnp.float32
    ref = sinkhorn(sim.astype(jnp.float32), epsilon=0.1, method="log")
    np.testing.assert_allclose(np.asarray(res.plan), np.asarray(ref.plan), atol=PLAN_ATOL, rtol=0)


def test_methods_under_shard_map_with_device_varying_weights():
    mesh = jax.make_mesh((1,), ("data",))
    rng = np.random.default_rng(9)
    sharding = NamedSharding(mesh, P("data"))
    sim = jax.device_put(jnp.asarray(rng.uniform(size=(2, 6, 5)), jnp.float32), sharding)
    w = jax.device_put(jnp.asarray(rng.uniform(0.5, 1.5, size=(2, 6)), jnp.float32), sharding)

    def per_device(s, w):
        a = sinkhorn(s, epsilon=0.1, num_iters=23).plan  # weights not varying
        b = sinkhorn(s, epsilon=0.1, num_iters=23, row_weights=w, tol=1e-4, check_every=7).plan
        c = sinkhorn_with_bucket(s, 0.3, epsilon=0.1, num_iters=23)
        return a + b + c[..., :5]

    out = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P("data")))(sim, w)
    assert np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="sinkhorn"), "method"),
        (dict(tol=0.0), "tol"),
        (dict(tol=-1e-3), "tol"),
        (dict(check_every=0), "check_every"),
        (dict(absorb_every=1.5), "absorb_every"),
    ],
)
def test_bad_variant_arguments_raise_at_trace_time(kwargs, match):
    spec = jax.ShapeDtypeStruct((5, 6), jnp.float32)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda s: sinkhorn(s, epsilon=0.1, **kwargs), spec)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda s: sinkhorn_with_bucket(s, 0.3, epsilon=0.1, **kwargs), spec)


def test_benchmark_smoke(tmp_path):
    """benchmarks/sinkhorn.py end to end at tiny sizes with two variants (no timing claims)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sinkhorn.py"
    spec = importlib.util.spec_from_file_location("sinkhorn_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up
    try:
        spec.loader.exec_module(bench)
        code = bench.main(["--tiny", "--variants", "norton_auto,torch_loop", "--out", str(tmp_path)])
    finally:
        sys.modules.pop(spec.name, None)
    assert code == 0
    data = json.loads((tmp_path / "sinkhorn_benchmark_tiny.json").read_text())
    assert (tmp_path / "sinkhorn_benchmark_tiny.png").stat().st_size > 0
    rows = {(r["problem"], r["variant"]): r for r in data["results"]}
    vp = rows[("video_paragraph", "norton_auto")]
    assert vp["finite"] and vp["plan_error_max"] < 1e-5 and vp["marginal_error_max"] < 1e-5
    assert rows[("video_paragraph", "torch_loop")]["plan_error_max"] < 1e-5
    assert {"norton_auto", "torch_loop"} == {r["variant"] for r in data["results"]}
    assert "device" in data["env"] and data["targets"]
