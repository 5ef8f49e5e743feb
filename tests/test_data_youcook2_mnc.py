"""MiniLM encoder and the embedded youcook2-mnc corpus (small subset build)."""
from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest

from data_pipeline import youcook2_mnc as mnc
from data_pipeline.feature_store import FeatureStore

ANN = os.path.join(mnc.default_data_root(), "youcook2", "youcookii_annotations_trainval.json")


@pytest.fixture(scope="module")
def db():
    with open(ANN) as fh:
        return json.load(fh)["database"]


def test_minilm_reference_cosines():
    from data_pipeline import minilm
    e = minilm.encode(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert round(float(sim[0, 1]), 4) == 0.6660
    assert round(float(sim[0, 2]), 4) == 0.1046
    assert round(float(sim[1, 2]), 4) == 0.1411


CFG = mnc.MNCConfig(max_videos=3, irrelevant_fraction=0.4, shift_std=3.0, max_shift=6.0, filler_prob=0.3)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnc")
    meta = mnc.build(str(root / "out"), CFG, cache_dir=str(root / "cache"), progress=False)
    return str(root / "out"), meta


def _strip_fillers(text):
    for f in sorted(mnc.FILLERS, key=len, reverse=True):
        text = re.sub(rf"(^| ){re.escape(f)}(?= )", " ", " " + text + " ")
    return " ".join(text.split())


def test_build_ground_truth_consistent(built, db):
    out, meta = built
    assert meta["settings"]["irrelevant_fraction"] == 0.4
    chatter = {t for t, _ in mnc.load_chatter(mnc.default_data_root())}
    for split, subset in mnc.SPLITS.items():
        st = FeatureStore(out, split, verify="full")
        ids = sorted(v for v, e in db.items() if e["subset"] == subset)[:3]
        assert st.video_ids == ids                                   # official split, sorted
        gt_lines = [json.loads(x) for x in open(os.path.join(out, f"{split}.ground_truth.jsonl"))]
        assert len(gt_lines) == meta["splits"][split]["captions"]
        for vid in ids:
            rec, anns = st[vid], db[vid]["annotations"]
            t = math.ceil(db[vid]["duration"])
            assert rec.features.shape == (t, 512) and rec.features.dtype == np.float16
            np.testing.assert_allclose(np.linalg.norm(rec.features.astype(np.float32), axis=1), 1, atol=2e-3)
            assert (np.diff(rec.starts) >= 0).all() and (rec.starts >= 0).all() and (rec.ends <= t).all()
            al = rec.gt_alignable == 1
            assert al.sum() == len(anns)
            assert (~al).sum() == round(len(anns) * 0.4 / 0.6)
            segs = sorted((float(a["segment"][0]), float(a["segment"][1]), a["sentence"]) for a in anns)
            got = sorted(zip(rec.gt_start[al].tolist(), rec.gt_end[al].tolist(),
                             [rec.gt_text[i] for i in np.flatnonzero(al)]))
            assert got == segs
            for i in np.flatnonzero(al):
                assert _strip_fillers(rec.texts[i]) == " ".join(rec.gt_text[i].split())
                shift = rec.starts[i] - rec.gt_start[i]
                assert abs(shift) <= CFG.max_shift + 1e-4 or rec.starts[i] in (0.0, t - 1.0)
            for i in np.flatnonzero(~al):
                assert rec.texts[i] in chatter and rec.gt_start[i] == -1 and rec.gt_text[i] == ""
            # visual side: seconds inside a step are closer to each other than to background seconds
            f = rec.features.astype(np.float32)
            inside = np.zeros(t, bool)
            for a in anns:
                inside[a["segment"][0]:a["segment"][1]] = True
            a0 = anns[0]["segment"]
            seg = f[a0[0] + 2:a0[1] - 2] if a0[1] - a0[0] > 6 else f[a0[0]:a0[1]]
            if (~inside).sum() > 4 and len(seg) > 1:
                within = (seg @ seg.T)[np.triu_indices(len(seg), 1)].mean()
                to_bg = (seg @ f[~inside].T).mean()
                assert within > to_bg + 0.1


def test_build_is_cached_and_reproducible(built, tmp_path):
    out, meta = built
    again = mnc.build(out, CFG, cache_dir=None, progress=False)    # same settings -> kept
    assert again == meta
    rec = FeatureStore(out, "train")[0]
    entry = json.load(open(ANN))["database"][rec.video_id]
    emb = np.random.default_rng(0).standard_normal((len(entry["annotations"]), 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    chatter = mnc.load_chatter(mnc.default_data_root())
    w = np.random.default_rng(1).standard_normal((384, 512)).astype(np.float32) / np.sqrt(512)
    r1, _ = mnc.make_video(rec.video_id, entry, emb, w, np.ones(384), np.zeros(384), chatter, CFG)
    r2, _ = mnc.make_video(rec.video_id, entry, emb, w, np.ones(384), np.zeros(384), chatter, CFG)
    assert r1.texts == r2.texts and np.array_equal(r1.features, r2.features)
    assert r1.texts == rec.texts and np.array_equal(r1.starts, rec.starts)   # narration independent of features


def test_noise_free_settings_give_clean_captions(db):
    vid = sorted(db)[0]
    entry = db[vid]
    clean = mnc.MNCConfig(irrelevant_fraction=0.0, shift_std=0.0, filler_prob=0.0)
    emb = np.eye(len(entry["annotations"]), 384, dtype=np.float32)
    w = np.random.default_rng(1).standard_normal((384, 512)).astype(np.float32) / np.sqrt(512)
    rec, _ = mnc.make_video(vid, entry, emb, w, np.ones(384), np.zeros(384), [("chatter line here", 2.0)], clean)
    anns = sorted(entry["annotations"], key=lambda a: a["segment"])
    assert rec.texts == [a["sentence"] for a in anns]
    np.testing.assert_array_equal(rec.starts, [a["segment"][0] for a in anns])
    np.testing.assert_array_equal(rec.ends, [a["segment"][1] for a in anns])
    assert (rec.gt_alignable == 1).all()
    with pytest.raises(ValueError, match="irrelevant_fraction"):
        mnc.MNCConfig(irrelevant_fraction=1.0)


def test_pipeline_runs_on_corpus(built):
    out, _ = built
    from data_pipeline.input_pipeline import PipelineConfig, TrainIterator
    it = TrainIterator(out, "train", PipelineConfig(videos_per_device=3, num_local_devices=1, process_index=0,
                                                    process_count=1))
    b = next(it)
    assert b["caps"].shape == (1, 48, 32) and np.isfinite(b["vfeats"]).all()


def _build_bytes(out: str) -> dict:
    """Every file of a build, by relative path; youcook2_mnc.json without its timing fields."""
    files = {}
    for dirpath, _, names in os.walk(out):
        for name in names:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, out)
            if rel == "youcook2_mnc.json":
                meta = json.load(open(path))
                for k in ("encode_seconds", "build_seconds"):
                    meta.pop(k)
                files[rel] = json.dumps(meta, sort_keys=True).encode()
            else:
                files[rel] = open(path, "rb").read()
    return files


def test_build_bytes_do_not_depend_on_the_cache_state(tmp_path):
    """Cold MiniLM cache, warm cache and no cache give byte-identical builds (timing aside)."""
    cfg = mnc.MNCConfig(max_videos=2)
    cache = str(tmp_path / "cache")
    mnc.build(str(tmp_path / "cold"), cfg, cache_dir=cache, progress=False)
    assert len(os.listdir(cache)) == 1                     # the cold build filled the cache
    mnc.build(str(tmp_path / "warm"), cfg, cache_dir=cache, progress=False)
    mnc.build(str(tmp_path / "none"), cfg, cache_dir=None, progress=False)
    cold, warm, none = (_build_bytes(str(tmp_path / n)) for n in ("cold", "warm", "none"))
    assert any(k.endswith(".json") and "index" in k for k in cold) and len(cold) >= 5
    assert sorted(cold) == sorted(warm) == sorted(none)
    differing = sorted(k for k in cold if not cold[k] == warm[k] == none[k])
    assert differing == []
