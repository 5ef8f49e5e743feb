"""The evaluate CLI (spec §5) on a tiny generated checkpoint, store and official-format files."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from norton_jax.checkpoint import Checkpointer
from norton_jax.evaluate import run as R
from norton_jax.evaluate.__main__ import main
from norton_jax.models import ModelConfig, init_model, tiny_model_config

CFG = ModelConfig.from_any(tiny_model_config()).replace(num_hidden_text_layers=1, num_hidden_video_layers=1)
DIM = 512


def _feats(rng, frames):
    return rng.normal(size=(frames, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training-workdir-shaped folder with one random-init checkpoint (step 7)."""
    root = tmp_path_factory.mktemp("work")
    model = init_model(CFG, seed=0)
    with Checkpointer(root / "checkpoints", model_config=CFG, enable_async=False) as ckpt:
        ckpt.save(7, params=nnx.state(model, nnx.Param), force=True)
    return root


def _write_store(root: str) -> None:
    """A youcook2-mnc-like store under ``root`` (local or ram://): 4 val videos with noisy captions
    and ground truth."""
    from data_pipeline.feature_store import FeatureStoreWriter, VideoRecord
    from data_pipeline.tokenization import tokenize_captions

    rng = np.random.default_rng(0)
    with FeatureStoreWriter(root, "val", videos_per_shard=2) as writer:
        for v in range(4):
            frames = 50 + 15 * v
            steps = [(5.0, 15.0), (20.0, 32.0), (36.0, 48.0)]
            caps = []
            for k, (s, e) in enumerate(steps):
                caps.append((s + 2.0, e + 2.0, f"um step {k} of video {v}", s, e, 1, f"step {k} of video {v}"))
            caps.append((25.0, 28.0, "subscribe to my channel", -1.0, -1.0, 0, ""))
            caps.sort(key=lambda c: c[0])
            writer.add(VideoRecord(
                video_id=f"vid{v}", features=_feats(rng, frames).astype(np.float16),
                starts=np.asarray([c[0] for c in caps], np.float32), ends=np.asarray([c[1] for c in caps], np.float32),
                tokens=tokenize_captions([c[2] for c in caps]), texts=[c[2] for c in caps],
                gt_start=np.asarray([c[3] for c in caps], np.float32), gt_end=np.asarray([c[4] for c in caps], np.float32),
                gt_alignable=np.asarray([c[5] for c in caps], np.int64), gt_text=[c[6] for c in caps],
            ))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A youcook2-mnc-like store: 4 val videos with noisy captions and ground truth."""
    root = tmp_path_factory.mktemp("store")
    _write_store(str(root))
    return root


def _run(capsys, *args):
    from norton_jax import cli

    code = cli.run(main, list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------------------
# Layout and encoders
# ---------------------------------------------------------------------------------------


def test_dsaligner_layout_and_encoder_match_the_model(workdir):
    caps, cmasks = R.text_inputs(["add the salt", ""], R.RETRIEVAL_LAYOUT)
    assert caps.shape == (2, 64) and caps[0, 0] == 101 and caps[0, 1] == 102
    n = int(cmasks[0].sum())
    assert caps[0, n - 1] == 102 and caps[0, n] == 0 and list(caps[1, :3]) == [101, 102, 102]
    long = R.text_inputs(["word " * 200], R.QA_LAYOUT)[1]
    assert long.shape == (1, 80) and long.sum() == 80  # 77 words + 3 specials
    vc, vm, vf, vmask = R.video_inputs([np.ones((40, DIM)), np.ones((3, DIM))], 32, mask_cls=True)
    assert vf.shape == (2, 32, DIM) and vmask.sum(1).tolist() == [32, 3]
    assert vm[0].tolist() == [False, True, False, True] and vc[0].tolist() == [101, 102, 0, 102]

    model, info = R.load_model(workdir)
    assert info["step"] == 7
    enc = R.Encoder(model, batch_size=4)
    rng = np.random.default_rng(1)
    segs = [_feats(rng, t) for t in (5, 32, 40, 1, 9)]  # 5 rows: two chunks of 4 (padded)
    texts = ["a", "b c", "d e f", "g", "h i"]
    pooled_v, frames = enc.segments(segs, 32, frames=True)
    pooled_t = enc.texts(texts)
    c, m = R.text_inputs(texts)
    _, _, vf, vmask = R.video_inputs(segs, 32)
    direct = model(c, m, vf, vmask, deterministic=True)
    np.testing.assert_allclose(pooled_v, direct["pooled_video"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pooled_t, direct["pooled_text"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(frames, direct["video_outputs"][:, 1:-1], rtol=1e-4, atol=1e-5)


def test_checkpoint_forms_resolve_to_the_same_weights(workdir, tmp_path):
    from norton_jax.export_torch import export_state_dict, save_safetensors

    assert R.resolve_checkpoint(workdir) == R.CheckpointRef("orbax", str(workdir / "checkpoints"), None)
    assert R.resolve_checkpoint(workdir / "checkpoints").kind == "orbax"
    assert R.resolve_checkpoint(workdir / "checkpoints" / "7") == R.CheckpointRef("orbax", str(workdir / "checkpoints"), 7)
    ref, _ = R.load_model(workdir / "checkpoints" / "7")
    st = tmp_path / "model.safetensors"
    save_safetensors(export_state_dict(ref), st, CFG)
    loaded, info = R.load_model(st)
    a = nnx.to_pure_dict(nnx.state(ref, nnx.Param))
    b = nnx.to_pure_dict(nnx.state(loaded, nnx.Param))
    for x, y in zip(jax_leaves(a), jax_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(FileNotFoundError, match="no checkpoint here"):
        R.resolve_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="geometry differs"):
        R.load_model(workdir, CFG.replace(num_hidden_text_layers=2))


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


# ---------------------------------------------------------------------------------------
# youcook2-mnc store
# ---------------------------------------------------------------------------------------


def test_store_clips_use_true_segments_and_clean_sentences(store):
    records = R.read_store(store, "val")
    clips = R.store_clips(records)
    assert len(clips) == 12 and [c.text for c in clips[:3]] == [f"step {k} of video 0" for k in range(3)]
    assert (clips[0].start, clips[0].end) == (5, 15)
    htm = R.store_htm_align(records)
    v0 = htm[0]
    assert v0.aligned.tolist() == [True, True, False, True]  # sorted by noisy start: 7, 22, 25, 38
    assert v0.starts.tolist() == [5.0, 20.0, 25.0, 36.0] and v0.texts[2] == "subscribe to my channel"


@pytest.mark.parametrize("task", ["youcook2_clip", "youcook2_paragraph", "youcook2_paragraph_bg", "htm_align"])
def test_store_tasks(task, workdir, store, tmp_path, capsys):
    out = tmp_path / "m.json"
    code, stdout, _ = _run(capsys, "--checkpoint", str(workdir), "--task", task, "--data", str(store),
                           "--out", str(out), "--batch-size", "16")
    assert code == 0, stdout
    res = json.loads(out.read_text())
    assert res["task"] == task and res["source"] == "youcook2-mnc" and res["step"] == 7 and res["split"] == "val"
    m = res["metrics"]
    if task == "youcook2_clip":
        assert res["counts"] == {"videos": 4, "clips": 12} and set(m) == {"R1", "R5", "R10", "MR"}
        assert 0 <= m["R1"] <= m["R5"] <= m["R10"] <= 1 and 1 <= m["MR"] <= 12
    elif task.startswith("youcook2_paragraph"):
        assert set(m) == {"cap_avg", "dtw", "otam"}
        for r in m.values():
            assert set(r) == {"R1", "R5", "R10"} and r["R5"] == 1.0  # 4 videos: always in the top 5
        assert "Cap. Avg." in stdout and "DTW" in stdout and "OTAM" in stdout
        if task.endswith("bg"):
            assert res["counts"]["windows"] == sum(-(-t // 16) for t in (50, 65, 80, 95))
    else:
        assert res["counts"]["captions"] == 16 and m["num_alignable"] == 12
        assert 0 <= m["recall"] <= 1 and 0 <= m["auc"] <= 1
        assert 0 <= m["dense_recall"] <= 1 and 0 <= m["dense_auc"] <= 1
        assert "dense windows (every caption on every second)" in stdout
        # noisy times are +2 s of the truth: every midpoint is inside its true segment
        assert m["timestamp_recall"] == 1.0
        assert "original (noisy) timestamps" in stdout


@pytest.mark.parametrize("task", ["youcook2_paragraph", "htm_align"])
def test_store_on_ram_gives_the_numbers_of_the_local_store(task, workdir, store, capsys):
    """Issue 13: the same store on TF's ram:// filesystem (not POSIX), results JSON written to ram://."""
    import uuid

    from data_pipeline import fileio

    root = f"ram://eval-{uuid.uuid4().hex[:8]}"
    _write_store(fileio.join(root, "store"))
    assert R.is_feature_store(fileio.join(root, "store")) and not R.is_feature_store(fileio.join(root, "none"))
    out = fileio.join(root, "results", "m.json")
    code, stdout, err = _run(capsys, "--checkpoint", str(workdir), "--task", task, "--data",
                             fileio.join(root, "store"), "--out", out, "--batch-size", "16")
    assert code == 0, err
    assert f"wrote {out}" in stdout
    on_ram = fileio.read_json(out)
    local = R.evaluate_checkpoint(workdir, task, store, batch_size=16)
    assert on_ram["data"] == fileio.join(root, "store") and on_ram["source"] == "youcook2-mnc"
    assert on_ram["counts"] == local["counts"] and on_ram["counts"]["videos"] == 4
    assert on_ram["metrics"] == local["metrics"]
    if task == "htm_align":
        assert on_ram["metrics"]["timestamp_recall"] == 1.0 and on_ram["metrics"]["num_alignable"] == 12
    else:
        assert {m: set(r) for m, r in on_ram["metrics"].items()} == {m: {"R1", "R5", "R10"} for m in ("cap_avg", "dtw", "otam")}
        assert all(r["R5"] == 1.0 for r in on_ram["metrics"].values())


