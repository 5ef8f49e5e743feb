"""The ``align`` tool: OT re-alignment with the prompt bucket, files, CLI, corpus filtering."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from norton_jax import align as A
from norton_jax.checkpoint import Checkpointer
from norton_jax.models import ModelConfig, init_model, tiny_model_config

CFG = ModelConfig.from_any(tiny_model_config()).replace(num_hidden_text_layers=1, num_hidden_video_layers=1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("align_ckpt")
    with Checkpointer(root / "checkpoints", model_config=CFG, enable_async=False) as ckpt:
        ckpt.save(3, params=nnx.state(init_model(CFG, seed=0), nnx.Param), force=True)
    return root


def _synthetic(t=200):
    """7 captions: six step captions spoken 8 s late, one chatter line (index 3) that matches nothing."""
    true = [(5, 20), (30, 45), (60, 75), (100, 115), (130, 145), (165, 180)]
    rng = np.random.default_rng(0)
    sim = 0.1 + 0.05 * rng.random((7, t))
    rows = [0, 1, 2, 4, 5, 6]
    for row, (a, b) in zip(rows, true):
        sim[row, a:b] += 0.8
    starts = np.asarray([a + 8.0 for a, _ in true[:3]] + [85.0] + [a + 8.0 for a, _ in true[3:]])
    ends = starts + np.asarray([15.0, 15.0, 15.0, 4.0, 15.0, 15.0, 15.0])
    texts = ["crack eggs", "whisk", "chop", "like and subscribe", "fry", "fold", "serve"]
    return sim, A.Captions(texts, starts, ends), dict(zip(rows, true))


def test_realign_moves_captions_to_the_matching_seconds_and_rejects_chatter():
    sim, caps, true = _synthetic()
    out = A.realign(sim, caps, A.AlignConfig())
    assert np.flatnonzero(out["rejected"]).tolist() == [3]
    assert out["alignability"][3] < 0.5 < min(out["alignability"][list(true)])
    for row, (a, b) in true.items():
        assert a <= out["peak"][row] < b and a <= out["centre"][row] <= b
        # duration kept, re-centred on the peak
        assert out["aligned_ends"][row] - out["aligned_starts"][row] == pytest.approx(caps.ends[row] - caps.starts[row])
    # the plan is Norton's: rows sum to the aligned share (<= 1), nothing negative
    assert np.all(out["plan"] >= 0) and np.all(out["plan"].sum(1) <= 1 + 1e-4)
    # bucket value = int(0.3 * 7) = 2nd smallest paired similarity
    paired = A.paired_similarity(out["normalized"] + 0.1 * out["log_prior"], 0.1)
    assert out["bucket_value"] == pytest.approx(np.sort(paired)[1], abs=1e-6)


def test_temporal_prior_keeps_an_ambiguous_caption_near_its_time():
    t = 200
    sim = np.full((2, t), 0.1)
    sim[0, 20:30] = 0.9
    sim[0, 150:160] = 0.92  # a slightly better match far away
    sim[1, 100:110] = 0.9
    caps = A.Captions(["a", "b"], [22.0, 100.0], [32.0, 110.0])
    near = A.realign(sim, caps, A.AlignConfig(prior_sigma=10.0))
    far = A.realign(sim, caps, A.AlignConfig(prior_sigma=None))
    assert 20 <= near["peak"][0] < 30 and 150 <= far["peak"][0] < 160


def test_alignment_recall_rule():
    r = A.alignment_recall([np.asarray([4.0, 9.0, 50.0])], [np.asarray([4.2, 5.0, 0.0])],
                           [np.asarray([8.9, 8.0, 1.0])], [np.asarray([1, 1, 0])])
    assert r == {"recall": 0.5, "num_alignable": 2}  # 4 in [4, 9]; 9 not in [5, 8]


def test_read_captions_formats_and_errors(tmp_path):
    (tmp_path / "c.csv").write_text("start,end,text\n1.5,3,hello there\n4,9,\"cut, then stir\"\n")
    caps = A.read_captions(tmp_path / "c.csv")
    assert caps.texts == ["hello there", "cut, then stir"] and caps.starts.tolist() == [1.5, 4.0]
    (tmp_path / "l.json").write_text(json.dumps([{"start": 0, "end": 2, "text": "a"}]))
    (tmp_path / "d.json").write_text(json.dumps({"start": [0, 3], "end": [2, 5], "text": ["a", "b"]}))
    assert A.read_captions(tmp_path / "l.json").texts == ["a"]
    assert A.read_captions(tmp_path / "d.json").ends.tolist() == [2.0, 5.0]
    (tmp_path / "bad.csv").write_text("start,text\n1,a\n")
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) \['end'\]"):
        A.read_captions(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("start,end,text\n1,x,a\n")
    with pytest.raises(ValueError, match="line 2 end: expected a number"):
        A.read_captions(tmp_path / "bad2.csv")
    (tmp_path / "bad3.json").write_text(json.dumps([{"start": 5, "end": 2, "text": "a"}]))
    with pytest.raises(ValueError, match="caption 0: end 2.0 < start 5.0"):
        A.read_captions(tmp_path / "bad3.json")


def test_cli_writes_json_and_png(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "video.npy", rng.normal(size=(75, 512)).astype(np.float32))
    (tmp_path / "caps.csv").write_text("start,end,text\n2,8,crack the eggs\n20,30,whisk them\n"
                                       "33,35,subscribe please\n50,70,pour into the pan\n71,74,done\n")
    out, png = tmp_path / "aligned.json", tmp_path / "aligned.png"
    code = A.main(["--checkpoint", str(checkpoint), "--features", str(tmp_path / "video.npy"),
                   "--captions", str(tmp_path / "caps.csv"), "--out", str(out), "--plot", str(png)])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["video_id"] == "video" and res["num_frames"] == 75 and res["step"] == 3
    assert res["settings"]["epsilon"] == 0.1 and res["settings"]["prompt_ratio"] == 0.3
    assert len(res["captions"]) == 5
    for c in res["captions"]:
        assert set(c) == {"index", "text", "original", "aligned", "shift", "centre", "peak", "alignability",
                          "aligned_mass", "rejected"}
        assert 0 <= c["aligned_mass"] <= c["alignability"] + 1e-6 <= 1 + 1e-6
        assert c["rejected"] == (c["alignability"] < 0.5)
        assert 0 <= c["aligned"][0] <= c["aligned"][1] <= 75
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "wrote" in capsys.readouterr().out
    from norton_jax import cli

    assert cli.run(A.main, ["--checkpoint", str(checkpoint), "--features", str(tmp_path / "video.npy"),
                            "--out", str(out)]) == 2
    assert "error: --features needs --captions" in capsys.readouterr().err


def test_align_store_filters_and_retimes(checkpoint, tmp_path):
    from data_pipeline.feature_store import FeatureStore, FeatureStoreWriter, VideoRecord
    from data_pipeline.tokenization import tokenize_captions
    from norton_jax.evaluate.run import load_model

    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    with FeatureStoreWriter(str(src), "train") as w:
        for v in range(2):
            texts = ["step one", "chatter", "step two", "step three"]
            w.add(VideoRecord(
                video_id=f"v{v}", features=rng.normal(size=(60, 512)).astype(np.float16),
                starts=np.asarray([2, 15, 20, 40], np.float32), ends=np.asarray([12, 17, 35, 55], np.float32),
                tokens=tokenize_captions(texts), texts=texts,
                gt_start=np.asarray([0, -1, 18, 38], np.float32), gt_end=np.asarray([10, -1, 33, 53], np.float32),
                gt_alignable=np.asarray([1, 0, 1, 1]), gt_text=["step one", "", "step two", "step three"],
            ))
    model, _ = load_model(checkpoint)
    jsonl = tmp_path / "al.jsonl"
    summary = A.align_store(model, src, "train", out_jsonl=jsonl, filtered_store=tmp_path / "filt")
    assert summary.videos == 2 and summary.captions == 8 and summary.num_alignable == 6
    assert summary.recall_timestamps == 1.0 and 0 <= summary.recall_plan <= 1
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert [x["video_id"] for x in lines] == ["v0", "v1"]
    kept = FeatureStore(str(tmp_path / "filt"), "train")
    assert len(kept) == summary.kept_videos
    total_kept = 0
    for rec, line in zip(kept, [x for x in lines if x["num_rejected"] < x["num_captions"]]):
        keep = [c for c in line["captions"] if not c["rejected"]]
        total_kept += len(keep)
        assert rec.num_captions == len(keep)
        assert sorted(rec.starts.tolist()) == pytest.approx(sorted(c["aligned"][0] for c in keep), abs=1e-3)
        assert rec.gt_alignable is not None and len(rec.gt_alignable) == len(keep)
    assert total_kept == summary.captions - summary.rejected


@pytest.mark.slow
def test_trained_checkpoint_beats_the_noisy_timestamps_on_youcook2_mnc():
    """Needs a checkpoint trained on youcook2-mnc (``python -m norton_jax.train --config
    configs/tiny.py --workdir W``, about 3 minutes of 2 CPU cores, too slow for the test
    budget): point ``NORTON_ALIGN_CHECKPOINT`` at ``W``.  The store is
    ``NORTON_MNC_STORE`` or ``data/build/youcook2-mnc``."""
    ckpt = os.environ.get("NORTON_ALIGN_CHECKPOINT")
    store = Path(os.environ.get("NORTON_MNC_STORE", ROOT / "data" / "build" / "youcook2-mnc"))
    if not ckpt:
        pytest.skip("set NORTON_ALIGN_CHECKPOINT to a workdir trained with configs/tiny.py "
                    "(training inside the test is too slow for the CI budget)")
    if not (store / "val.index.json").exists():
        pytest.skip(f"no youcook2-mnc build at {store} (python -m data_pipeline.build youcook2-mnc --out {store})")
    from norton_jax.evaluate.run import load_model

    model, _ = load_model(ckpt)
    summary = A.align_store(model, store, "val", max_videos=int(os.environ.get("NORTON_ALIGN_VIDEOS", "60")))
    assert summary.recall_plan > summary.recall_timestamps, summary


# ---------------------------------------------------------------------------------------
# One caption-by-second similarity (shared with the HTM-Align evaluation), one window rule
# ---------------------------------------------------------------------------------------


class _SlotEncoder:
    """A stand-in encoder whose frame output depends on the slot inside its window
    (``feature + slot * e_0``), so the averaged similarity shows which windows cover a second."""

    def __init__(self, text_vectors):
        self.text_vectors = np.asarray(text_vectors, np.float32)

    def texts(self, texts):
        return self.text_vectors[: len(texts)]

    def segments(self, segments, max_video_len=32, *, frames=False):
        out = np.zeros((len(segments), max_video_len, self.text_vectors.shape[1]), np.float32)
        for i, seg in enumerate(segments):
            out[i, : len(seg)] = seg[:max_video_len]
            out[i, :, 0] += np.arange(max_video_len)
        return None, out


def _expected_dense(features, text, window=32, stride=8):
    """Written from the rule: starts 0, stride, ... below T - window // 2 (at least [0, T))."""
    t = len(features)
    starts = list(range(0, t - window // 2, stride)) or [0]
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    total, count = np.zeros((len(text), t)), np.zeros(t)
    for s in starts:
        for k in range(s, min(t, s + window)):
            frame = features[k].astype(np.float64).copy()
            frame[0] += k - s
            total[:, k] += unit(text) @ unit(frame)
            count[k] += 1
    return total / count


@pytest.mark.parametrize("t", [75, 10, 40])
def test_frame_similarity_is_the_evaluations_dense_similarity(t):
    from norton_jax.evaluate.caption_similarity import htm_align_similarity

    rng = np.random.default_rng(t)
    features = rng.normal(size=(t, 6)).astype(np.float32)
    text = rng.normal(size=(3, 6)).astype(np.float32)
    enc = _SlotEncoder(text)
    got = A.frame_similarity(enc, features, ["a", "b", "c"])
    np.testing.assert_allclose(got, _expected_dense(features, text), rtol=1e-5, atol=1e-6)
    dense = htm_align_similarity(enc, features, ["a", "b", "c"], np.zeros(3), np.ones(3), np.ones(3, bool),
                                 active="dense")
    np.testing.assert_array_equal(got, dense)


def test_align_config_refuses_a_stride_that_leaves_seconds_uncovered():
    with pytest.raises(ValueError, match="stride in \\[1, window // 2\\].*window 32, stride 17"):
        A.AlignConfig(stride=17)
    assert A.AlignConfig(window=32, stride=16).stride == 16


# ---------------------------------------------------------------------------------------
# Subtitle files in, re-timed transcripts out
# ---------------------------------------------------------------------------------------


def test_read_captions_takes_subtitle_files(tmp_path):
    (tmp_path / "t.vtt").write_text("WEBVTT\n\n00:00:01.000 --> 00:00:03.500\ncrack the <i>eggs</i>\n\n"
                                    "00:00:04.000 --> 00:00:06.000\nwhisk &amp; fold\n")
    caps = A.read_captions(tmp_path / "t.vtt")
    assert caps.texts == ["crack the eggs", "whisk & fold"] and caps.starts.tolist() == [1.0, 4.0]
    assert caps.ends.tolist() == [3.5, 6.0] and caps.where == ["line 3", "line 6"]
    (tmp_path / "t.srt").write_text("1\n00:00:02,000 --> 00:00:05,000\nchop\n\n2\n00:00:07,250 --> 00:00:09,000\nfry\n")
    assert A.read_captions(tmp_path / "t.srt").starts.tolist() == [2.0, 7.25]
    (tmp_path / "w.json").write_text(json.dumps({"text": "a b", "segments": [
        {"id": 0, "start": 0.5, "end": 2.0, "text": " serve"}, {"id": 1, "start": 3.0, "end": 4.0, "text": "eat"}]}))
    caps = A.read_captions(tmp_path / "w.json")
    assert caps.texts == ["serve", "eat"] and caps.where == ["segment 0", "segment 1"]
    (tmp_path / "bad.srt").write_text("1\n00:00:05,000 --> 00:00:02,000\nbackwards\n")
    with pytest.raises(Exception, match="bad.srt"):
        A.read_captions(tmp_path / "bad.srt")
    # a caption past the features names the subtitle line
    caps = A.read_captions(tmp_path / "t.vtt")
    with pytest.raises(ValueError, match=r"t\.vtt: line 6: caption \[4, 6\] s runs past the video's 3 s"):
        A.fit_captions_to_video(caps, 3, source=tmp_path / "t.vtt")


def _result_with_a_rejection():
    sim, caps, _ = _synthetic()
    out = A.realign(sim, caps, A.AlignConfig())
    return A.VideoAlignment(
        video_id="v", num_frames=sim.shape[1], captions=caps, similarity=sim, plan=out["plan"],
        aligned_mass=out["aligned_mass"], alignability=out["alignability"], rejected=out["rejected"],
        peak=out["peak"], centre=out["centre"], aligned_starts=out["aligned_starts"],
        aligned_ends=out["aligned_ends"], bucket_value=out["bucket_value"])


def test_write_alignment_formats_and_keep_rejected(tmp_path):
    from norton_jax.subtitles import read_subtitles

    res = _result_with_a_rejection()
    assert res.rejected.tolist() == [False, False, False, True, False, False, False]
    kept = [i for i in range(7) if i != 3]
    for suffix in (".vtt", ".srt"):
        path = tmp_path / f"out{suffix}"
        assert A.write_alignment(path, res) == 6
        cues = read_subtitles(path)
        assert [c.text for c in cues] == [res.captions.texts[i] for i in kept]  # order kept: spans are ordered
        for c, i in zip(cues, kept):
            assert c.start == pytest.approx(res.aligned_starts[i], abs=1e-3)
            assert c.end == pytest.approx(res.aligned_ends[i], abs=1e-3)
        path = tmp_path / f"all{suffix}"
        assert A.write_alignment(path, res, keep_rejected=True) == 7
        cues = read_subtitles(path)
        marked = [c for c in cues if c.text.startswith(A.REJECTED_MARK)]
        assert [c.text for c in marked] == ["[rejected] like and subscribe"]
        assert (marked[0].start, marked[0].end) == (85.0, 89.0)  # its original time
        assert [c.start for c in cues] == sorted(c.start for c in cues)
    report = tmp_path / "report.json"
    assert A.write_alignment(report, res, extra={"step": 3}) == 6
    data = json.loads(report.read_text())
    assert data["step"] == 3 and data["num_rejected"] == 1 and len(data["captions"]) == 7
    assert [s["caption"] for s in data["segments"]] == kept and not any(s["rejected"] for s in data["segments"])
    assert [c.text for c in read_subtitles(report)] == [res.captions.texts[i] for i in kept]
    with pytest.raises(ValueError, match=r"out\.txt: unknown output format '\.txt'"):
        A.write_alignment(tmp_path / "out.txt", res)
    everything = A.VideoAlignment(**{**res.__dict__, "rejected": np.ones(7, bool)})
    with pytest.raises(ValueError, match="every caption was rejected.*--keep-rejected"):
        A.write_alignment(tmp_path / "none.vtt", everything)
