"""`python -m norton_jax.align --video ... --subtitles ...` end to end: a video encoded here, random
S3D weights in the public key layout, a tiny checkpoint; features extracted once and cached."""
from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx

pytest.importorskip("torch")
pytest.importorskip("av")

from s3d_testing import write_random_s3d_weights, write_test_video  # noqa: E402

from norton_jax import align as A  # noqa: E402
from norton_jax import cli  # noqa: E402
from norton_jax.checkpoint import Checkpointer  # noqa: E402
from norton_jax.models import ModelConfig, init_model, tiny_model_config  # noqa: E402
from norton_jax.subtitles import read_subtitles  # noqa: E402

CFG = ModelConfig.from_any(tiny_model_config()).replace(num_hidden_text_layers=1, num_hidden_video_layers=1)
SECONDS = 8
VTT = """WEBVTT

00:00:00.200 --> 00:00:01.500
first we crack the eggs

00:00:01.000 --> 00:00:02.800
<00:00:01.000><c>give them a whisk</c>

00:00:03.000 --> 00:00:04.000
don't forget to subscribe

00:00:04.100 --> 00:00:05.600
pour into the pan

00:00:05.500 --> 00:00:06.400
fold it over

00:00:06.500 --> 00:00:07.900
and serve
"""
TEXTS = ["first we crack the eggs", "give them a whisk", "don't forget to subscribe", "pour into the pan",
         "fold it over", "and serve"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("align_video")
    with Checkpointer(root / "ckpt" / "checkpoints", model_config=CFG, enable_async=False) as ckpt:
        ckpt.save(1, params=nnx.state(init_model(CFG, seed=0), nnx.Param), force=True)
    weights = write_random_s3d_weights(root / "s3d_howto100m.pth", seed=0)
    video = write_test_video(root / "talk.mp4", seconds=SECONDS, fps=25, size=(96, 128))
    (root / "talk.vtt").write_text(VTT, encoding="utf-8")
    return {"root": root, "ckpt": str(root / "ckpt"), "weights": weights, "video": video,
            "subs": str(root / "talk.vtt")}


def _run(capsys, *args) -> tuple[int, str, str]:
    code = cli.run(A.main, [str(a) for a in args], prog="python -m norton_jax.align")
    out, err = capsys.readouterr()
    return code, out, err


def _check_transcript(cues, num_frames):
    assert all(0 <= c.start <= c.end <= num_frames for c in cues)
    assert [c.start for c in cues] == sorted(c.start for c in cues)


def test_align_from_a_video_file_writes_the_retimed_transcript(inputs, tmp_path, capsys):
    base = ["--checkpoint", inputs["ckpt"], "--video", inputs["video"], "--subtitles", inputs["subs"],
            "--reject-threshold", "0.2"]
    out = tmp_path / "aligned.vtt"
    code, stdout, err = _run(capsys, *base, "--s3d-weights", inputs["weights"], "--out", out,
                             "--plot", tmp_path / "aligned.png")
    assert code == 0, err
    cache = tmp_path / "talk.npy"  # next to --out, the file `python -m norton_jax.extract` writes
    feats = np.load(cache)
    assert feats.shape == (SECONDS, 512) and feats.dtype == np.float16
    assert f"extracted features {cache} [{SECONDS}, 512]" in stdout
    assert (tmp_path / "aligned.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the JSON report of the same run (cached features reused: no S3D weights needed)
    report = tmp_path / "aligned.json"
    code, stdout, err = _run(capsys, *base, "--out", report)
    assert code == 0, err
    assert f"reusing cached features {cache}" in stdout
    res = json.loads(report.read_text())
    assert res["num_frames"] == SECONDS and res["step"] == 1 and res["num_captions"] == len(TEXTS)
    assert [c["text"] for c in res["captions"]] == TEXTS  # rolling tags removed by the subtitle reader
    rejected = [c["index"] for c in res["captions"] if c["rejected"]]
    assert 1 <= len(rejected) < len(TEXTS), res["captions"]

    cues = read_subtitles(out)
    _check_transcript(cues, SECONDS)
    kept = [c for c in res["captions"] if not c["rejected"]]
    assert len(cues) == len(TEXTS) - len(rejected) == len(res["segments"])
    assert sorted(c.text for c in cues) == sorted(c["text"] for c in kept)
    by_text = {c["text"]: c for c in kept}
    for cue in cues:  # each kept caption at its re-aligned span
        assert [cue.start, cue.end] == pytest.approx(by_text[cue.text]["aligned"], abs=1e-3)

    # --keep-rejected: every caption, the rejected ones marked at their original time; SRT this time
    srt = tmp_path / "all.srt"
    code, stdout, err = _run(capsys, *base, "--out", srt, "--keep-rejected")
    assert code == 0, err
    cues = read_subtitles(srt)
    _check_transcript(cues, SECONDS)
    assert len(cues) == len(TEXTS)
    marked = [c for c in cues if c.text.startswith(A.REJECTED_MARK)]
    assert sorted(c.text[len(A.REJECTED_MARK):] for c in marked) == sorted(TEXTS[i] for i in rejected)
    for c in marked:
        i = TEXTS.index(c.text[len(A.REJECTED_MARK):])
        assert [c.start, c.end] == pytest.approx(res["captions"][i]["original"], abs=1e-3)


def test_align_video_mistakes_are_one_line_before_any_work(inputs, tmp_path, capsys):
    base = ["--checkpoint", inputs["ckpt"], "--video", inputs["video"], "--subtitles", inputs["subs"]]
    code, _, err = _run(capsys, *base, "--out", tmp_path / "a.vtt")  # no weights, nothing cached
    assert code == 2 and "no cached features at" in err and "--s3d-weights" in err
    code, _, err = _run(capsys, *base, "--out", tmp_path / "a.txt")
    assert code == 2 and "--out" in err and "'.txt'" in err
    stale = tmp_path / "cache"
    stale.mkdir()
    np.save(stale / "talk.npy", np.zeros((30, 512), np.float16))  # another video's features
    code, _, err = _run(capsys, *base, "--features-cache", stale, "--out", tmp_path / "a.vtt")
    assert code == 2 and "hold 30 s but" in err and "talk.npy" in err
    code, _, err = _run(capsys, "--checkpoint", inputs["ckpt"], "--video", inputs["video"], "--out",
                        tmp_path / "a.vtt")
    assert code == 2 and "--video needs --captions (or --subtitles)" in err
