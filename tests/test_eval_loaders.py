"""Loaders for the official evaluation files (spec §5.9): real excerpts, generated files, broken files."""

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from norton_jax.evaluate import loaders as L

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
YC_JSON = FIXTURES / "youcookii_annotations_excerpt.json"
YC_CSV = FIXTURES / "validation_youcook_excerpt.csv"


def write_features(root: Path, ids, frames=40, dim=4):
    root.mkdir(parents=True, exist_ok=True)
    for i, vid in enumerate(ids):
        np.save(root / f"{vid}.npy", np.full((frames, dim), float(i), dtype=np.float32))
    return root


# ---------------------------------------------------------------------------------------
# YouCookII
# ---------------------------------------------------------------------------------------


def test_youcook_real_csv_excerpt_matches_the_annotations():
    data = L.load_youcook(YC_JSON, YC_CSV)
    assert data.source == "csv" and data.video_ids == ["xHr8X2Wpmno", "V53XmPeyjIU"]
    first = data.clips[0]
    assert (first.video_id, first.index, first.start, first.end) == ("xHr8X2Wpmno", 0, 47, 60)
    assert first.text == "pick the ends off the verdalago"
    db = json.loads(YC_JSON.read_text())["database"]
    for clip in data.clips:
        ann = db[clip.video_id]["annotations"][clip.index]
        assert ann["segment"] == [clip.start, clip.end] and ann["sentence"] == clip.text
    assert len(data.clip_video_ids) == 14 and not data.missing


def test_youcook_json_only_takes_the_split_and_csv_alone_numbers_rows():
    from_json = L.load_youcook(YC_JSON)
    assert from_json.source == "json" and set(from_json.video_ids) == {"xHr8X2Wpmno", "V53XmPeyjIU"}
    from_csv = L.load_youcook(clips=YC_CSV)
    assert [(c.video_id, c.index) for c in from_csv.clips] == [(c.video_id, c.index) for c in from_json.clips]
    train = L.load_youcook(YC_JSON, split="training")
    assert train.video_ids == ["GLd3aX16zBg"]


def test_youcook_pkl_and_missing_features_are_reported(tmp_path, caplog):
    recs = [{"id": "V53XmPeyjIU_1", "caption": "pkl caption"}, {"id": "V53XmPeyjIU_0", "caption": "x"},
            {"id": "xHr8X2Wpmno_2", "caption": "y"}]
    pkl = tmp_path / "youcook_val.pkl"
    pkl.write_bytes(pickle.dumps(recs))
    feats = write_features(tmp_path / "feat", ["V53XmPeyjIU"], frames=300)
    with caplog.at_level(logging.WARNING):
        data = L.load_youcook(YC_JSON, pkl, feats)
    assert [c.index for c in data.clips] == [1, 0]  # pkl order kept, xHr8X2Wpmno dropped
    assert data.missing.video_ids == ["xHr8X2Wpmno"] and data.missing.count == 1
    assert data.missing.dropped_items == 1 and data.missing.total_videos == 2
    assert "xHr8X2Wpmno" in caplog.text and "1 of 2 videos" in caplog.text
    db = json.loads(YC_JSON.read_text())["database"]
    assert data.clips[0].text == db["V53XmPeyjIU"]["annotations"][1]["sentence"]
    seg = db["V53XmPeyjIU"]["annotations"][1]["segment"]
    assert data.clip_features(data.clips[0]).shape == (min(32, seg[1] - seg[0]), 4)
    raw = L.load_youcook(YC_JSON, pkl, use_annotation_text=False)
    assert raw.clips[0].text == "pkl caption"
    with pytest.raises(L.EvalDataError, match="xHr8X2Wpmno"):
        L.load_youcook(YC_JSON, pkl, feats, missing="error")


