"""``python -m data_pipeline.check`` on good and deliberately broken stand-in folders."""

import json
import os
import shutil

import numpy as np
import pytest

from data_pipeline import check
from norton_jax.finetune import standins
from reproduce_standins import write_htm_align, write_youcook


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("check_good")
    standins.main(["--task", "all", "--out", str(root)])
    write_youcook(root / "youcook")
    write_htm_align(root / "htm")
    return root


def run(capsys, *argv):
    code = check.main(list(argv))
    return code, capsys.readouterr().out.strip().splitlines()


@pytest.mark.parametrize("task,sub", [("msrvtt", ""), ("msrvtt_qa", ""), ("msrvtt_train", ""), ("coin", ""),
                                      ("youcook2", "youcook"), ("htm_align", "htm")])
def test_good_folders_pass(good, capsys, task, sub):
    code, out = run(capsys, "--task", task, "--data", str(good / sub))
    assert code == 0 and len(out) == 1 and out[0].startswith(f"ok: {task}: "), out


def _copy(good, tmp_path, sub=""):
    dst = tmp_path / "d"
    shutil.copytree(good / sub if sub else good, dst)
    return dst


def test_every_broken_file_is_one_line(good, tmp_path, capsys):
    d = _copy(good, tmp_path)
    feats = d / "coin_feature_fps30_512"
    names = sorted(os.listdir(feats))
    os.remove(feats / names[0])  # missing
    np.save(feats / names[1], np.zeros((30, 512), np.int32))  # dtype
    np.save(feats / names[2], np.zeros((30, 256), np.float32))  # shape
    coin = json.loads((d / "COIN.json").read_text())
    vid = names[3][:-4]
    t = np.load(feats / names[3]).shape[0]
    coin["database"][vid]["annotation"][0]["segment"] = [1.0, t + 5.0]  # caption past the features
    (d / "COIN.json").write_text(json.dumps(coin))
    code, out = run(capsys, "--task", "coin", "--data", str(d))
    assert code == 2
    problems = out[:-1]
    assert len(problems) == 4, out
    assert f"missing feature file of video {names[0][:-4]}" in problems[0]
    assert "dtype int32" in problems[1] and "shape (30, 256)" in problems[2]
    assert f"caption ends at {t + 5:g} s, features of {vid} have {t} s" in problems[3]
    assert out[-1].startswith("4 problem(s); coin: ")


def test_missing_annotation_file_and_column(good, tmp_path, capsys):
    d = _copy(good, tmp_path)
    os.remove(d / "MSRVTT_JSFUSION_test.csv")
    code, out = run(capsys, "--task", "msrvtt", "--data", str(d))
    assert code == 2 and out[0].endswith("MSRVTT_JSFUSION_test.csv: missing file")
    (d / "MSR_MC_test.csv").write_text("vid_key\ta1\nmsr1\tx\n")
    code, out = run(capsys, "--task", "msrvtt_qa", "--data", str(d))
    assert code == 2 and "missing column(s) a2, a3, a4, a5, answer" in out[0]


def test_youcook_and_htm_align_times_and_ids(good, tmp_path, capsys):
    d = _copy(good, tmp_path, "youcook")
    os.remove(d / "youcook_validation_feature_fps30_512" / "v2.npy")
    code, out = run(capsys, "--task", "youcook2", "--data", str(d))
    assert code == 2 and len(out) == 2 and "missing feature file of video v2" in out[0]  # t1 (training) not needed
    h = _copy(good, tmp_path / "h", "htm")
    os.remove(h / "h2.npy")
    (h / "htm_align.json").write_text(json.dumps({"h1": [[1, 35.0, 38.0, "late"]], "h2": [[1, 1, 2, "x"]]}))
    code, out = run(capsys, "--task", "htm_align", "--data", str(h))
    assert code == 2 and len(out) == 3
    assert "caption starts at 35 s, features of h1 have 30 s" in out[0] and "h2.npy: missing feature file" in out[1]


def test_cli_errors_are_one_line(tmp_path):
    assert check.run(check.main, ["--task", "coin", "--data", str(tmp_path / "nope")], prog="check") == 2