def test_write_json_takes_numpy_values_and_nan(tmp_path):
    from data_pipeline import fileio

    path = tmp_path / "r.json"
    R.write_json({"a": np.float32(0.5), "b": np.arange(3), "c": float("nan"), "d": [np.int64(2), (1, np.inf)]}, path)
    assert fileio.read_json(path) == {"a": 0.5, "b": [0, 1, 2], "c": None, "d": [2, [1, None]]}
    assert not [p for p in tmp_path.iterdir() if p.name != "r.json"]  # no temporary file left


def test_max_videos_limits_the_store(workdir, store):
    res = R.evaluate_checkpoint(workdir, "youcook2_clip", store, max_videos=2)
    assert res["counts"] == {"videos": 2, "clips": 6} and res["max_videos"] == 2


# ---------------------------------------------------------------------------------------
# Official file formats
# ---------------------------------------------------------------------------------------


def _write_npys(folder: Path, frames: dict, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for vid, t in frames.items():
        np.save(folder / f"{vid}.npy", _feats(rng, t))


def test_youcook_official_files(workdir, tmp_path, capsys):
    db = {"database": {}}
    rows = []
    for v, vid in enumerate(["ytA", "ytB", "ytC"]):
        anns = [{"id": k, "segment": [10 * k, 10 * k + 8], "sentence": f"do thing {k} in {vid}"} for k in range(3)]
        db["database"][vid] = {"subset": "validation", "annotations": anns}
        rows += [{"end": a["segment"][1], "start": a["segment"][0], "task": "t", "text": a["sentence"], "video_id": vid}
                 for a in anns]
    (tmp_path / "youcookii_annotations_trainval.json").write_text(json.dumps(db))
    with open(tmp_path / "validation_youcook.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["end", "start", "task", "text", "video_id"])
        w.writeheader()
        w.writerows(rows)
    _write_npys(tmp_path / "youcook_validation_feature_fps30_512", {"ytA": 40, "ytB": 35})  # ytC missing
    for task in ("youcook2_clip", "youcook2_paragraph", "youcook2_paragraph_bg"):
        out = tmp_path / f"{task}.json"
        code, stdout, _ = _run(capsys, "--checkpoint", str(workdir / "checkpoints"), "--task", task,
                               "--data", str(tmp_path), "--out", str(out))
        assert code == 0
        res = json.loads(out.read_text())
        assert res["source"] == "official (csv)"
        assert res["missing"]["count"] == 1 and res["missing"]["video_ids"] == ["ytC"]
        assert res["missing"]["dropped_items"] == 3 and "missing features: 1 of 3 videos" in stdout


def test_msrvtt_retrieval_and_multiple_choice(workdir, tmp_path, capsys):
    vids = [f"video{7000 + i}" for i in range(6)]
    with open(tmp_path / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "vid_key", "video_id", "sentence"])
        for i, v in enumerate(vids):
            w.writerow([f"ret{i}", v.replace("video", "msr"), v, f"a person does thing {i}"])
    with open(tmp_path / "MSR_MC_test.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["vid_key", "a1", "a2", "a3", "a4", "a5", "answer"])
        for i, v in enumerate(vids):
            w.writerow([v.replace("video", "msr")] + [f"option {k} for {i}" for k in range(5)] + [i % 5])
    _write_npys(tmp_path / "msrvtt_feature_fps30_512", {v: 20 + i for i, v in enumerate(vids[:5])})
    out = tmp_path / "both.json"
    code, stdout, _ = _run(capsys, "--checkpoint", str(workdir), "--task", "msrvtt,msrvtt_qa",
                           "--data", str(tmp_path), "--out", str(out))
    assert code == 0
    res = json.loads(out.read_text())
    assert set(res) == {"msrvtt", "msrvtt_qa"}
    assert res["msrvtt"]["counts"] == {"pairs": 5} and res["msrvtt"]["missing"]["video_ids"] == ["video7005"]
    assert res["msrvtt"]["metrics"]["R5"] == 1.0
    assert res["msrvtt_qa"]["counts"] == {"questions": 5} and 0 <= res["msrvtt_qa"]["metrics"]["acc"] <= 1
    assert "accuracy" in stdout


def test_coin_zero_shot(workdir, tmp_path, capsys):
    database = {
        "c1": {"subset": "testing", "annotation": [{"segment": [2.0, 20.5], "id": "1", "label": "cut onion"},
                                                   {"segment": [30.0, 44.0], "id": "2", "label": "fry it"}]},
        "c2": {"subset": "testing", "annotation": [{"segment": [0.0, 9.0], "id": "3", "label": "serve"}]},
        "c3": {"subset": "training", "annotation": [{"segment": [0.0, 9.0], "id": "1", "label": "cut onion"}]},
    }
    (tmp_path / "COIN.json").write_text(json.dumps({"database": database}))
    _write_npys(tmp_path / "coin_feature_fps30_512", {"c1": 50, "c2": 12})
    out = tmp_path / "coin.json"
    code, stdout, _ = _run(capsys, "--checkpoint", str(workdir), "--task", "coin", "--data", str(tmp_path),
                           "--out", str(out))
    assert code == 0
    res = json.loads(out.read_text())
    assert res["counts"] == {"videos": 2, "labels": 3} and res["metrics"]["num_frames"] == 62
    assert 0 <= res["metrics"]["frame_acc"] <= 1 and "frame accuracy" in stdout


def test_htm_align_official(workdir, tmp_path, capsys):
    data = {
        "h1": [[0, 1.0, 4.0, "hello everyone"], [1, 10.0, 20.0, "cut the bread"], [0, 30.0, 33.0, "ok"],
               [1, 40.0, 52.0, "toast it"], [0, 60.0, 62.0, "bye"]],
        "h2": [[1, 0.0, 5.0, "pour water"], [0, 8.0, 9.0, "so"]],
    }
    (tmp_path / "htm_align.json").write_text(json.dumps(data))
    _write_npys(tmp_path, {"h1": 70})  # features next to the json, as the reference; h2 missing
    out = tmp_path / "ha.json"
    code, _, _ = _run(capsys, "--checkpoint", str(workdir), "--task", "htm_align",
                      "--data", str(tmp_path / "htm_align.json"), "--out", str(out))
    assert code == 0
    res = json.loads(out.read_text())
    assert res["counts"] == {"videos": 1, "captions": 5} and res["metrics"]["num_alignable"] == 2
    assert res["missing"]["video_ids"] == ["h2"] and "timestamp_recall" not in res["metrics"]


def test_cli_errors_are_clear(workdir, store, tmp_path, capsys):
    code, _, err = _run(capsys, "--checkpoint", str(workdir), "--task", "nope", "--data", str(tmp_path))
    assert code == 2 and "unknown task" in err
    code, _, err = _run(capsys, "--checkpoint", str(workdir), "--task", "msrvtt", "--data", str(tmp_path))
    assert code == 2 and "MSRVTT_JSFUSION_test.csv" in err
    code, _, err = _run(capsys, "--checkpoint", str(workdir), "--task", "coin", "--data", str(store))
    assert code == 2 and "feature store supports the tasks" in err
    code, _, err = _run(capsys, "--checkpoint", str(tmp_path / "none"), "--task", "coin", "--data", str(tmp_path))
    assert code == 2 and "checkpoint not found" in err


def test_dense_caption_similarity_is_the_htm_align_dense_one(workdir):
    from norton_jax.evaluate import metrics as M
    from norton_jax.evaluate.caption_similarity import caption_second_similarity, htm_align_similarity
    from norton_jax.inference import unit_normalize

    model, _ = R.load_model(workdir)
    enc = R.Encoder(model, batch_size=8)
    rng = np.random.default_rng(5)
    feat = _feats(rng, 45)
    texts = ["stir the soup", "add salt", "serve"]
    dense = caption_second_similarity(enc, feat, texts)  # windows start at 0, 8, 16, 24 (below 45 - 16)
    assert dense.shape == (3, 45) and (dense > M.UNCOVERED).all()
    np.testing.assert_array_equal(dense, htm_align_similarity(enc, feat, texts, [0, 10, 20], [5, 15, 25],
                                                              [1, 0, 1], active="dense"))
    # by hand: second 40 is covered by the windows starting at 16 and 24 (32 s long)
    text = unit_normalize(enc.texts(texts))
    _, frames = enc.segments([feat[16:45], feat[24:45]], 32, frames=True)
    frames = unit_normalize(frames)
    want = (text @ frames[0, 40 - 16] + text @ frames[1, 40 - 24]) / 2
    np.testing.assert_allclose(dense[:, 40], want, rtol=1e-5, atol=1e-6)
    short = caption_second_similarity(enc, feat[:10], texts)  # <= 16 s: the one window [0, 10)
    _, frames = enc.segments([feat[:10]], 32, frames=True)
    np.testing.assert_allclose(short, text @ unit_normalize(frames[0, :10]).T, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="stride must be in"):
        caption_second_similarity(enc, feat, texts, window=32, stride=17)


def test_step_flag(workdir, store, tmp_path, capsys):
    out = tmp_path / "s.json"
    for step in ("7", "latest"):
        code, _, err = _run(capsys, "--checkpoint", str(workdir), "--task", "youcook2_clip", "--data", str(store),
                            "--step", step, "--out", str(out), "--max-videos", "1")
        assert code == 0, err
        assert json.loads(out.read_text())["step"] == 7
    with pytest.raises(SystemExit):
        _run(capsys, "--checkpoint", str(workdir), "--task", "youcook2_clip", "--data", str(store), "--step", "seven")
    assert "--step" in capsys.readouterr().err
    code, _, err = _run(capsys, "--checkpoint", str(workdir), "--task", "youcook2_clip", "--data", str(store),
                        "--step", "3")
    assert code == 2 and "step 3" in err


def test_step_best_evaluates_the_best_checkpoint(tmp_path, store, capsys):
    root = tmp_path / "w"
    latest, best = init_model(CFG, seed=0), init_model(CFG, seed=1)
    with Checkpointer(root / "checkpoints", model_config=CFG, enable_async=False) as ckpt:
        ckpt.save(3, params=nnx.state(best, nnx.Param), force=True)
        assert ckpt.save_best(3, 0.5, params=nnx.state(best, nnx.Param))
        ckpt.save(9, params=nnx.state(latest, nnx.Param), force=True)
    model, info = R.load_model(root, step="best")
    assert info["step"] == 3
    for x, y in zip(jax_leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
                    jax_leaves(nnx.to_pure_dict(nnx.state(best, nnx.Param)))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    out = tmp_path / "best.json"
    code, stdout, err = _run(capsys, "--checkpoint", str(root), "--task", "youcook2_clip", "--data", str(store),
                             "--step", "best", "--out", str(out))
    assert code == 0, err
    assert json.loads(out.read_text())["step"] == 3 and "(step 3)" in stdout
    assert json.loads(out.read_text())["metrics"] == R.evaluate_checkpoint(best, "youcook2_clip", store)["metrics"]
