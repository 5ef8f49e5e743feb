"""The embedding API (norton_jax.inference) and ``python -m norton_jax.encode`` on a tiny checkpoint."""

import io

import numpy as np
import pytest
from flax import nnx

from data_pipeline import fileio
from norton_jax import cli
from norton_jax.checkpoint import Checkpointer
from norton_jax.encode import main
from norton_jax.inference import (
    Encoder,
    bucket_size,
    encode_texts,
    encode_videos,
    load_model,
    run_padded,
    text_inputs,
    unit_normalize,
    video_inputs,
)
from norton_jax.models import ModelConfig, init_model, tiny_model_config

CFG = ModelConfig.from_any(tiny_model_config()).replace(num_hidden_text_layers=1, num_hidden_video_layers=1)
DIM = 512


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir with one random-init checkpoint (step 5) of the tiny model."""
    root = tmp_path_factory.mktemp("work")
    params = nnx.state(init_model(CFG, seed=3), nnx.Param)
    with Checkpointer(root / "checkpoints", model_config=CFG, enable_async=False) as ckpt:
        ckpt.save(5, params=params, force=True)
    return root


@pytest.fixture(scope="module")
def model(workdir):
    return load_model(workdir)[0]


def _direct_video(model, segments):
    _, _, vf, vm = video_inputs(segments, 32)
    c, m = text_inputs(["x"] * len(segments))
    return np.asarray(model(c, m, vf, vm, deterministic=True)["pooled_video"])


def _direct_text(model, texts):
    c, m = text_inputs(texts)
    _, _, vf, vm = video_inputs([np.zeros((1, DIM))] * len(texts), 32)
    return np.asarray(model(c, m, vf, vm, deterministic=True)["pooled_text"])


def test_bucket_and_padded_batches():
    assert [bucket_size(n, 64) for n in (1, 2, 3, 5, 64, 65, 1000)] == [1, 2, 4, 8, 64, 64, 64]
    assert bucket_size(3, 64, minimum=8) == 8 and bucket_size(3, None) == 4
    shapes = []

    def fn(a, b):
        shapes.append(a.shape[0])
        return a * 2, None

    out, none = run_padded(fn, [np.arange(11.0), np.zeros(11)], 4)
    assert shapes == [4, 4, 4] and none is None  # 11 rows: chunks of 4, the last padded from 3
    np.testing.assert_array_equal(out, np.arange(11.0) * 2)
    with pytest.raises(ValueError, match="nothing to encode"):
        run_padded(fn, [np.zeros(0)], 4)
    x = unit_normalize(np.asarray([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 0.0]])


def test_encode_videos_and_texts_equal_the_model(model):
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(t, DIM)).astype(np.float32) for t in (5, 32, 40, 1, 9)]
    got = encode_videos(model, feats, batch_size=4)  # two chunks (the second padded)
    want = _direct_video(model, [f[:32] for f in feats])  # clips longer than 32 s are cut, as DSAligner
    assert got.shape == (5, CFG.hidden_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(encode_videos(model, feats[1]), want[1:2], rtol=1e-4, atol=1e-5)  # one [T, D]
    np.testing.assert_allclose(encode_videos(Encoder(model), np.stack([feats[1], feats[1]])), want[[1, 1]],
                               rtol=1e-4, atol=1e-5)
    unit = encode_videos(model, feats, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    texts = ["crack two eggs", "whisk", "pour the batter into the pan"]
    np.testing.assert_allclose(encode_texts(model, texts, batch_size=2), _direct_text(model, texts),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="feature array 1 has shape"):
        encode_videos(model, [feats[0], np.zeros((0, DIM))])
    with pytest.raises(ValueError, match="no texts"):
        encode_texts(model, [])


def _run(capsys, *args):
    code = cli.run(main, [str(a) for a in args], prog="python -m norton_jax.encode")
    out = capsys.readouterr()
    return code, out.out, out.err


def _load_npy(path):
    return np.load(io.BytesIO(fileio.read_bytes(path)))


def test_encode_cli_features_folder_and_search(workdir, model, tmp_path, capsys):
    rng = np.random.default_rng(1)
    base = {f"vid{i}": rng.normal(size=(t, DIM)).astype(np.float16) for i, t in enumerate((20, 70, 32, 9))}
    (tmp_path / "db").mkdir()
    for vid, feat in base.items():
        np.save(tmp_path / "db" / f"{vid}.npy", feat)
    code, stdout, err = _run(capsys, "--checkpoint", workdir, "--features", tmp_path / "db",
                             "--out", tmp_path / "clips.npy")
    assert code == 0, err
    assert stdout.strip() == (f"wrote {tmp_path / 'clips.npy'}: 6 clips of 4 videos x {CFG.hidden_size} dims; "
                              f"video_id/start/end in {tmp_path / 'clips.ids.tsv'}")
    rows = (tmp_path / "clips.ids.tsv").read_text().splitlines()
    assert rows == ["vid0\t0\t20", "vid1\t0\t32", "vid1\t32\t64", "vid1\t64\t70", "vid2\t0\t32", "vid3\t0\t9"]
    clips = np.load(tmp_path / "clips.npy")
    segments = [base[v][int(a):int(b)].astype(np.float32) for v, a, b in (r.split("\t") for r in rows)]
    np.testing.assert_allclose(clips, _direct_video(model, segments), rtol=1e-4, atol=1e-5)

    # search: a slightly noisy copy of vid1's middle clip finds that clip first
    (tmp_path / "query").mkdir()
    np.save(tmp_path / "query" / "q.npy", base["vid1"][32:64].astype(np.float32) + 1e-3 * rng.normal(size=(32, DIM)))
    assert _run(capsys, "--checkpoint", workdir / "checkpoints", "--features", tmp_path / "query",
                "--out", tmp_path / "q.npy", "--normalize", "--step", "5")[0] == 0
    query = np.load(tmp_path / "q.npy")
    cosine = query @ unit_normalize(clips).T  # [1, clips]
    assert int(np.argmax(cosine[0])) == 2 and rows[2] == "vid1\t32\t64"

    # overlapping clips
    assert _run(capsys, "--checkpoint", workdir, "--features", tmp_path / "db", "--out", tmp_path / "o.npy",
                "--clip-len", "16", "--stride", "8")[0] == 0
    assert (tmp_path / "o.ids.tsv").read_text().splitlines()[:3] == ["vid0\t0\t16", "vid0\t8\t20", "vid1\t0\t16"]


def test_encode_cli_texts_and_text_search(workdir, model, tmp_path, capsys):
    (tmp_path / "caps.txt").write_text("crack two eggs\n\nwhisk the eggs\npour the batter\n")
    code, stdout, err = _run(capsys, "--checkpoint", workdir, "--texts", tmp_path / "caps.txt",
                             "--out", tmp_path / "caps.npy")
    assert code == 0, err
    assert stdout.strip() == (f"wrote {tmp_path / 'caps.npy'}: 3 sentences x {CFG.hidden_size} dims "
                              f"(1 blank lines skipped); line numbers in {tmp_path / 'caps.ids.tsv'}")
    assert (tmp_path / "caps.ids.tsv").read_text().splitlines() == [
        "1\tcrack two eggs", "3\twhisk the eggs", "4\tpour the batter"]
    caps = np.load(tmp_path / "caps.npy")
    np.testing.assert_allclose(caps, _direct_text(model, ["crack two eggs", "whisk the eggs", "pour the batter"]),
                               rtol=1e-4, atol=1e-5)
    (tmp_path / "q.txt").write_text("whisk the eggs\n")
    assert _run(capsys, "--checkpoint", workdir, "--texts", tmp_path / "q.txt", "--out", tmp_path / "q.npy",
                "--normalize")[0] == 0
    assert int(np.argmax(np.load(tmp_path / "q.npy") @ unit_normalize(caps).T)) == 1


def test_encode_cli_reads_a_feature_store_on_ram(workdir, model, capsys):
    import uuid

    from data_pipeline.feature_store import FeatureStoreWriter, VideoRecord
    from data_pipeline.tokenization import tokenize_captions

    root = f"ram://encode-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(2)
    feats = {f"v{i}": rng.normal(size=(t, DIM)).astype(np.float16) for i, t in enumerate((12, 40))}
    with FeatureStoreWriter(fileio.join(root, "store"), "val", videos_per_shard=1) as writer:
        for vid, feat in feats.items():
            writer.add(VideoRecord(video_id=vid, features=feat, starts=np.asarray([0.0], np.float32),
                                   ends=np.asarray([4.0], np.float32), tokens=tokenize_captions(["a cue"]),
                                   texts=["a cue"]))
    out = fileio.join(root, "out", "clips.npy")
    code, stdout, err = _run(capsys, "--checkpoint", workdir, "--features", fileio.join(root, "store"), "--out", out)
    assert code == 0, err
    assert fileio.read_bytes(fileio.join(root, "out", "clips.ids.tsv")).decode().splitlines() == [
        "v0\t0\t12", "v1\t0\t32", "v1\t32\t40"]
    want = _direct_video(model, [feats["v0"].astype(np.float32), feats["v1"][:32].astype(np.float32),
                                 feats["v1"][32:].astype(np.float32)])
    np.testing.assert_allclose(_load_npy(out), want, rtol=1e-4, atol=1e-5)


def test_encode_cli_errors_name_the_file(workdir, tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    code, _, err = _run(capsys, "--checkpoint", workdir, "--texts", missing, "--out", tmp_path / "x.npy")
    assert code == 2 and f"--texts {missing}: file not found" in err
    code, _, err = _run(capsys, "--checkpoint", workdir, "--features", tmp_path / "nofolder", "--out", tmp_path / "x.npy")
    assert code == 2 and f"--features {tmp_path / 'nofolder'}: folder not found" in err
    (tmp_path / "bad").mkdir()
    np.save(tmp_path / "bad" / "flat.npy", np.zeros(7, np.float32))
    code, _, err = _run(capsys, "--checkpoint", workdir, "--features", tmp_path / "bad", "--out", tmp_path / "x.npy")
    assert code == 2 and "flat.npy: features must be a non-empty [T, D] array" in err
    nan = np.ones((5, DIM), np.float32)
    nan[3, 1] = np.nan
    (tmp_path / "nan").mkdir()
    np.save(tmp_path / "nan" / "v.npy", nan)
    code, _, err = _run(capsys, "--checkpoint", workdir, "--features", tmp_path / "nan", "--out", tmp_path / "x.npy")
    assert code == 2 and "v.npy: video 'v': features contain 1 non-finite" in err
    (tmp_path / "q.txt").write_text("a query\n")
    code, _, err = _run(capsys, "--checkpoint", tmp_path / "nockpt", "--texts", tmp_path / "q.txt",
                        "--out", tmp_path / "x.npy")
    assert code == 2 and f"checkpoint not found: {tmp_path / 'nockpt'}" in err
    code, _, err = _run(capsys, "--checkpoint", workdir, "--features", tmp_path / "bad", "--out", tmp_path / "x.txt")
    assert code == 2 and "give a .npy file name" in err