def test_youcook_broken_files_name_file_and_field(tmp_path):
    bad_json = tmp_path / "ann.json"
    bad_json.write_text('{"database": {"v": {"subset": "validation", "annotations": [{"segment": [5], "sentence": "s"}]}}}')
    with pytest.raises(L.EvalDataError, match=r"ann.json.*annotations\[0\].segment"):
        L.load_youcook(bad_json)
    (tmp_path / "trunc.json").write_text('{"database": {')
    with pytest.raises(L.EvalDataError, match="trunc.json: not valid JSON"):
        L.load_youcook(tmp_path / "trunc.json")
    bad_csv = tmp_path / "val.csv"
    bad_csv.write_text("end,start,task,text,video_id\n60,abc,1,t,xHr8X2Wpmno\n")
    with pytest.raises(L.EvalDataError, match="val.csv: line 2 field 'start'"):
        L.load_youcook(clips=bad_csv)
    bad_csv.write_text("end,task,text,video_id\n60,1,t,v\n")
    with pytest.raises(L.EvalDataError, match=r"val.csv: missing column\(s\) \['start'\]"):
        L.load_youcook(clips=bad_csv)
    bad_csv.write_text("end,start,task,text,video_id\n61,47,1,t,xHr8X2Wpmno\n")
    with pytest.raises(L.EvalDataError, match="not annotation 0"):
        L.load_youcook(YC_JSON, bad_csv)
    pkl = tmp_path / "bad.pkl"
    pkl.write_bytes(pickle.dumps([{"id": "noindex"}]))
    with pytest.raises(L.EvalDataError, match=r"bad.pkl: record 0.id"):
        L.load_youcook(YC_JSON, pkl)
    pkl.write_bytes(pickle.dumps([{"id": "xHr8X2Wpmno_99"}]))
    with pytest.raises(L.EvalDataError, match="has no entry 99"):
        L.load_youcook(YC_JSON, pkl)
    pkl.write_bytes(pickle.dumps(np.zeros(2)))  # plain data, but not a list of records
    with pytest.raises(L.EvalDataError, match="bad.pkl: expected a list of records"):
        L.load_youcook(YC_JSON, pkl)
    with pytest.raises(ValueError, match="annotations JSON"):
        L.load_youcook(clips=tmp_path / "x.pkl")


def test_background_windows():
    assert L.youcook_background_windows(40) == [(0, 16), (16, 32), (32, 40)]
    assert L.youcook_background_windows(32) == [(0, 16), (16, 32)]
    assert L.youcook_background_windows(5) == [(0, 5)]


# ---------------------------------------------------------------------------------------
# MSR-VTT
# ---------------------------------------------------------------------------------------


def test_msrvtt_retrieval_real_excerpt(tmp_path, caplog):
    data = L.load_msrvtt(FIXTURES / "msrvtt_test_excerpt.csv")
    assert data.video_ids[:2] == ["video9770", "video9771"] and len(data.video_ids) == 5
    assert data.sentences[0] == "a person is connecting something to system" and data.keys[0] == "ret0"
    feats = write_features(tmp_path / "f", data.video_ids[1:])
    with caplog.at_level(logging.WARNING):
        kept = L.load_msrvtt(FIXTURES / "msrvtt_test_excerpt.csv", feats)
    assert kept.video_ids == data.video_ids[1:] and kept.missing.video_ids == ["video9770"]
    assert "video9770" in caplog.text
    assert kept.features.load("video9771").shape == (40, 4)


def test_msrvtt_mc_jsonl_and_tab_csv_agree(tmp_path):
    from_jsonl = L.load_msrvtt_mc(FIXTURES / "msrvtt_mc_test_excerpt.jsonl")
    assert from_jsonl.video_ids == ["video9770", "video9771", "video7020"]
    assert list(from_jsonl.answers[:2]) == [0, 2] and len(from_jsonl.options[0]) == 5
    lines = ["key\tvid_key\tvideo_name\ta1\ta2\ta3\ta4\ta5\tanswer"]
    for q, (vid, opts, ans) in enumerate(zip(from_jsonl.video_ids, from_jsonl.options, from_jsonl.answers)):
        lines.append("\t".join([f"mc{q}", vid.replace("video", "msr"), vid, *opts, str(ans)]))
    tsv = tmp_path / "MSR_MC_test.csv"
    tsv.write_text("\n".join(lines) + "\n")
    from_tsv = L.load_msrvtt_mc(tsv)
    assert from_tsv.video_ids == from_jsonl.video_ids and from_tsv.options == from_jsonl.options
    np.testing.assert_array_equal(from_tsv.answers, from_jsonl.answers)


