"""The converters and ``python -m data_pipeline.build`` fail safely (issue 18).

No code runs from a meta pickle, a user's mistake is one ``error:`` line with exit status 2,
nothing is dropped silently (empty inputs, empty captions, duplicates, skipped videos are
named), a folder holding another build is never replaced or mixed, and the captions CSV
reader names the line of every error.
"""
from __future__ import annotations

import builtins
import csv
import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import build as build_cli
from data_pipeline import convert, synthetic
from data_pipeline import youcook2_mnc as mnc
from data_pipeline.feature_store import DataError, FeatureStore
from norton_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ref_feat(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    videos = synthetic.write_reference_layout(str(root / "feat"), 6, videos_per_shard=3, seed=5)
    return str(root / "feat"), videos


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _run(argv, capsys):
    """``cli.run(build.main, argv)``: (exit status, stdout, stderr)."""
    code = cli.run(build_cli.main, argv, prog=build_cli.PROG)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err):
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{build_cli.PROG}: error: "), err
    return lines[0]


# ------------------------------------------------------------------ 1. no code execution

class _Evil:
    def __init__(self, how, marker):
        self.how, self.marker = how, marker

    def __reduce__(self):
        if self.how == "system":
            return os.system, (f"touch {self.marker}",)
        return builtins.open, (self.marker, "w")


