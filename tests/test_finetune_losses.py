"""Fine-tuning losses (spec §2.7), COIN windows/targets/merging (§5.7) and the training data
loaders (§5.5, §5.9): hand-computed values and slow reference loops."""

import csv
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from norton_jax.evaluate.loaders import EvalDataError, FeatureDir
from norton_jax.evaluate.metrics import coin_windows
from norton_jax.evaluate.run import Layout
from norton_jax.finetune import data as D
from norton_jax.finetune import standins
from norton_jax.finetune.evaluate import coin_video_logits
from norton_jax.finetune.losses import frame_cross_entropy, t2v_contrastive_loss, v2t_contrastive_loss
from norton_jax.models.config import tiny_model_config
from norton_jax.models.dual_encoder import init_model

TEXT = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
VIDEO = np.array([[2.0, 0.0], [1.0, 3.0]], np.float32)


def test_t2v_loss_hand_computed():
    # text @ video^T = [[2, 1], [0, 6]]; CE(row i -> column i), mean over rows
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-6.0))) / 2
    assert float(t2v_contrastive_loss(jnp.asarray(TEXT), jnp.asarray(VIDEO))) == pytest.approx(expected, rel=1e-6)


def test_v2t_loss_hand_computed():
    # video @ text^T = [[2, 0], [1, 6]]
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-5.0))) / 2
    assert float(v2t_contrastive_loss(jnp.asarray(VIDEO), jnp.asarray(TEXT))) == pytest.approx(expected, rel=1e-6)


def test_contrastive_losses_use_raw_dot_products():
    """No temperature, no normalisation: scaling the embeddings changes the loss."""
    a = float(t2v_contrastive_loss(jnp.asarray(TEXT), jnp.asarray(VIDEO)))
    b = float(t2v_contrastive_loss(jnp.asarray(2 * TEXT), jnp.asarray(VIDEO)))
    assert b < a


def test_frame_cross_entropy_hand_computed_and_ignores_padding():
    logits = jnp.asarray([[[0.0, math.log(3.0)], [1.0, 1.0], [5.0, -5.0]]])  # [1, 3 frames, 2 classes]
    targets = jnp.asarray([[1, 0, -100]])
    loss, count = frame_cross_entropy(logits, targets)
    # frame 0: -log(3/4); frame 1: -log(1/2); frame 2 ignored
    assert float(loss) == pytest.approx((math.log(4 / 3) + math.log(2.0)) / 2, rel=1e-6)
    assert int(count) == 2
    loss0, count0 = frame_cross_entropy(logits, jnp.full((1, 3), -100))
    assert float(loss0) == 0.0 and int(count0) == 0


def _slow_window_targets(num_frames, segments, start, stop, size):
    """Spec §5.7 per-window rule, written out: -100 padding, 0 real frames, then each
    overlapping segment labels frames [floor(s) - ws, ceil(e) - ws) clipped to the window."""
    t = [-100] * size
    for f in range(stop - start):
        t[f] = 0
    for s, e, lab in segments:
        lo, hi = math.floor(s) - start, math.ceil(e) - start
        for f in range(max(lo, 0), min(hi, stop - start)):
            t[f] = lab
    return t


def test_coin_window_targets_match_the_spec_rule():
    segments = [(3.4, 10.2, 7), (9.0, 20.0, 3), (41.5, 47.9, 778)]
    for num_frames in (5, 32, 33, 48, 70):
        windows, targets = D.coin_window_targets(num_frames, segments, stride=8, size=32)
        assert windows == coin_windows(num_frames, stride=8, size=32)
        for w, (a, b) in enumerate(windows):
            assert targets[w].tolist() == _slow_window_targets(num_frames, segments, a, b, 32), (num_frames, a)


