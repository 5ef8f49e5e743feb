"""Evaluation metrics (spec §5): hand-computed answers and slow loop references."""

import math

import numpy as np
import pytest

from norton_jax import dtw
from norton_jax.evaluate import metrics as M

INF = float("inf")

# ---------------------------------------------------------------------------------------
# slow, obviously correct transcriptions of spec §5.4 (Python lists and loops)
# ---------------------------------------------------------------------------------------


def slow_pad(x, height, width, otam):
    x = [list(map(float, row)) for row in x]
    d0 = height - len(x)
    d1 = width - len(x[0])  # computed before the OTAM zero columns
    if otam:
        x = [[0.0] + row + [0.0] for row in x]
    x = [row + [INF] * d1 if d1 >= 0 else row[: len(row) + d1] for row in x]
    x = x + [[INF] * len(x[0]) for _ in range(d0)] if d0 >= 0 else x[: len(x) + d0]
    rows = list(range(len(x)))[-d0 - 1 :]  # Python slice semantics, as torch indexing
    cols = list(range(len(x[0])))[-d1:]
    for r in rows:
        for c in cols:
            x[r][c] = 0.0
    return x


def slow_dtw(y):
    h, w = len(y), len(y[0])
    c = [[0.0] * w for _ in range(h)]
    c[0][0] = y[0][0]
    for j in range(1, w):
        c[0][j] = y[0][j] + c[0][j - 1]
    for i in range(1, h):
        c[i][0] = y[i][0] + c[i - 1][0]
    for i in range(1, h):
        for j in range(1, w):
            c[i][j] = y[i][j] + min(c[i - 1][j - 1], c[i][j - 1], c[i - 1][j])
    return c


def slow_otam(y, textbook=False):
    h, w = len(y), len(y[0])
    c = [[0.0] * w for _ in range(h)]
    for j in range(1, w):
        c[0][j] = y[0][j] + c[0][j - 1]
    for i in range(1, h):
        m = min(c[i - 1][0], c[i - 1][1], c[i][0])
        c[i][1] = y[i][1] + m if textbook else y[i][1] - m
        for j in range(2, w - 1):
            c[i][j] = y[i][j] + min(c[i - 1][j - 1], c[i][j - 1])
        c[i][w - 1] = y[i][w - 1] + min(c[i - 1][w - 2], c[i - 1][w - 1], c[i][w - 2])
    return c


def slow_paragraph_scores(sim, cap_ids, clip_ids, method, background, textbook=False):
    videos = sorted(set(cap_ids))
    rows = {v: [i for i, x in enumerate(cap_ids) if x == v] for v in videos}
    cols = {v: [i for i, x in enumerate(clip_ids) if x == v] for v in videos}
    mt = max(len(r) for r in rows.values())
    mv = max(len(c) for c in cols.values())
    scores = np.zeros((len(videos), len(videos)))
    for a, u in enumerate(videos):
        for b, v in enumerate(videos):
            if method == "cap_avg":
                scores[a, b] = np.mean([max(sim[r][c] for c in cols[v]) for r in rows[u]])
                continue
            offset = 3.0 if (background and method == "dtw") else 0.0
            x = [[offset - sim[r][c] for c in cols[v]] for r in rows[u]]
            n = len(x)
            if background:
                mn = [min(x[r][j] for r in range(n)) for j in range(len(x[0]))]
                kept = sorted(sorted(range(len(mn)), key=lambda j: mn[j])[: int(1.3 * n)])
                x = [[row[j] for j in kept] for row in x]
            k = len(x[0])
            if method == "dtw" or not background:
                scale = mt * mv / (n * k)
            else:
                scale = max(mt, mv) / max(n, k)
            x = [[val * scale for val in row] for row in x]
            if method == "dtw":
                scores[a, b] = -slow_dtw(slow_pad(x, mt, mv, False))[-1][-1]
            else:
                xt = [list(col) for col in zip(*x)]
                scores[a, b] = -(
                    slow_otam(slow_pad(x, mt, mv, True), textbook)[-1][-1]
                    + slow_otam(slow_pad(xt, mt, mv, True), textbook)[-1][-1]
                )
    return scores