@pytest.mark.parametrize("how", ["system", "open"])
def test_meta_pickle_cannot_run_code(tmp_path, ref_feat, how):
    feat = _copy(ref_feat[0], str(tmp_path / "feat"))
    marker = tmp_path / "pwned"
    with open(os.path.join(feat, "train_meta.pkl"), "wb") as fh:
        pickle.dump({0: _Evil(how, str(marker))}, fh)
    with pytest.raises(DataError, match=r"train_meta.pkl.*refus") as ei:
        convert.convert_reference_howto100m(feat, str(tmp_path / "s"))
    assert ei.value.reason == "unsafe_pickle"
    assert not marker.exists()
    # through the command line too: one error line, status 2, still no marker
    with open(os.path.join(feat, "train_meta.pkl"), "wb") as fh:
        pickle.dump(_Evil(how, str(marker)), fh)
    proc = subprocess.run([sys.executable, "-m", "data_pipeline.build", "howto100m", "--vfeat-dir", feat,
                           "--out", str(tmp_path / "s2")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "train_meta.pkl" in _one_line_error(proc.stderr)
    assert not marker.exists()


@pytest.mark.parametrize("form", ["numpy_keys_array_ids", "numpy_str_list", "tuple_ids"])
def test_plain_meta_pickles_still_convert(tmp_path, ref_feat, form):
    feat = _copy(ref_feat[0], str(tmp_path / "feat"))
    path = os.path.join(feat, "train_meta.pkl")
    with open(path, "rb") as fh:
        meta = pickle.load(fh)  # our own synthetic file
    if form == "numpy_keys_array_ids":
        meta = {np.int64(k): np.asarray(v) for k, v in meta.items()}
    elif form == "numpy_str_list":
        meta = {k: [np.str_(x) for x in v] for k, v in meta.items()}
    else:
        meta = {k: tuple(v) for k, v in meta.items()}
    with open(path, "wb") as fh:
        pickle.dump(meta, fh)
    s = convert.convert_reference_howto100m(feat, str(tmp_path / "s"))
    assert s["num_videos"] == 6 and s["skipped"] == {}
    st = FeatureStore(str(tmp_path / "s"), "train")
    assert st.video_ids == [v["video_id"] for v in ref_feat[1]]
    assert all(type(v) is str for v in st.video_ids)


def test_meta_pickle_listing_nothing_is_an_error(tmp_path, ref_feat):
    feat = _copy(ref_feat[0], str(tmp_path / "feat"))
    with open(os.path.join(feat, "train_meta.pkl"), "wb") as fh:
        pickle.dump({}, fh)
    with pytest.raises(DataError, match=r"train_meta.pkl.*no shards") as ei:
        convert.convert_reference_howto100m(feat, str(tmp_path / "s"), on_error="skip")
    assert ei.value.reason == "no_videos"


def test_duplicate_video_in_meta_is_counted_not_dropped(tmp_path, ref_feat):
    feat = _copy(ref_feat[0], str(tmp_path / "feat"))
    path = os.path.join(feat, "train_meta.pkl")
    with open(path, "rb") as fh:
        meta = pickle.load(fh)
    dup = meta[0][1]
    meta[1][2] = dup
    with open(path, "wb") as fh:
        pickle.dump(meta, fh)
    with pytest.raises(DataError, match=rf"video '{dup}'.*listed again in shard 1") as ei:
        convert.convert_reference_howto100m(feat, str(tmp_path / "s"))
    assert ei.value.reason == "duplicate_video"
    s = convert.convert_reference_howto100m(feat, str(tmp_path / "s2"), on_error="skip")
    assert s["num_videos"] == 5 and s["skipped"] == {"duplicate_video": 1}
    assert s["skipped_videos"] == {"duplicate_video": [dup]}
    # the first copy is the one stored
    np.testing.assert_array_equal(FeatureStore(str(tmp_path / "s2"))[dup].features, ref_feat[1][1]["features"])


# ------------------------------------------------------------------ 2. command-line errors

@pytest.mark.parametrize("args,flag", [
    (["--videos-per-shard", "0"], "--videos-per-shard"),
    (["--time-tolerance", "-1"], "--time-tolerance"),
    (["--time-tolerance", "nan"], "--time-tolerance"),
    (["--split", "../x"], "--split"),
])
def test_converter_flags_checked_up_front(tmp_path, capsys, args, flag):
    f = tmp_path / "f"
    synthetic.write_per_video_layout(str(f), str(tmp_path / "c"), 1)
    code, _, err = _run(["per-video", "--features", str(f), "--captions", str(tmp_path / "c"),
                         "--out", str(tmp_path / "s"), *args], capsys)
    assert code == cli.EXIT_USER_ERROR
    assert flag in _one_line_error(err)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args,flag", [
    (["--max-videos", "-1"], "--max-videos"),
    (["--irrelevant-fraction", "1.5"], "--irrelevant-fraction"),
    (["--filler-prob", "-0.1"], "--filler-prob"),
    (["--word-dropout", "2"], "--word-dropout"),
    (["--shift-std", "inf"], "--shift-std"),
    (["--videos-per-shard", "0"], "--videos-per-shard"),
    (["--seed", "-3"], "--seed"),
    (["--full", "--max-videos", "5"], "--full"),
])
def test_youcook2_mnc_flags_checked_up_front(tmp_path, capsys, args, flag):
    code, _, err = _run(["youcook2-mnc", "--out", str(tmp_path / "out"), "--cache-dir", "", *args], capsys)
    assert code == cli.EXIT_USER_ERROR
    assert flag in _one_line_error(err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_max_videos_library_semantics():
    with pytest.raises(ValueError, match="max_videos must be >= 0"):
        mnc.MNCConfig(max_videos=-1)
    assert mnc.MNCConfig(max_videos=0).max_videos is None
    assert mnc.MNCConfig(max_videos=None).max_videos is None
    assert mnc.MNCConfig(max_videos=7).max_videos == 7


def test_missing_folder_and_debug_flag(tmp_path, capsys):
    argv = ["per-video", "--features", str(tmp_path / "nope"), "--captions", str(tmp_path), "--out",
            str(tmp_path / "s")]
    code, _, err = _run(argv, capsys)
    assert code == 2
    line = _one_line_error(err)
    assert "--features" in line and str(tmp_path / "nope") in line
    for pos in (0, len(argv)):  # --debug before the subcommand and at the end
        code, _, err = _run(argv[:pos] + ["--debug"] + argv[pos:], capsys)
        assert code == 2 and "Traceback" in err


def test_data_error_is_one_line_exit_2(tmp_path):
    f, c = tmp_path / "f", tmp_path / "c"
    f.mkdir()
    c.mkdir()
    np.save(f / "v1.npy", np.zeros((10, 256), np.float16))
    (c / "v1.csv").write_text("start,end,text\n0,2,cut the onion\n")
    proc = subprocess.run([sys.executable, "-m", "data_pipeline.build", "per-video", "--features", str(f),
                           "--captions", str(c), "--out", str(tmp_path / "s")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    # stderr also holds the progress bar; the error itself is one line and no traceback
    assert "Traceback" not in proc.stderr
    line = _one_line_error("\n".join(x for x in proc.stderr.splitlines() if ": error: " in x))
    assert "v1.npy" in line and "video 'v1'" in line and "256" in line


# ------------------------------------------------------------------ 3. inputs not taken silently

def test_features_folder_without_npy(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "notes.txt").write_text("x")
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match=r"no <video id>.npy") as ei:
        convert.convert_per_video(str(tmp_path / "f"), str(tmp_path / "c"), str(tmp_path / "s"), on_error="skip")
    assert ei.value.reason == "no_videos"
    assert not (tmp_path / "s").exists()


def test_missing_captions_folder(tmp_path):
    synthetic.write_per_video_layout(str(tmp_path / "f"), str(tmp_path / "c"), 2)
    with pytest.raises(FileNotFoundError, match=r"captions folder \(--captions\)"):
        convert.convert_per_video(str(tmp_path / "f"), str(tmp_path / "nope"), str(tmp_path / "s"),
                                  on_error="skip")
    with pytest.raises(FileNotFoundError, match=r"--vfeat-dir"):
        convert.convert_reference_howto100m(str(tmp_path / "nope"), str(tmp_path / "s"))


def _video(tmp_path, rows, *, raw=None, vid="v1", t=20):
    f, c = tmp_path / "f", tmp_path / "c"
    f.mkdir(exist_ok=True)
    c.mkdir(exist_ok=True)
    np.save(f / f"{vid}.npy", np.random.default_rng(0).standard_normal((t, 512)).astype(np.float16))
    if raw is not None:
        (c / f"{vid}.csv").write_bytes(raw)
    else:
        with open(c / f"{vid}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["start", "end", "text"])
            w.writerows(rows)
    return str(f), str(c)


@pytest.mark.parametrize("text", ["", "   ", None, " " * 100 + "words after the cut"])
def test_empty_caption_is_an_error_or_a_named_skip(tmp_path, text):
    rows = [(0.5, 4.0, "cut the onion"), (4.0, 9.5, text) if text is not None else (4.0, 9.5)]
    f, c = _video(tmp_path, rows)
    with pytest.raises(DataError, match=r"v1.csv.*video 'v1'.*line 3") as ei:
        convert.convert_per_video(f, c, str(tmp_path / "s"))
    assert ei.value.reason == "empty_caption"
    s = convert.convert_per_video(f, c, str(tmp_path / "s2"), on_error="skip")
    assert s["num_videos"] == 0 and s["skipped"] == {"empty_caption": 1}
    assert s["skipped_videos"] == {"empty_caption": ["v1"]}
    assert "line 3" in s["skipped_examples"]["empty_caption"]


def test_skip_bad_names_the_videos(tmp_path, capsys):
    f, c = tmp_path / "f", tmp_path / "c"
    synthetic.write_per_video_layout(str(f), str(c), 2, seed=1)
    bad = [f"bad{i:02d}" for i in range(13)]
    for v in bad[:12]:  # features but no captions
        np.save(f / f"{v}.npy", np.zeros((10, 512), np.float16))
    np.save(f / f"{bad[12]}.npy", np.full((10, 512), np.nan, np.float32))
    (c / f"{bad[12]}.csv").write_text("start,end,text\n0,2,stir\n")
    code, out, err = _run(["per-video", "--features", str(f), "--captions", str(c), "--out", str(tmp_path / "s"),
                           "--skip-bad"], capsys)
    assert code == 0, err
    index = FeatureStore(str(tmp_path / "s")).index
    assert index["num_videos"] == 2
    assert index["skipped"] == {"no_captions": 12, "nonfinite_features": 1}
    assert index["skipped_videos"] == {"no_captions": bad[:12], "nonfinite_features": [bad[12]]}
    printed = json.loads(out[out.index("{"):])
    assert printed["skipped_videos"]["no_captions"] == bad[:10] + ["... and 2 more"]
    assert "no_captions: 12: " + ", ".join(bad[:10]) + ", ... and 2 more" in err
    assert "nonfinite_features: 1: bad12" in err and "train.index.json" in err


# ------------------------------------------------------------------ 3. no silent replacement

def _fake_mnc_build(out, config):
    os.makedirs(out)
    settings = {"name": mnc.NAME, "version": mnc.BUILD_VERSION, **dataclasses.asdict(config)}
    meta = {"name": mnc.NAME, "settings": settings, "splits": {}}
    with open(os.path.join(out, "youcook2_mnc.json"), "w") as fh:
        json.dump(meta, fh)
    return meta


def test_mnc_rebuild_with_other_settings_refused(tmp_path, capsys):
    out = str(tmp_path / "out")
    old = _fake_mnc_build(out, mnc.MNCConfig(max_videos=3, irrelevant_fraction=0.4))
    with pytest.raises(FileExistsError, match=r"irrelevant_fraction: 0\.4 in the existing build, 0\.2 now.*--force"):
        mnc.build(out, mnc.MNCConfig(max_videos=3, irrelevant_fraction=0.2), cache_dir=None, progress=False)
    assert json.load(open(os.path.join(out, "youcook2_mnc.json"))) == old  # untouched
    assert not os.path.exists(out + ".partial")
    # same settings: up to date, and the message names the flag
    assert mnc.build(out, mnc.MNCConfig(max_videos=3, irrelevant_fraction=0.4), cache_dir=None) == old
    assert "--force" in capsys.readouterr().out
    # the command line: one error line, status 2
    code, _, err = _run(["youcook2-mnc", "--out", out, "--max-videos", "3", "--irrelevant-fraction", "0.2",
                         "--cache-dir", ""], capsys)
    assert code == 2 and "--force" in _one_line_error(err) and "irrelevant_fraction" in err


def test_mnc_refuses_foreign_folder_before_building(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a youcook2-mnc build"):
        mnc.build(str(out), mnc.MNCConfig(max_videos=1), cache_dir=None, progress=False)
    assert not (tmp_path / "out.partial").exists()
    assert (out / "mine.txt").read_text() == "keep me"


def test_converter_refuses_other_build_in_same_folder(tmp_path, ref_feat):
    out = str(tmp_path / "s")
    convert.convert_reference_howto100m(ref_feat[0], out, videos_per_shard=2)
    before = json.load(open(os.path.join(out, "train.index.json")))
    synthetic.write_per_video_layout(str(tmp_path / "f"), str(tmp_path / "c"), 2)
    for resume in (False, True):
        with pytest.raises(FileExistsError, match=r"other settings \(source: .*reference HowTo100M.*--out"):
            convert.convert_per_video(str(tmp_path / "f"), str(tmp_path / "c"), out, resume=resume)
    with pytest.raises(FileExistsError, match=r"time_tolerance: 2\.0 in the existing store, 5\.0 now"):
        convert.convert_reference_howto100m(ref_feat[0], out, videos_per_shard=2, time_tolerance=5.0, resume=True)
    with pytest.raises(FileExistsError, match=r"same settings.*--resume"):
        convert.convert_reference_howto100m(ref_feat[0], out, videos_per_shard=2)
    assert json.load(open(os.path.join(out, "train.index.json"))) == before  # nothing replaced
    # same settings with --resume: up to date, every shard kept
    mtimes = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out) if n.endswith(".tfrecord")}
    s = convert.convert_reference_howto100m(ref_feat[0], out, videos_per_shard=2, resume=True)
    assert s["num_videos"] == 6
    assert {n: os.path.getmtime(os.path.join(out, n)) for n in mtimes} == mtimes
    # another split in the same folder is fine
    assert convert.convert_per_video(str(tmp_path / "f"), str(tmp_path / "c"), out, split="val")["num_videos"] == 2


# ------------------------------------------------------------------ 4. captions CSV

def test_csv_with_bom_is_read(tmp_path):
    raw = "\ufeffstart,end,text\n0.5,3,crack the eggs\n4,9,\"whisk, then fry\"\n".encode("utf-8")
    f, c = _video(tmp_path, None, raw=raw)
    s, e, texts = convert.read_captions_csv(os.path.join(c, "v1.csv"))
    assert s.tolist() == [0.5, 4.0] and e.tolist() == [3.0, 9.0] and texts == ["crack the eggs", "whisk, then fry"]
    assert convert.convert_per_video(f, c, str(tmp_path / "s"))["num_videos"] == 1


@pytest.mark.parametrize("body,line,reason,pattern", [
    ("start,text\n1,a\n", 1, "corrupt_file", "header is start,text"),
    ("", 1, "corrupt_file", "empty"),
    ("start,end,text\n0,2,a\n-1,3,b\n", 3, "caption_time", "start < 0"),
    ("start,end,text\n0,2,a\n5,4,b\n", 3, "caption_end_before_start", "end < start"),
    ("start,end,text\n0,2,a\n1,nan,b\n", 3, "caption_time", "non-finite"),
    ("start,end,text\n0,2,a\n1,x,b\n", 3, "caption_time", "bad time"),
    ("start,end,text\n0,2,a\n\n3,4,cut, then stir\n", 4, "corrupt_file", "4 fields"),
])
def test_csv_errors_name_file_and_line(tmp_path, body, line, reason, pattern):
    path = tmp_path / "v1.csv"
    path.write_text(body)
    with pytest.raises(DataError, match=rf"v1.csv.*video 'v1'.*line {line}: .*{pattern}") as ei:
        convert.read_captions_csv(str(path), "v1")
    assert ei.value.reason == reason


def test_csv_time_errors_named_through_converter(tmp_path):
    f, c = _video(tmp_path, [(0.5, 4.0, "cut"), (9.0, 8.0, "add oil")])
    with pytest.raises(DataError, match=r"v1.csv.*video 'v1'.*line 3: caption end < start") as ei:
        convert.convert_per_video(f, c, str(tmp_path / "s"))
    assert ei.value.reason == "caption_end_before_start"


def test_real_caption_files_still_read():
    root = os.path.join(mnc.default_data_root(), "howto100m", "small_train_captions")
    n = 0
    for name in sorted(os.listdir(root)):
        s, e, texts = convert.read_captions_csv(os.path.join(root, name))
        assert len(s) == len(texts) > 0
        n += len(s)
    assert n > 10000


def test_rerun_after_failed_first_video_needs_no_resume(tmp_path):
    f, c = _video(tmp_path, [(0.5, 4.0, "cut"), (9.0, 8.0, "add oil")])
    out = str(tmp_path / "s")
    with pytest.raises(DataError):
        convert.convert_per_video(f, c, out)
    _video(tmp_path, [(0.5, 4.0, "cut"), (8.0, 9.0, "add oil")])  # fixed; nothing was stored before
    assert convert.convert_per_video(f, c, out, time_tolerance=1.0)["num_videos"] == 1
