"""Decoding at 30 fps, chunking, feature extraction and the `python -m norton_jax.extract` CLI."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")
av = pytest.importorskip("av")

from s3d_testing import test_frames, write_random_s3d_weights, write_test_video  # noqa: E402

from norton_jax.extract import extract_features, extract_frames_features, load_s3d, main  # noqa: E402
from norton_jax.s3d.video import VideoError, iter_chunks, iter_frames, scaled_size  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_random_s3d_weights(tmp_path_factory.mktemp("w") / "s3d_howto100m.pth", seed=0)


@pytest.fixture(scope="module")
def s3d(weights):
    return load_s3d(weights, batch_size=2)


def _numbered_video(path, count, fps):
    """``count`` frames 48 x 48 at ``fps``; frame i shows i in binary as 6 black/white stripes."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.height, stream.width, stream.pix_fmt = 48, 48, "yuv420p"
        stream.options = {"qscale": "2"}
        for i in range(count):
            bits = (i >> np.arange(6)) & 1
            frame = np.repeat(bits * 255, 8).astype(np.uint8)[:, None, None] * np.ones((1, 48, 3), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _frame_number(frame):
    stripes = frame.reshape(6, 8, 48, 3).mean(axis=(1, 2, 3)) > 128
    return int(np.sum(stripes << np.arange(6)))


@pytest.mark.parametrize("fps", [25, 60, 30])
def test_decoding_resamples_to_30_fps(tmp_path, fps):
    # one second; mp4 keeps exact timestamps (mkv's 1 ms ones move ffmpeg's nearest-frame choice)
    _numbered_video(tmp_path / "n.mp4", fps, fps)
    frames = list(iter_frames(tmp_path / "n.mp4", size=48))  # 48 x 48: no resize, no crop
    assert len(frames) == 30 and frames[0].shape == (48, 48, 3) and frames[0].dtype == np.uint8
    shown = [_frame_number(f) for f in frames]
    if fps == 25:  # upsampling repeats 5 frames, drops none
        assert sorted(set(shown)) == list(range(25)) and shown == sorted(shown)
    elif fps == 60:  # downsampling keeps every other frame
        assert shown == list(range(0, 60, 2))
    else:
        assert shown == list(range(30))


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".mkv"])
def test_containers_decode_with_the_authors_resize_and_crop(tmp_path, suffix):
    path = write_test_video(tmp_path / f"v{suffix}", seconds=1.0, fps=25, size=(48, 80))
    frames = np.stack(list(iter_frames(path, size=32)))
    assert frames.shape == (30, 32, 32, 3)
    # shorter side 48 -> 32, longer side 80 -> int(80 * 32 / 48) = 53, centre crop at x = int(21 / 2) = 10
    assert scaled_size(48, 80, 32) == (32, 53) and scaled_size(80, 48, 32) == (53, 32)
    source = test_frames(25, 48, 80)[0].astype(np.float32)
    resized = torch.nn.functional.interpolate(torch.from_numpy(source).permute(2, 0, 1)[None], size=(32, 53),
                                              mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    crop = resized[:, 10:42]
    assert np.abs(frames[0].astype(np.float32) - crop).mean() < 12  # same picture (codec and scaler differ)
    assert np.abs(frames[0].astype(np.float32) - resized[:, 0:32]).mean() > np.abs(frames[0] - crop).mean()


def test_chunks_are_zero_padded_to_30_frames():
    frames = test_frames(65, 8, 8)
    chunks = list(iter_chunks(iter(frames), 30))
    assert [c.shape for c in chunks] == [(30, 8, 8, 3)] * 3
    np.testing.assert_array_equal(np.concatenate(chunks)[:65], frames)
    assert not chunks[2][5:].any()
    assert len(list(iter_chunks(iter(frames[:60]), 30))) == 2  # no empty chunk when it divides evenly


def test_extract_features_matches_frames_path_and_the_encoder(tmp_path, s3d):
    path = write_test_video(tmp_path / "talk.mp4", seconds=2.4, fps=25, size=(48, 64))
    feats = extract_features(path, s3d, size=32)
    assert feats.shape == (3, 512) and feats.dtype == np.float16  # 60 frames at 25 fps = 72 at 30: 3 chunks
    np.testing.assert_allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1.0, atol=2e-3)
    frames = np.stack(list(iter_frames(path, size=32)))
    assert frames.shape[0] == 72
    np.testing.assert_array_equal(extract_frames_features(frames, s3d, size=32), feats)
    chunks = np.concatenate([frames, np.zeros((18, 32, 32, 3), np.uint8)]).reshape(3, 30, 32, 32, 3)
    np.testing.assert_array_equal(s3d(chunks).astype(np.float16), feats)
    assert np.abs(feats[0].astype(np.float32) - feats[2]).max() > 0  # the padded last second differs
    with pytest.raises(Exception, match="expected uint8 frames"):
        extract_frames_features(frames.astype(np.float32), s3d, size=32)