# ---------------------------------------------------------------------------------------
# clip retrieval / recall
# ---------------------------------------------------------------------------------------


def test_retrieval_metrics_by_hand():
    sim = np.array([[3.0, 1, 2], [5, 1, 0], [0, 1, 2]])
    # ranks of the targets: row 0 -> 0, row 1 -> 1 (5 > 1), row 2 -> 0
    assert M.retrieval_metrics(sim) == {"R1": 2 / 3, "R5": 1.0, "R10": 1.0, "MR": 1.0}
    big = np.eye(6)
    big[5] = [6, 5, 4, 3, 2, 1]  # target of query 5 is ranked last: rank 5
    out = M.retrieval_metrics(big)
    assert out["R1"] == pytest.approx(5 / 6) and out["R5"] == pytest.approx(5 / 6) and out["R10"] == 1.0
    assert out["MR"] == 1.0


def test_recall_at_k_uses_the_last_columns_of_an_ascending_sort():
    scores = np.array([[0.1, 0.9, 0.5], [0.2, 0.8, 0.1], [0.3, 0.3, 0.2]])
    # row 0: best is column 1 (miss), row 1: column 1 (hit), row 2: column 2 is last (miss)
    out = M.recall_at_k(scores)
    assert out["R1"] == pytest.approx(1 / 3) and out["R5"] == 1.0 and out["R10"] == 1.0


# ---------------------------------------------------------------------------------------
# DTW / OTAM helpers against the loops
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,target", [((3, 4), (5, 6)), ((3, 6), (5, 6)), ((4, 6), (4, 6)),
                                          ((6, 3), (4, 8)), ((7, 2), (4, 8)), ((5, 5), (4, 5))])
@pytest.mark.parametrize("otam", [False, True])
def test_reference_pad_matches_torch_semantics(shape, target, otam):
    x = np.random.default_rng(0).normal(size=shape)
    got = dtw.reference_pad(x, shape[0], shape[1], *target, otam=otam)
    np.testing.assert_array_equal(got, np.array(slow_pad(x.tolist(), *target, otam)))


