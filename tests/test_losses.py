"""Norton's losses: closed-form cases, invariants, options and failure modes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify
from scipy.special import log_softmax

from norton_jax.losses import (
    checked,
    clip_caption_loss,
    norton_loss,
    prompt_bucket_value,
    video_paragraph_loss,
)


def batch(seed=0, b=16, f=5, t=6, d=8, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    pv, pt = rng.normal(size=(b, d)), rng.normal(size=(b, d))
    tv, tt = rng.normal(size=(b, f, d)), rng.normal(size=(b, t, d))
    mv = (rng.uniform(size=(b, f)) > 0.3).astype(np.float32)
    mt = (rng.uniform(size=(b, t)) > 0.3).astype(np.float32)
    mv[:, -1] = mt[:, -1] = 1
    mv[:, 0] = mt[:, 0] = 0
    return [jnp.asarray(x, dtype) for x in (pv, pt, tv, tt)] + [jnp.asarray(mv), jnp.asarray(mt)]


def test_beta_zero_is_symmetric_infonce(x64):
    pv, pt = [np.asarray(x, np.float64) for x in batch()[:2]]
    s = pv @ pt.T
    expected = -np.mean(np.diag(log_softmax(s, 1))) - np.mean(np.diag(log_softmax(s.T, 1)))
    got = clip_caption_loss(jnp.asarray(pv), jnp.asarray(pt), beta=0.0)
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_faulty_negative_targets_mix_identity_and_soft_permutation(x64):
    """With beta = 1 the targets are the plan Q alone: Q rows ~1 and columns exactly 1."""
    pv, pt = batch()[:2]
    pv = pv.astype(jnp.float64)
    pt = pt.astype(jnp.float64)
    s = np.asarray(pv @ pt.T)
    from norton_jax.ot import sinkhorn

    q = np.asarray(sinkhorn(jnp.asarray(s), epsilon=1.0).plan) * len(s)
    np.testing.assert_allclose(q.sum(0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-3)
    expected = -np.mean(np.sum(q * log_softmax(s, 1), 1)) - np.mean(np.sum(q.T * log_softmax(s.T, 1), 1))
    assert float(clip_caption_loss(pv, pt, beta=1.0)) == pytest.approx(expected, rel=1e-12)


def test_video_loss_is_scale_invariant_and_bucket_changes_it():
    pv, pt, tv, tt, mv, mt = batch(1)
    base = video_paragraph_loss(pv, pt, tv, tt, mv, mt, seq_len=4)
    scaled = video_paragraph_loss(pv * 7, pt * 0.1, tv * 3, tt * 2, mv, mt, seq_len=4)
    assert float(base) == pytest.approx(float(scaled), rel=1e-5)
    vanilla = video_paragraph_loss(pv, pt, tv, tt, mv, mt, seq_len=4, prompt_ratio=None)
    assert np.isfinite(float(vanilla)) and abs(float(vanilla) - float(base)) > 1e-4


def test_perfect_pairs_give_low_loss_and_high_accuracy():
    """Aligned embeddings: each paragraph retrieves its own video sequence."""
    rng = np.random.default_rng(2)
    b, d = 32, 16
    shared = rng.normal(size=(b, d))
    pv = shared + 0.01 * rng.normal(size=(b, d))
    pt = shared + 0.01 * rng.normal(size=(b, d))
    tv = np.repeat(pv[:, None], 3, 1)
    tt = np.repeat(pt[:, None], 4, 1)
    args = [jnp.asarray(x, jnp.float32) for x in (pv, pt, tv, tt)]
    masks = [jnp.ones((b, 3)), jnp.ones((b, 4))]
    total, metrics = norton_loss(*args, *masks, seq_len=8)
    assert float(metrics["paragraph_accuracy"]) == 1.0
    shuffled = norton_loss(args[0], args[1][::-1], args[2], args[3][::-1], *masks, seq_len=8)[0]
    assert float(total) < float(shuffled)


@pytest.mark.parametrize("kind", ["lse", "max", "mean"])
def test_clip_similarity_kinds(kind):
    pv, pt, tv, tt, mv, mt = batch(3)
    grads = jax.grad(
        lambda tv: video_paragraph_loss(pv, pt, tv, tt, mv, mt, seq_len=4, clip_similarity_kind=kind))(tv)
    if kind == "mean":
        assert np.all(np.asarray(grads) == 0)  # tokens are not used
    else:
        assert np.abs(np.asarray(grads)).max() > 0


def test_prompt_bucket_value_is_kth_smallest_diagonal():
    c = jnp.asarray(np.diag([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0]) + 0.05)
    assert float(prompt_bucket_value(c, 0.3)) == pytest.approx(0.25)  # int(3.0) = 3rd smallest
    assert float(prompt_bucket_value(c, 0.35)) == pytest.approx(0.25)  # int(3.5) = 3 (truncation)
    assert float(prompt_bucket_value(c, 1.0)) == pytest.approx(0.95)


def test_norton_loss_weight_and_metrics():
    args = batch(4)
    total, metrics = norton_loss(*args, seq_len=4)
    assert float(total) == pytest.approx(
        float(metrics["loss_clip_caption"] + 0.1 * metrics["loss_video_paragraph"]), rel=1e-6)
    assert 0 <= float(metrics["bucket_mass"]) <= 1 and 0 <= float(metrics["prompt_value"]) <= 1
    clip_only, m0 = norton_loss(*args, seq_len=4, weight=0.0)
    assert float(clip_only) == pytest.approx(float(metrics["loss_clip_caption"]), rel=1e-6)
    assert float(m0["loss_video_paragraph"]) == 0.0


def test_bfloat16_inputs_give_float32_loss():
    args = batch(5, dtype=jnp.bfloat16)
    total, metrics = jax.jit(functools.partial(norton_loss, seq_len=4))(*args)
    assert total.dtype == jnp.float32 and np.isfinite(float(total))
    ref, _ = norton_loss(*[a.astype(jnp.float32) for a in args[:4]], *args[4:], seq_len=4)
    assert float(total) == pytest.approx(float(ref), rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seq_len=5), "seq_len"),
        (dict(seq_len=0), "seq_len"),
        (dict(prompt_ratio=0.0), "prompt_ratio"),
        (dict(prompt_ratio=1.5), "prompt_ratio"),
        (dict(prompt_ratio=0.01), "prompt_ratio"),  # int(0.01 * 16) = 0 clips
        (dict(epsilon=0.0), "epsilon"),
        (dict(epsilon=-0.1), "epsilon"),
        (dict(alpha=0.0), "alpha"),
        (dict(beta=1.5), "beta"),
        (dict(weight=-1.0), "weight"),
    ],
)
def test_bad_hyperparameters_raise_at_trace_time(kwargs, match):
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in batch(6)]
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(functools.partial(norton_loss, **{"seq_len": 4, **kwargs}), *specs)


@pytest.mark.parametrize(
    "index, shape, match",
    [
        (1, (15, 8), "same shape"),
        (2, (16, 5, 9), "video_tokens"),
        (3, (8, 6, 8), "text_tokens"),
        (4, (16, 4), "video_mask"),
        (5, (16, 7), "text_mask"),
    ],
)
def test_mismatched_shapes_raise(index, shape, match):
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in batch(7)]
    specs[index] = jax.ShapeDtypeStruct(shape, jnp.float32)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(functools.partial(norton_loss, seq_len=4), *specs)


def test_non_finite_inputs_are_reported_by_name():
    loss_fn = checked(functools.partial(norton_loss, seq_len=4, check_inputs=True))
    args = batch(8)
    total, _ = loss_fn(*args)  # clean inputs pass
    assert np.isfinite(float(total))
    bad = list(args)
    bad[3] = bad[3].at[2, 1, 0].set(jnp.nan)
    with pytest.raises(checkify.JaxRuntimeError, match="text_tokens"):
        loss_fn(*bad)
    bad = list(args)
    bad[0] = bad[0].at[0, 0].set(jnp.inf)
    with pytest.raises(checkify.JaxRuntimeError, match="pooled_video"):
        loss_fn(*bad)