def test_bad_videos_name_the_file(tmp_path, s3d):
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(VideoError, match="junk.mp4: cannot open the video"):
        extract_features(tmp_path / "junk.mp4", s3d, size=32)
    good = write_test_video(tmp_path / "cut.mp4", seconds=2.0, fps=25, size=(48, 64))
    data = open(good, "rb").read()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])  # truncated: header (moov) at the end is lost
    with pytest.raises(VideoError, match="cut.mp4"):
        extract_features(tmp_path / "cut.mp4", s3d, size=32)


def test_cli_folder_is_resumable_and_frames_mode(tmp_path, weights, capsys):
    videos, out = tmp_path / "videos", tmp_path / "features"
    videos.mkdir()
    out.mkdir()
    write_test_video(videos / "a.mp4", seconds=1.0, fps=30, size=(48, 64))
    write_test_video(videos / "b.webm", seconds=1.0, fps=30, size=(48, 64))
    (videos / "notes.txt").write_text("not a video")
    np.save(out / "a.npy", np.full((1, 512), 7, np.float16))  # "done" by an earlier run: kept as is
    (out / "b.npy.tmp-123-deadbeef").write_bytes(b"half written")  # an interrupted write: not done
    argv = ["--weights", weights, "--video", str(videos), "--out", str(out), "--batch-size", "1", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "extracted 1 video(s), 1 s of features; skipped 1 already done; 0 failed" in printed
    b = np.load(out / "b.npy")
    assert b.shape == (1, 512) and b.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(b.astype(np.float32)), 1.0, atol=2e-3)
    assert (np.load(out / "a.npy") == 7).all()
    assert main(argv) == 0
    assert "nothing to do: all 2 video(s) already have features" in capsys.readouterr().out

    frames = np.stack(list(iter_frames(videos / "b.webm")))  # the same frames, decoded here
    np.save(tmp_path / "clip.npy", frames)
    assert main(["--weights", weights, "--frames", str(tmp_path / "clip.npy"), "--out", str(out),
                 "--batch-size", "1"]) == 0
    assert f"clip.npy: 30 frames -> {out}/clip.npy [1, 512] float16" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out / "clip.npy"), b)
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name and "deadbeef" not in p.name]


def test_cli_errors(tmp_path, weights, capsys):
    from norton_jax import cli

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "bad.mkv").write_bytes(b"garbage" * 50)

    def run(*args):
        code = cli.run(main, ["--weights", weights, "--out", str(tmp_path / "o"), "--no-progress", *args], prog="x")
        return code, capsys.readouterr()

    code, printed = run("--video", str(videos))
    assert code == 2 and f"{videos}/bad.mkv: cannot open the video" in printed.err
    code, printed = run("--video", str(videos), "--skip-bad")
    assert code == 0 and "extracted 0 video(s), 0 s of features; skipped 0 already done; 1 failed" in printed.out
    assert "failed: " in printed.out and "bad.mkv" in printed.out
    np.save(tmp_path / "small.npy", np.zeros((30, 112, 112, 3), np.uint8))
    code, printed = run("--frames", str(tmp_path / "small.npy"))
    assert code == 2 and "expected uint8 frames [N, 224, 224, 3]" in printed.err and "small.npy" in printed.err
    code, printed = run("--video", str(tmp_path / "missing.mp4"))
    assert code == 2 and "missing.mp4: no such file or folder" in printed.err
    (videos / "bad.webm").write_bytes(b"x")
    code, printed = run("--video", str(videos))
    assert code == 2 and "two videos would write bad.npy" in printed.err
    code, printed = run("--video", str(videos / "bad.mkv"), "--weights", str(tmp_path / "none.pth"))
    assert code == 2 and "none.pth" in printed.err and "docs/extraction.md" in printed.err
