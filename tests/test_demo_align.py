"""The Figure-3 re-alignment demo and the DTW it draws."""

import numpy as np
import pytest

from norton_jax import demo_align
from norton_jax.dtw import dtw_cumulative_cost, dtw_path


def slow_dtw(cost):
    m, n = cost.shape
    d = np.full((m + 1, n + 1), np.inf)
    d[0, 0] = 0
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            d[i, j] = cost[i - 1, j - 1] + min(d[i - 1, j - 1], d[i - 1, j], d[i, j - 1])
    return d[1:, 1:]


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1), (5, 8), (9, 4)])
def test_dtw_matches_double_loop(shape, x64):
    rng = np.random.default_rng(sum(shape))
    cost = rng.normal(size=(3, *shape))
    got = np.asarray(dtw_cumulative_cost(cost))
    for k in range(3):
        np.testing.assert_allclose(got[k], slow_dtw(cost[k]), rtol=1e-12)


def test_dtw_path_is_monotonic_and_optimal(x64):
    cost = np.random.default_rng(0).uniform(size=(6, 9))
    path = dtw_path(cost)
    assert path[0] == (0, 0) and path[-1] == (5, 8)
    for (i0, j0), (i1, j1) in zip(path, path[1:]):
        assert (i1 - i0, j1 - j0) in {(1, 1), (1, 0), (0, 1)}
    assert sum(cost[i, j] for i, j in path) == pytest.approx(slow_dtw(cost)[-1, -1], rel=1e-12)


def test_bucket_filters_exactly_the_irrelevant_captions():
    pair = demo_align.make_noisy_pair(seed=0)
    result = demo_align.realign(pair.similarity)
    assert result.filtered == pair.irrelevant == [4, 6]
    # Vanilla OT must place every caption somewhere: rows sum to ~1 (columns exactly).
    np.testing.assert_allclose(result.ot_plan.sum(0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(result.ot_plan.sum(1), 1.0, rtol=5e-2)
    # Norton keeps the aligned captions' mass on their true clips.
    for i, t in enumerate(pair.true_clip):
        if t is not None:
            assert result.norton_plan[i].argmax() == t


def test_demo_writes_png_and_prints_filtered(tmp_path, capsys):
    out = tmp_path / "fig" / "figure3.png"
    assert demo_align.main(["--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    printed = capsys.readouterr().out
    assert "filtered captions: [4, 6]" in printed
    assert "subscribe to my channel" in printed