def test_d1_zero_quirk_zeroes_the_whole_last_real_row():
    y = dtw.pad_dtw(np.ones((2, 3)), 3, 3)
    np.testing.assert_array_equal(y, [[1, 1, 1], [0, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize("shape", [(1, 3), (2, 2), (4, 3), (5, 9), (9, 4)])
@pytest.mark.parametrize("variant", ["reference", "textbook"])
def test_otam_matches_double_loop(shape, variant, x64):
    cost = np.random.default_rng(sum(shape)).normal(size=(3, *shape))
    got = np.asarray(dtw.otam_cumulative_cost(cost, variant=variant))
    dist = np.asarray(dtw.otam_distance(cost, variant=variant))
    for k in range(3):
        want = np.array(slow_otam(cost[k].tolist(), variant == "textbook"))
        np.testing.assert_allclose(got[k], want, rtol=1e-12)
        assert dist[k] == pytest.approx(want[-1, -1], rel=1e-12)


def test_otam_reference_subtracts_in_column_one(x64):
    y = np.array([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
    # C[0] = [0, 1, 1]; C[1,1] = 2 - min(0, 1, 0) = 2 (textbook: 2 + 0); both give C[1,2] = 0 + min(1, 1, 2) = 1
    assert float(dtw.otam_distance(y)) == 1.0
    y[1, 0] = 0.0
    y[0, 1] = -1.0  # C[0] = [0, -1, -1]; C[1,1] = 2 - (-1) = 3 vs 2 + (-1) = 1
    np.testing.assert_allclose(np.asarray(dtw.otam_cumulative_cost(y))[1, 1], 3.0)
    np.testing.assert_allclose(np.asarray(dtw.otam_cumulative_cost(y, variant="textbook"))[1, 1], 1.0)


@pytest.mark.parametrize("otam", [False, True])
def test_equivalent_columns_keep_the_distance(otam, x64):
    rng = np.random.default_rng(1)
    height, width, max_cols = 5, 14, 4
    x = rng.normal(size=(40, 7, max_cols))
    rows = rng.integers(1, 8, 40)  # includes rows > height (negative padding)
    cols = rng.integers(1, max_cols + 1, 40)
    full = dtw.reference_pad(x, rows, cols, height, width, otam=otam)
    keep = dtw.equivalent_columns(width, max_cols, otam=otam)
    crop = dtw.reference_pad(x, rows, cols, height, width, otam=otam, columns=keep)
    assert crop.shape[-1] < full.shape[-1]
    f = dtw.otam_distance if otam else dtw.dtw_distance
    np.testing.assert_array_equal(np.asarray(f(crop)), np.asarray(f(full)))


# ---------------------------------------------------------------------------------------
# video-paragraph retrieval
# ---------------------------------------------------------------------------------------


def test_cap_avg_by_hand():
    ids = ["b", "b", "a", "a", "a"]  # videos sorted: a, b
    sim = np.array([
        [1.0, 0.0, 2.0, 0.0, 0.0],
        [0.0, 3.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 5.0, 0.0, 0.0],
        [1.0, 1.0, 0.0, 0.0, 4.0],
        [2.0, 0.0, 0.0, 0.0, 0.0],
    ])
    res = M.paragraph_scores(sim, ids, ids, method="cap_avg", background=False)
    assert res.video_ids == ["a", "b"]
    # a's captions (rows 2, 3, 4): best over a's clips (cols 2-4) = 5, 4, 0; over b's = 0, 1, 2
    # b's captions (rows 0, 1): over a's clips = 2, 1; over b's = 1, 3
    np.testing.assert_allclose(res.scores, [[3.0, 1.0], [1.5, 2.0]])
    assert M.paragraph_retrieval(sim, ids, ids, method="cap_avg", background=False) == {
        "R1": 1.0, "R5": 1.0, "R10": 1.0}


def _random_protocol(rng, n_videos, caps_range, clips_range, background):
    n_caps = rng.integers(*caps_range, n_videos)
    cap_ids = [f"v{u}" for u in range(n_videos) for _ in range(n_caps[u])]
    if background:
        n_clips = rng.integers(*clips_range, n_videos)
        clip_ids = [f"v{u}" for u in range(n_videos) for _ in range(n_clips[u])]
    else:
        clip_ids = cap_ids
    order = rng.permutation(n_videos)  # videos need not arrive sorted
    rank = {f"v{u}": int(order[u]) for u in range(n_videos)}
    cap_ids = sorted(cap_ids, key=lambda v: rank[v])
    clip_ids = sorted(clip_ids, key=lambda v: rank[v])
    sim = rng.normal(size=(len(cap_ids), len(clip_ids)))
    return sim, cap_ids, clip_ids


@pytest.mark.parametrize("method", ["cap_avg", "dtw", "otam"])
@pytest.mark.parametrize("background", [False, True])
def test_paragraph_scores_match_the_loops(method, background, x64):
    rng = np.random.default_rng(7)
    # background: up to 5 captions but up to 9 windows -> int(1.3*5) = 6 > MT = 5 rows, so the
    # transposed OTAM block is cropped (negative padding); without background some videos
    # have the maximal length (column padding 0: the whole last row is zeroed).
    sim, cap_ids, clip_ids = _random_protocol(rng, 7, (1, 6), (2, 10), background)
    got = M.paragraph_scores(sim, cap_ids, clip_ids, method=method, background=background, chunk_elements=100)
    want = slow_paragraph_scores(sim, cap_ids, clip_ids, method, background)
    np.testing.assert_allclose(got.scores, want, rtol=1e-10, atol=1e-10)


def test_textbook_otam_option_matches_the_loops(x64):
    rng = np.random.default_rng(3)
    sim, cap_ids, clip_ids = _random_protocol(rng, 5, (2, 6), (3, 12), True)
    got = M.paragraph_scores(sim, cap_ids, clip_ids, method="otam", background=True, otam_variant="textbook")
    want = slow_paragraph_scores(sim, cap_ids, clip_ids, "otam", True, textbook=True)
    np.testing.assert_allclose(got.scores, want, rtol=1e-10)
    ref = M.paragraph_scores(sim, cap_ids, clip_ids, method="otam", background=True)
    assert not np.allclose(ref.scores, got.scores)


def test_paragraph_retrieval_finds_matching_videos():
    rng = np.random.default_rng(0)
    n_caps = [3, 4, 2, 5]
    ids = [f"v{u}" for u in range(4) for _ in range(n_caps[u])]
    same = np.equal.outer(ids, ids)
    sim = np.where(same, 1.0, 0.0) + 0.05 * rng.normal(size=same.shape)
    for method in ("cap_avg", "dtw", "otam"):
        assert M.paragraph_retrieval(sim, ids, ids, method=method, background=False)["R1"] == 1.0


def test_paragraph_errors():
    sim = np.zeros((2, 2))
    with pytest.raises(ValueError, match="method"):
        M.paragraph_retrieval(sim, ["a", "b"], ["a", "b"], method="ot", background=False)
    with pytest.raises(ValueError, match="clips only"):
        M.paragraph_retrieval(sim, ["a", "a"], ["a", "b"], method="dtw", background=True)
    with pytest.raises(ValueError, match="caption ids"):
        M.paragraph_retrieval(sim, ["a"], ["a", "b"], method="dtw", background=True)


# ---------------------------------------------------------------------------------------
# HTM-Align
# ---------------------------------------------------------------------------------------


def test_htm_align_windows_by_hand():
    # T = 120 -> starts arange(0, 104, 8): 13 windows (idx 0..12); last 4 = idx 9..12
    starts = [0, 10, 30, 50, 60, 80, 100]
    ends = [4, 14, 34, 54, 64, 84, 110]
    aligned = [1, 0, 1, 0, 1, 0, 1]  # non-alignable mid-times: 12 (c1), 52 (c3), 82 (c5)
    wins = M.htm_align_windows(120, starts, ends, aligned)
    assert [w.start for w in wins] == list(range(0, 104, 8))
    by_start = {w.start: w for w in wins}
    w0 = by_start[0]  # [-32, 64] holds c1, c3 -> 1..3, but idx 0 <= 3 starts at 0
    assert w0.stop == 32 and list(w0.captions) == [0, 1, 2, 3]
    w40 = by_start[40]  # idx 5: [8, 104] holds c1, c3, c5 -> 1..5
    assert list(w40.captions) == [1, 2, 3, 4, 5]
    w96 = by_start[96]  # idx 12 (last 4): [64, 160] holds c5 -> 5..end
    assert w96.stop == 120 and list(w96.captions) == [5, 6]
    # a short video where a window is both among the first and the last 4: only the left
    # end moves (the reference's elif)
    short = M.htm_align_windows(40, [0, 30, 36], [2, 32, 38], [0, 0, 1])  # starts 0, 8, 16
    assert [list(w.captions) for w in short] == [[0, 1], [0, 1], [0, 1]]


def test_htm_align_dense_windows_score_every_caption():
    starts, ends = [0, 10, 30, 50, 60, 80, 100], [4, 14, 34, 54, 64, 84, 110]
    # Without any non-alignable caption the reference protocol has no window at all ...
    assert M.htm_align_windows(120, starts, ends, [1] * 7) == []
    # ... the dense one keeps every window of the reference grid with every caption.
    dense = M.htm_align_windows(120, starts, ends, [1] * 7, active="dense")
    assert [w.start for w in dense] == list(range(0, 104, 8)) and dense[-1].stop == 120
    assert all(list(w.captions) == list(range(7)) for w in dense)
    assert [w.start for w in M.htm_align_windows(120, starts, ends, [1, 0, 1, 0, 1, 0, 1], active="dense")] == \
        [w.start for w in dense]  # independent of the flags
    video = M.htm_align_video(40, [0, 30, 36], [2, 32, 38], [1, 1, 1], lambda a, b, c: np.ones((len(c), 32)))
    assert np.all(video == -6e4)  # reference: nothing covered
    with pytest.raises(ValueError, match="active"):
        M.htm_align_windows(120, starts, ends, [1] * 7, active="all")


def test_htm_align_stitch_averages_overlaps_and_marks_uncovered():
    wins = [M.AlignWindow(0, 0, 4, np.array([0, 1])), M.AlignWindow(1, 2, 5, np.array([1]))]
    sims = [np.array([[1.0, 2, 3, 4, 9, 9], [1, 1, 1, 1, 9, 9]]), np.array([[3.0, 5, 7, 9]])]
    s = M.htm_align_stitch(6, 3, wins, sims)
    np.testing.assert_allclose(s[0], [1, 2, 3, 4, -6e4, -6e4])
    np.testing.assert_allclose(s[1], [1, 1, 2, 3, 7, -6e4])  # (1+3)/2, (1+5)/2 where windows overlap
    np.testing.assert_allclose(s[2], -6e4)
    video = M.htm_align_video(40, [0, 30, 36], [2, 32, 38], [0, 0, 1], lambda a, b, c: np.ones((len(c), 32)))
    # windows at 0, 8, 16 cover all 40 s for the active captions 0-1; caption 2 is never active
    assert video.shape == (3, 40) and np.all(video[:2] == 1.0) and np.all(video[2] == -6e4)


def test_roc_auc_by_hand():
    # positive-negative pairs: (.9,.8) 1, (.9,.3) 1, (.3,.8) 0, (.3,.3) tie 1/2 -> 2.5 / 4
    assert M.roc_auc([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.3]) == 0.625
    assert M.roc_auc([0, 1], [0.0, 1.0]) == 1.0
    assert math.isnan(M.roc_auc([1, 1], [0.0, 1.0]))


def test_htm_align_metrics_inclusive_hits():
    s1 = np.full((3, 10), -1.0)
    s1[0, 5] = 1  # caption 0: [4.2, 4.9] -> [4, 5]: argmax 5 is a hit (inclusive end)
    s1[1, 9] = 1  # caption 1 not alignable: not scored for recall
    s1[2, 2] = 1  # caption 2: [3.0, 6.0] -> [3, 6]: 2 is a miss
    s2 = np.full((1, 4), -6e4)  # never covered: argmax 0, annotated [0, 1] -> hit
    out = M.htm_align_metrics(
        [s1, s2], [[4.2, 0, 3.0], [0.0]], [[4.9, 1, 6.0], [1.0]], [[1, 0, 1], [1]]
    )
    assert out["recall"] == pytest.approx(2 / 3) and out["num_alignable"] == 3 and out["num_captions"] == 4
    # scores max: 1 (pos), 1 (neg), 1 (pos), -6e4 (pos) -> pairs vs the negative: .5, .5, 0
    assert out["auc"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------
# MSR-VTT multiple choice and COIN
# ---------------------------------------------------------------------------------------


def test_multiple_choice_accuracy_by_hand():
    scores = np.array([[1.0, 2.0, 0.0], [3.0, 3.0, 1.0]])  # predictions 1, 0 (first on ties)
    assert M.multiple_choice_accuracy(scores, [1, 1]) == {"acc": 0.5}
    with pytest.raises(ValueError):
        M.multiple_choice_accuracy(scores, [1, 3])


def test_coin_windows_targets_and_merging():
    assert M.coin_windows(40) == [(0, 32), (16, 40)]
    assert M.coin_windows(32) == [(0, 32)]
    assert M.coin_windows(33) == [(0, 32), (16, 33)]
    assert M.coin_windows(20, stride=8) == [(0, 20)]
    np.testing.assert_array_equal(
        M.coin_video_targets(8, [(1.5, 3.2, 5), (3.0, 3.5, 2), (6.2, 20.0, 1)]), [0, 5, 5, 2, 0, 0, 1, 1]
    )
    a = np.zeros((32, 2))
    a[:, 0] = 1.0
    b = np.zeros((32, 2))  # padded to 32 slots, only 24 real
    b[:, 1] = 3.0
    merged = M.merge_window_scores(40, [a, b])
    np.testing.assert_allclose(merged[:16], [[1, 0]] * 16)
    np.testing.assert_allclose(merged[16:32], [[0.5, 1.5]] * 16)
    np.testing.assert_allclose(merged[32:], [[0, 3]] * 8)


def test_coin_zero_shot_by_hand():
    lab = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    lbd = M.coin_zero_shot_threshold(lab)  # off-diagonal dot products .6, 0, .8
    assert lbd == pytest.approx(0.8)
    frames = np.array([[0.9, 0.1, 0.2], [0.5, 0.8, 0.1], [0.1, 0.2, 0.3]])
    np.testing.assert_array_equal(M.coin_zero_shot_predictions(frames, lbd), [1, 0, 0])  # 0.8 is not > 0.8
    out = M.frame_accuracy([np.array([1, 0]), np.array([0, 2])], [np.array([1, 0]), np.array([0, 3])])
    assert out == {"frame_acc": 0.75, "num_frames": 4}


@pytest.mark.slow
def test_background_protocol_at_youcook_scale_is_fast():
    import time

    rng = np.random.default_rng(0)
    n_videos = 436  # YouCookII validation: <= 16 captions and <= 104 windows per video
    n_caps = rng.integers(3, 17, n_videos)
    n_wins = rng.integers(10, 105, n_videos)
    cap_ids = [f"v{u:03d}" for u in range(n_videos) for _ in range(n_caps[u])]
    win_ids = [f"v{u:03d}" for u in range(n_videos) for _ in range(n_wins[u])]
    sim = rng.normal(size=(len(cap_ids), len(win_ids))).astype(np.float32)
    t0 = time.perf_counter()
    out = M.paragraph_retrieval(sim, cap_ids, win_ids, method="dtw", background=True)
    assert time.perf_counter() - t0 < 60  # ~2-8 s on 2 shared CPU cores, compilation included
    assert 0.0 <= out["R1"] <= out["R5"] <= out["R10"] <= 1.0


def test_alignment_recall_floor_ceil_hit_rule():
    # caption 0: gt [4.2, 5.0] -> hits on [4, 5]; caption 1: gt [5.0, 8.5] -> [5, 9]; caption 2 not alignable
    r = M.alignment_recall([np.asarray([4.0, 9.0, 50.0]), np.asarray([2.9])],
                           [np.asarray([4.2, 5.0, 0.0]), np.asarray([3.0])],
                           [np.asarray([5.0, 8.5, 1.0]), np.asarray([4.0])],
                           [np.asarray([1, 1, 0]), np.asarray([1])])
    assert r == {"recall": 2 / 3, "num_alignable": 3}
    assert math.isnan(M.alignment_recall([np.zeros(1)], [np.zeros(1)], [np.zeros(1)], [np.zeros(1)])["recall"])


def test_windows_one_implementation_for_coin_youcook_and_htm_align():
    from norton_jax.evaluate.loaders import youcook_background_windows
    from norton_jax.evaluate.windows import sliding_windows, stitch_windows, window_grid

    assert sliding_windows(70, stride=16, size=32) == [(0, 32), (16, 48), (32, 64), (48, 70)]
    assert M.coin_windows(70) == sliding_windows(70, stride=16, size=32)
    assert youcook_background_windows(40) == sliding_windows(40, stride=16, size=16) == [(0, 16), (16, 32), (32, 40)]
    # the HTM-Align grid: starts below T - size // 2, so it runs past the first window reaching the end
    assert window_grid(70, stride=8, size=32) == [(s, min(70, s + 32)) for s in range(0, 54, 8)]
    assert window_grid(16, stride=8, size=32) == []
    total, count = stitch_windows(2, 5, [(0, 3), (2, 5)], [np.ones((1, 4)), 2 * np.ones((2, 3))],
                                  [np.asarray([1]), np.asarray([0, 1])])
    np.testing.assert_array_equal(count, [[0, 0, 1, 1, 1], [1, 1, 2, 1, 1]])
    np.testing.assert_array_equal(total, [[0, 0, 2, 2, 2], [1, 1, 3, 2, 2]])
    with pytest.raises(ValueError, match="positive"):
        sliding_windows(0, stride=8, size=32)