def test_msrvtt_broken_files(tmp_path):
    p = tmp_path / "mc.jsonl"
    p.write_text('{"clip_name": "video1", "answer": "0", "options": ["a", "b"]}\n')
    with pytest.raises(L.EvalDataError, match="mc.jsonl: line 1 field 'options'"):
        L.load_msrvtt_mc(p)
    p.write_text('{"clip_name": "video1", "answer": "7", "options": ["a", "b", "c", "d", "e"]}\n')
    with pytest.raises(L.EvalDataError, match="field 'answer' out of range"):
        L.load_msrvtt_mc(p)
    p.write_text('{"clip_name": "video1", "options": ["a", "b", "c", "d", "e"]}\n')
    with pytest.raises(L.EvalDataError, match="line 1: missing field 'answer'"):
        L.load_msrvtt_mc(p)
    t = tmp_path / "mc.csv"
    t.write_text("vid_key,a1,a2,a3,a4,a5,answer\nmsr1,a,b,c,d,e,0\n")  # commas, not tabs
    with pytest.raises(L.EvalDataError, match="mc.csv: missing column"):
        L.load_msrvtt_mc(t)
    r = tmp_path / "ret.csv"
    r.write_text("key,vid_key,video_id\nret0,msr1,video1\n")
    with pytest.raises(L.EvalDataError, match=r"ret.csv: missing column\(s\) \['sentence'\]"):
        L.load_msrvtt(r)
    with pytest.raises(L.EvalDataError, match="file not found"):
        L.load_msrvtt(tmp_path / "absent.csv")


# ---------------------------------------------------------------------------------------
# COIN and HTM-Align
# ---------------------------------------------------------------------------------------


def coin_json(tmp_path, database):
    p = tmp_path / "COIN.json"
    p.write_text(json.dumps({"database": database}))
    return p


def test_coin_labels_from_testing_subset_and_missing_features(tmp_path):
    seg = lambda s, e, i, lab: {"segment": [s, e], "id": str(i), "label": lab}  # noqa: E731
    path = coin_json(tmp_path, {
        "t1": {"subset": "testing", "annotation": [seg(1.5, 4.2, 2, "pour"), seg(5, 9, 1, "cut")]},
        "t2": {"subset": "testing", "annotation": [seg(0, 3, 3, "stir")]},
        "tr": {"subset": "training", "annotation": [seg(0, 2, 9, "train-only")]},
    })
    feats = write_features(tmp_path / "f", ["t1", "tr"])
    data = L.load_coin(path, feats)
    assert data.label_names == ["cut", "pour", "stir"] and data.num_classes == 4
    assert [v.video_id for v in data.videos] == ["t1"] and data.missing.video_ids == ["t2"]
    assert data.videos[0].segments == [(1.5, 4.2, 2), (5.0, 9.0, 1)]
    train = L.load_coin(path, feats, split="train")
    assert [v.video_id for v in train.videos] == ["tr"] and train.label_names == ["cut", "pour", "stir"]


def test_coin_broken(tmp_path):
    path = coin_json(tmp_path, {"v": {"subset": "testing", "annotation": [{"segment": [0, 1], "label": "x"}]}})
    with pytest.raises(L.EvalDataError, match=r"COIN.json: database\['v'\].annotation\[0\]: missing field 'id'"):
        L.load_coin(path)
    path = coin_json(tmp_path, {"v": {"subset": "testing", "annotation": [{"segment": [3, 1], "id": "1", "label": "x"}]}})
    with pytest.raises(L.EvalDataError, match="end 1.0 < start 3.0"):
        L.load_coin(path)
    path = coin_json(tmp_path, {"v": {"annotation": []}})
    with pytest.raises(L.EvalDataError, match="needs 'subset'"):
        L.load_coin(path)