def test_coin_window_merging_matches_a_slow_loop():
    """Batched, padded classifier windows merged per second == one window at a time,
    averaged frame by frame in Python."""
    config = tiny_model_config()
    config.num_labels = 5
    model = init_model(config, seed=1)
    model.eval()
    feats = np.random.default_rng(0).standard_normal((70, 512)).astype(np.float32)
    stride, size = 16, 32
    fast = coin_video_logits(model, feats, stride=stride, size=size, max_windows=2)  # 2 chunks, padded
    one_window = nnx.jit(lambda m, *x: m.classify_frames(*x))  # one compile for the loop below
    sums = [np.zeros(5) for _ in range(70)]
    counts = [0] * 70
    for a, b in coin_windows(70, stride=stride, size=size):
        vfeats = np.zeros((1, size, 512), np.float32)
        vfeats[0, : b - a] = feats[a:b]
        vmasks = np.zeros((1, size), bool)
        vmasks[0, : b - a] = True
        caps = np.array([[101, 102, 0, 102]])
        cmasks = np.array([[False, True, False, True]])
        logits = np.asarray(one_window(model, caps, cmasks, vfeats, vmasks))[0]  # [32, 5]
        for f in range(b - a):
            sums[a + f] += logits[f]
            counts[a + f] += 1
    slow = np.stack([s / c for s, c in zip(sums, counts)])
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def msrvtt_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("msrvtt_standin")
    standins.write_msrvtt(root, num_train=12, num_qa_train=8, num_test=5, captions_per_video=20, seconds=(3, 40))
    return root


def test_msrvtt_train_loader_and_dup_batches(msrvtt_dir):
    train = D.load_msrvtt_train(msrvtt_dir / "MSRVTT_train.9k.csv", msrvtt_dir / "MSRVTT_data.json",
                                msrvtt_dir / D.MSRVTT_FEATURES)
    assert len(train.video_ids) == 12 and all(len(train.captions[v]) == 20 for v in train.video_ids)
    batches = D.CaptionBatches(train, batch_size=8, layout=Layout(32, 96), dup=4, seed=0)
    assert batches.steps_per_epoch == 12 * 4 // 8
    seen = {}
    flat = [c for v in train.video_ids for c in train.captions[v]]
    for step in range(batches.steps_per_epoch):
        b = batches(step)
        assert b["caps"].shape == (8, 64) and b["vfeats"].shape == (8, 32, 512)
        for row in range(8):
            n = int(b["vmasks"][row].sum())
            # the row's frames identify its video; its caption must be one of that video's 20
            first = {v: np.asarray(train.features.load(v)[:32]) for v in train.video_ids}
            vid = next(v for v, x in first.items() if len(x) == n and np.allclose(x, b["vfeats"][row, :n]))
            seen[vid] = seen.get(vid, 0) + 1
            caption_rows = np.flatnonzero((batches.caps == b["caps"][row]).all(axis=1))
            assert any(flat[r] in train.captions[vid] for r in caption_rows)
    assert seen == {v: 4 for v in train.video_ids}  # every video exactly dup times per epoch
    np.testing.assert_array_equal(batches(5)["caps"], D.CaptionBatches(
        train, batch_size=8, layout=Layout(32, 96), dup=4, seed=0)(5)["caps"])  # a function of the step


def test_msrvtt_train_loader_errors_name_file_and_field(msrvtt_dir, tmp_path):
    bad_csv = tmp_path / "list.csv"
    bad_csv.write_text("vid\nvideo0\n")
    with pytest.raises(EvalDataError, match=r"list\.csv.*video_id"):
        D.load_msrvtt_train(bad_csv, msrvtt_dir / "MSRVTT_data.json", msrvtt_dir / D.MSRVTT_FEATURES)
    ok_csv = tmp_path / "ok.csv"
    with open(ok_csv, "w", newline="") as f:
        csv.writer(f).writerows([["video_id"], ["video0"], ["video_without_captions"]])
    with pytest.raises(EvalDataError, match=r"MSRVTT_data\.json.*no caption.*video_without_captions"):
        D.load_msrvtt_train(ok_csv, msrvtt_dir / "MSRVTT_data.json", msrvtt_dir / D.MSRVTT_FEATURES)
    bad_json = tmp_path / "data.json"
    bad_json.write_text(json.dumps({"sentences": [{"video_id": "video0"}]}))
    with pytest.raises(EvalDataError, match=r"data\.json.*sentences\[0\].*caption"):
        D.load_msrvtt_train(ok_csv, bad_json, msrvtt_dir / D.MSRVTT_FEATURES)


