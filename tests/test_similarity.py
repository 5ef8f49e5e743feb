"""Fine-grained similarity (Eq. 5) in both masking semantics; normalisation invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy_reference import fine_grained_paper, fine_grained_reference, minmax

from norton_jax.similarity import clip_similarity, fine_grained_similarity, minmax_normalize


def random_tokens(rng, bt=6, bv=5, t=7, f=4, d=8, full=False):
    tt = rng.normal(size=(bt, t, d))
    tv = rng.normal(size=(bv, f, d))
    mt = (rng.uniform(size=(bt, t)) > 0.4).astype(float)
    mv = (rng.uniform(size=(bv, f)) > 0.4).astype(float)
    mt[:, 0] = mv[:, 0] = 1
    if full:
        mt[:] = mv[:] = 1
    return tt, tv, mt, mv


@pytest.mark.parametrize("alpha", [1.0, 0.1, 2.0])
@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_reference_semantics_matches_dense_reference_code(alpha, chunk_size, x64):
    tt, tv, mt, mv = random_tokens(np.random.default_rng(0))
    t2v, v2t = fine_grained_similarity(
        jnp.asarray(tt), jnp.asarray(tv), jnp.asarray(mt), jnp.asarray(mv), alpha=alpha, chunk_size=chunk_size)
    ref_t2v, ref_v2t = fine_grained_reference(tt, tv, mt, mv, alpha)
    np.testing.assert_allclose(t2v, ref_t2v, rtol=1e-12)
    np.testing.assert_allclose(v2t, ref_v2t, rtol=1e-12)


@pytest.mark.parametrize("reduce", ["lse", "max"])
def test_paper_semantics_matches_masked_loops(reduce, x64):
    tt, tv, mt, mv = random_tokens(np.random.default_rng(1))
    t2v, v2t = fine_grained_similarity(
        jnp.asarray(tt), jnp.asarray(tv), jnp.asarray(mt), jnp.asarray(mv),
        alpha=0.5, reduce=reduce, semantics="paper", chunk_size=3)
    ref_t2v, ref_v2t = fine_grained_paper(tt, tv, mt, mv, 0.5, reduce)
    np.testing.assert_allclose(t2v, ref_t2v, rtol=1e-12)
    np.testing.assert_allclose(v2t, ref_v2t, rtol=1e-12)


def test_semantics_agree_without_padding_and_differ_with_it(x64):
    rng = np.random.default_rng(2)
    args = [jnp.asarray(x) for x in random_tokens(rng, full=True)]
    ref = fine_grained_similarity(*args, semantics="reference")
    paper = fine_grained_similarity(*args, semantics="paper")
    np.testing.assert_allclose(ref[0], paper[0], rtol=1e-12)
    np.testing.assert_allclose(ref[1], paper[1], rtol=1e-12)
    args = [jnp.asarray(x) for x in random_tokens(rng)]
    ref = fine_grained_similarity(*args, semantics="reference")
    paper = fine_grained_similarity(*args, semantics="paper")
    assert np.abs(np.asarray(ref[0]) - np.asarray(paper[0])).max() > 1e-3


def test_padded_token_values_do_not_matter():
    rng = np.random.default_rng(3)
    tt, tv, mt, mv = random_tokens(rng)
    base = fine_grained_similarity(*map(jnp.asarray, (tt, tv, mt, mv)))
    tt2 = np.where(mt[..., None] > 0, tt, 1e3 * rng.normal(size=tt.shape))
    tv2 = np.where(mv[..., None] > 0, tv, rng.normal(size=tv.shape))
    other = fine_grained_similarity(*map(jnp.asarray, (tt2, tv2, mt, mv)))
    np.testing.assert_allclose(base[0], other[0], rtol=1e-6)
    np.testing.assert_allclose(base[1], other[1], rtol=1e-6)


def test_fused_similarity_invariants_and_scale_invariance():
    rng = np.random.default_rng(4)
    tt, tv, mt, mv = random_tokens(rng, bt=6, bv=6)
    pt, pv = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    args = [jnp.asarray(x) for x in (pt, pv, tt, tv, mt, mv)]
    c = np.asarray(clip_similarity(*args))
    assert c.min() >= 0 and c.max() <= 1 + 1e-6
    scaled = [args[0] * 3.0, args[1] * 0.2, args[2] * 5.0, args[3] * 0.5, args[4], args[5]]
    np.testing.assert_allclose(clip_similarity(*scaled), c, rtol=1e-5, atol=1e-6)
    mean_only = np.asarray(clip_similarity(*args, kind="mean"))
    assert mean_only.min() == 0 and mean_only.max() == pytest.approx(1.0)
    # Weights 1/3 and 2/3 (trap T6): fusion of the three min-maxed matrices.
    t2v, v2t = fine_grained_similarity(args[2], args[3], args[4], args[5])
    expected = (0.5 * mean_only + (minmax(np.asarray(t2v)) + minmax(np.asarray(v2t))) / 2) / 1.5
    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-6)


def test_minmax_gradient_flows_through_min_and_max():
    x = jnp.asarray([[0.0, 1.0], [2.0, 4.0]])
    grad = jax.grad(lambda x: minmax_normalize(x)[0, 1])(x)
    # d/dx of (x01 - min)/(max - min): through x01, the min (x00) and the max (x11).
    np.testing.assert_allclose(grad, [[-0.1875, 0.25], [0.0, -0.0625]], rtol=1e-6)
    assert np.all(np.asarray(minmax_normalize(jnp.ones((3, 3)))) == 0)


def test_bfloat16_tokens_compute_in_float32():
    rng = np.random.default_rng(5)
    tt, tv, mt, mv = random_tokens(rng)
    t2v, _ = fine_grained_similarity(jnp.asarray(tt, jnp.bfloat16), jnp.asarray(tv, jnp.bfloat16),
                                     jnp.asarray(mt), jnp.asarray(mv))
    assert t2v.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(t2v)))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(text_mask=np.ones((6, 3))), "text_mask"),
        (dict(video_tokens=np.ones((5, 4, 9))), "token dims"),
        (dict(alpha=0.0), "alpha"),
        (dict(semantics="exact"), "semantics"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_bad_inputs(change, match):
    tt, tv, mt, mv = random_tokens(np.random.default_rng(6))
    kwargs = dict(text_tokens=tt, video_tokens=tv, text_mask=mt, video_mask=mv)
    kwargs.update(change)
    arrays = {k: jnp.asarray(v) for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    options = {k: v for k, v in kwargs.items() if not isinstance(v, np.ndarray)}
    with pytest.raises(ValueError, match=match):
        fine_grained_similarity(**arrays, **options)