def test_htm_align_sorted_and_broken(tmp_path):
    p = tmp_path / "htm_align.json"
    p.write_text(json.dumps({"zz": [[1, 0.5, 3.0, "b"]], "aa": [[0, 1, 2, "x"], [1, 4.5, 8.25, "y"]]}))
    feats = write_features(tmp_path / "f", ["aa"])
    data = L.load_htm_align(p, feats)
    assert [v.video_id for v in data.videos] == ["aa"] and data.missing.video_ids == ["zz"]
    v = data.videos[0]
    assert list(v.aligned) == [False, True] and list(v.starts) == [1.0, 4.5] and list(v.ends) == [2.0, 8.25]
    assert v.texts == ["x", "y"]
    assert [x.video_id for x in L.load_htm_align(p).videos] == ["aa", "zz"]
    p.write_text(json.dumps({"aa": [[2, 1, 2, "x"]]}))
    with pytest.raises(L.EvalDataError, match=r"htm_align.json: \['aa'\]\[0\]\[0\] \(aligned\)"):
        L.load_htm_align(p)
    p.write_text(json.dumps({"aa": [[1, 1, 2]]}))
    with pytest.raises(L.EvalDataError, match=r"\['aa'\]\[0\]: expected \[aligned, start, end, text\]"):
        L.load_htm_align(p)


def test_feature_dir_errors(tmp_path):
    with pytest.raises(L.EvalDataError, match="feature directory does not exist"):
        L.FeatureDir(tmp_path / "nope")
    root = tmp_path / "f"
    root.mkdir()
    np.save(root / "flat.npy", np.zeros(5, np.float32))
    (root / "junk.npy").write_bytes(b"not numpy")
    fd = L.FeatureDir(root)
    with pytest.raises(L.EvalDataError, match=r"flat.npy: features must be"):
        fd.load("flat")
    with pytest.raises(L.EvalDataError, match=r"junk.npy: not a readable"):
        fd.load("junk")
    with pytest.raises(L.EvalDataError, match="feature file not found"):
        fd.load("absent")


class _RunsCode:
    """Unpickling this would call ``os.makedirs``: the loader must refuse it."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return os.makedirs, (self.target,)


def test_youcook_pkl_with_code_is_refused_without_running_it(tmp_path):
    target = tmp_path / "created_by_pickle"
    pkl = tmp_path / "youcook_val.pkl"
    pkl.write_bytes(pickle.dumps([{"id": "xHr8X2Wpmno_0", "caption": _RunsCode(str(target))}]))
    with pytest.raises(L.EvalDataError, match=r"youcook_val.pkl: not a readable pickle .*refusing to load the global"):
        L.load_youcook(YC_JSON, pkl)
    assert not target.exists()


def test_feature_dir_refuses_non_finite_features(tmp_path):
    root = tmp_path / "f"
    root.mkdir()
    good = np.ones((6, 4), np.float32)
    np.save(root / "ok.npy", good)
    bad = good.copy()
    bad[3, 1] = np.nan
    bad[5, 0] = np.inf
    np.save(root / "nan.npy", bad)
    fd = L.FeatureDir(root)
    assert fd.load("ok").shape == (6, 4)
    with pytest.raises(L.EvalDataError,
                       match=r"nan.npy: video 'nan': features contain 2 non-finite values .*first at frame 3 \(dim 1"):
        fd.load("nan")
    assert fd.num_frames("nan") == 6  # the shape alone is still readable (header only)
    # every loader pairs items with this FeatureDir, so the tasks all refuse the video
    (tmp_path / "ha.json").write_text(json.dumps({"nan": [[1, 0.0, 2.0, "x"]]}))
    data = L.load_htm_align(tmp_path / "ha.json", root)
    with pytest.raises(L.EvalDataError, match="nan.npy"):
        data.features.load(data.videos[0].video_id)