def test_coin_batches_pad_devices_to_one_bucket(tmp_path):
    standins.write_coin(tmp_path, num_train=4, num_test=2, seconds=(40, 80))
    train = D.load_coin_train(tmp_path / "COIN.json", tmp_path / D.COIN_FEATURES, num_labels=779)
    batches = D.COINBatches(train, videos_per_device=1, num_devices=2, seed=0)
    assert batches.steps_per_epoch == 2
    b = batches(0)
    rows = b["targets"].shape[0]
    assert rows % 2 == 0 and b["vfeats"].shape == (rows, 32, 512)
    per = rows // 2
    for d, v in enumerate(batches._order(0)[:2]):
        windows, targets = D.coin_window_targets(batches.num_frames[v], train.videos[v].segments, stride=8, size=32)
        block = b["targets"][d * per : (d + 1) * per]
        np.testing.assert_array_equal(block[: len(windows)], targets)
        assert (block[len(windows):] == -100).all()
    assert not b["cmasks"][:, 0].any() and b["cmasks"][:, 1].all()  # [CLS] masked (spec §3.3 step 5)
    with pytest.raises(EvalDataError, match="num_labels=5"):
        D.load_coin_train(tmp_path / "COIN.json", FeatureDir(tmp_path / D.COIN_FEATURES), num_labels=5)


@pytest.mark.slow
def test_finetune_negatives_on_8_devices_equal_one_device(tmp_path):
    """train.negatives="global" (the default): on 8 simulated devices every fine-tuning loss
    sees the whole batch, so losses and SGD updates equal one device's on the same global
    batch; "local" (each device's shard only) does not."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    procs = {d: subprocess.Popen([sys.executable, str(root / "tests" / "finetune_worker.py"), str(d),
                                  str(tmp_path / f"d{d}.npz")], env=env, cwd=root, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for d in (1, 8)}
    for proc in procs.values():
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-4000:]
    one, eight = np.load(tmp_path / "d1.npz"), np.load(tmp_path / "d8.npz")
    for task in ("msrvtt", "msrvtt_qa", "coin"):
        params = [k for k in one if k.startswith(f"{task}/global/param")]
        assert len(params) > 10
        np.testing.assert_allclose(eight[f"{task}/global/loss"], one[f"{task}/global/loss"], rtol=1e-5)
        for k in params:
            np.testing.assert_allclose(eight[k], one[k], rtol=1e-4, atol=1e-5, err_msg=k)
        # one device: both modes are the same computation
        np.testing.assert_array_equal(one[f"{task}/local/loss"], one[f"{task}/global/loss"])
        local_diff = max(np.abs(eight[k.replace("/global/", "/local/")] - one[k]).max() for k in params)
        assert local_diff > 1e-2, (task, local_diff)
    for task in ("msrvtt", "msrvtt_qa"):   # 2 rows per device: 1 negative instead of 15
        assert eight[f"{task}/local/loss"][0] < 0.5 * one[f"{task}/global/loss"][0]


def test_finetune_configs_default_to_global_negatives_and_bad_values_are_named():
    from norton_jax.cli import ConfigError
    from norton_jax.finetune.losses import make_loss_fn
    from norton_jax.models.config import load_config_file

    for name in ("finetune_msrvtt", "finetune_msrvtt_qa", "finetune_coin"):
        assert load_config_file(f"configs/{name}.py").train.negatives == "global"
        assert load_config_file(f"configs/{name}.py:tiny").train.negatives == "global"
    with pytest.raises(ConfigError, match=r"train.negatives .*'global', 'local'.*'per_gpu'"):
        make_loss_fn("msrvtt", "per_gpu")
