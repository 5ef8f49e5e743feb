"""Tokenisation and the reference clip/caption sampling (spec §3.2, §4.1-4.3)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from data_pipeline import sampling, synthetic
from data_pipeline.tokenization import (build_text_seq, get_tokenizer, model_dir, tokenize_caption,
                                        tokenize_captions)


def test_tokenizer_known_strings():
    assert tokenize_caption("Hello, world!").tolist() == [7592, 1010, 2088, 999]
    assert tokenize_caption("The weather is lovely today.").tolist() == [1996, 4633, 2003, 8403, 2651, 1012]
    # uncased + accents stripped, WordPiece continuation pieces from the real vocabulary
    with open(os.path.join(model_dir(), "vocab.txt"), encoding="utf-8") as fh:
        vocab = [line.rstrip("\n") for line in fh]
    assert len(vocab) == 30522 and vocab[101] == "[CLS]" and vocab[102] == "[SEP]" and vocab[0] == "[PAD]"
    ids = tokenize_caption("Sautéing the CHICKPEAS")
    assert [vocab[i] for i in ids] == get_tokenizer().encode("sauteing the chickpeas", add_special_tokens=False).tokens
    assert any(vocab[i].startswith("##") for i in ids)


def test_reference_truncation():
    long = "word " * 60                       # 300 characters
    ids = tokenize_caption(long)
    assert len(ids) == 96 // 5 + 1            # cut at 96 characters first ("word " x 19 + "w")
    many = " ".join(["a"] * 80)               # 159 characters -> 48 tokens before the 32-token cut
    assert len(tokenize_caption(many)) == 32
    assert [len(x) for x in tokenize_captions([float("nan"), None, ""])] == [0, 0, 0]
    caps, cm = build_text_seq(np.arange(1000, 1040))
    assert caps.shape == (32,) and caps[:2].tolist() == [101, 102] and caps[31] == 102
    assert caps[2:31].tolist() == list(range(1000, 1029)) and cm.all()
    caps, cm = build_text_seq(np.array([7, 8], np.int32))
    assert caps[:6].tolist() == [101, 102, 7, 8, 102, 0] and cm.tolist() == [True] * 5 + [False] * 27


@pytest.fixture(scope="module")
def videos():
    rng = np.random.default_rng(11)
    vs = [synthetic.random_video(rng, f"v{i}", min_seconds=60, max_seconds=200) for i in range(12)]
    for v in vs:
        v["tokens"] = tokenize_captions(v["texts"])
    return vs


def _sample(v, seed, epoch=0, pos=0):
    return sampling.sample_video(v["features"], v["starts"], v["ends"], v["tokens"],
                                 sampling.video_rng(seed, epoch, pos))


def test_sampling_shapes_and_layout(videos):
    out = _sample(videos[0], 0)
    assert out["caps"].shape == (16, 32) and out["caps"].dtype == np.int32
    assert out["cmasks"].shape == (16, 32) and out["cmasks"].dtype == bool
    assert out["vfeats"].shape == (16, 16, 512) and out["vfeats"].dtype == np.float32
    assert out["vmasks"].shape == (16, 16) and out["vmasks"].dtype == bool
    n = out["cmasks"].sum(1)
    assert (out["caps"][:, 0] == 101).all() and (out["caps"][:, 1] == 102).all()
    assert (out["caps"][np.arange(16), n - 1] == 102).all()
    assert all((out["caps"][k, n[k]:] == 0).all() for k in range(16))
    # vfeats are the clip's frames from row 0, zeros after; vmasks mark them
    f = videos[0]["features"].astype(np.float32)
    for k in range(16):
        s, e = out["video_start"][k], out["video_end"][k]
        assert out["vmasks"][k].sum() == min(16, e - s) and out["vmasks"][k, :e - s].all()
        np.testing.assert_array_equal(out["vfeats"][k, :e - s], f[s:e])
        assert (out["vfeats"][k, e - s:] == 0).all()
        # the caption is the concatenation of the merged captions, cut to 29 tokens
        ids = np.concatenate(videos[0]["tokens"][out["text_start"][k]:out["text_end"][k]])[:29]
        np.testing.assert_array_equal(out["caps"][k, 2:2 + len(ids)], ids)


def test_sampling_statistics(videos):
    toks, durs, centre_ok = [], [], []
    for i, v in enumerate(videos):
        for seed in range(6):
            out = _sample(v, seed, pos=i)
            toks.extend(out["cmasks"].sum(1) - 3)
            d = out["video_end"] - out["video_start"]
            durs.extend(d)
            # sorted by (text_start, video_start, text_end, video_end)
            keys = list(zip(out["text_start"], out["video_start"], out["text_end"], out["video_end"]))
            assert keys == sorted(keys)
            # the clip overlaps the span of its merged captions (its centre was drawn inside it)
            lo, hi = out["text_start"], out["text_end"]
            span_s = np.floor(v["starts"][lo]) - 16
            span_e = np.ceil(v["ends"][hi - 1]) + 16
            centre_ok.extend((out["video_start"] >= span_s) & (out["video_end"] <= span_e))
    toks, durs = np.asarray(toks), np.asarray(durs)
    assert toks.min() >= 8 and toks.max() <= 29          # merged towards 8-32, cut to 29
    assert (toks == 29).any() and (toks < 20).any()
    assert durs.min() == 3 and durs.max() == 16          # random 3-16 s clips (videos >= 60 s)
    assert 7.0 < durs.mean() < 12.0                      # uniform 3..16 has mean 9.5
    assert all(centre_ok)


def test_merge_respects_target():
    rng = np.random.default_rng(0)
    n_tok = np.full(50, 3)
    st = np.arange(50, dtype=np.float32) * 2
    lens = []
    for _ in range(500):
        lo, hi = sampling.merge_captions(n_tok, st, st + 1.5, rng)
        lens.append(int(n_tok[lo:hi].sum()))
        assert 0 <= lo < hi <= 50
    assert min(lens) >= 8 and max(lens) <= 34            # stops at the first total >= target


def test_sampling_deterministic_per_seed(videos):
    a = _sample(videos[3], seed=5, epoch=2, pos=3)
    b = _sample(videos[3], seed=5, epoch=2, pos=3)
    c = _sample(videos[3], seed=6, epoch=2, pos=3)
    d = _sample(videos[3], seed=5, epoch=3, pos=3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["caps"], c["caps"]) and not np.array_equal(a["caps"], d["caps"])


def test_short_video_clip_is_whole_video():
    f = np.ones((2, 512), np.float16)
    out = sampling.sample_video(f, np.array([0.0], np.float32), np.array([1.5], np.float32),
                                [np.array([5, 6], np.int32)], np.random.default_rng(0))
    assert (out["video_end"] - out["video_start"] == 2).all() and (out["vmasks"].sum(1) == 2).all()


def test_flatten_video_major(videos):
    samples = [_sample(v, 0, pos=i) for i, v in enumerate(videos[:3])]
    flat = sampling.flatten_videos(samples)
    assert flat["caps"].shape == (48, 32)
    for v in range(3):
        for c in (0, 15):
            np.testing.assert_array_equal(flat["vfeats"][v * 16 + c], samples[v]["vfeats"][c])
