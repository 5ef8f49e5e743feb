"""The training loop: resume bit for bit, hard-negative plans, NaN stop, SIGTERM."""

import json
import os
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from data_pipeline import convert, synthetic
from data_pipeline.input_pipeline import TrainIterator
from norton_jax.checkpoint import Checkpointer
from norton_jax.models.config import load_config_file
from norton_jax.models.dual_encoder import abstract_model
from norton_jax.train import NonFiniteError, train_and_evaluate


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_store")
    synthetic.write_per_video_layout(str(root / "f"), str(root / "c"), 12, seed=3, min_seconds=30, max_seconds=80)
    convert.convert_per_video(str(root / "f"), str(root / "c"), str(root / "store"), videos_per_shard=6)
    return str(root / "store")


def small_config(store, **train):
    config = load_config_file("configs/tiny.py")
    config.model.hidden_size = 16
    config.model.intermediate_size = 32
    config.model.num_hidden_video_layers = 1
    config.model.num_hidden_text_layers = 1
    config.data.store = store
    config.data.build_if_missing = ""
    config.data.videos_per_device = 2  # 32 clips, 4 sequences per step
    config.train.update(dict(steps=8, log_every=1, checkpoint_every=2, keep_checkpoints=10, progress=False))
    config.train.hard_negatives.num_candidates = 6
    config.train.update(train)
    return config


def final_params(workdir, config, step=None):
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        template = nnx.state(abstract_model(config.model), nnx.Param)
        restored = ckpt.restore(step, params=template)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(restored.params)}


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    drop = ("step_time_s", "sequences_per_s")
    return {r["step"]: {k: v for k, v in r.items() if k not in drop} for r in rows}


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted_run(store, tmp_path):
    full_dir, cut_dir = str(tmp_path / "full"), str(tmp_path / "cut")
    full = train_and_evaluate(small_config(store), full_dir)
    assert full["step"] == 8 and not full["interrupted"]
    first = train_and_evaluate(small_config(store, stop_after_steps=3), cut_dir)
    assert first["step"] == 3
    resumed = train_and_evaluate(small_config(store), cut_dir)
    assert resumed["step"] == 8

    a, b = final_params(full_dir, small_config(store)), final_params(cut_dir, small_config(store))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ma, mb = read_metrics(full_dir), read_metrics(cut_dir)
    assert set(ma) == set(mb) == set(range(1, 9))
    for step in range(1, 9):
        assert ma[step] == mb[step], step
    # 12 videos / 2 per step: epochs 0 and 1, each with a saved hard-negative plan.
    for epoch in (0, 1):
        with open(os.path.join(full_dir, "batches", f"epoch_{epoch}.json")) as f:
            plan = json.load(f)
        with open(os.path.join(cut_dir, "batches", f"epoch_{epoch}.json")) as f:
            assert json.load(f) == plan
        # Seed + neighbour batches: a video may appear in several batches or in none
        # (spec 4.5), but never twice in one batch.
        positions = plan["positions"]
        assert len(positions) == 12 and set(positions) <= set(range(12))
        assert all(positions[i] != positions[i + 1] for i in range(0, 12, 2))
    with open(os.path.join(full_dir, "config.json")) as f:
        assert json.load(f)["train"]["steps"] == 8
    assert os.listdir(os.path.join(full_dir, "tensorboard"))


def test_nan_features_stop_the_run_and_keep_the_last_good_checkpoint(store, tmp_path, monkeypatch):
    original = TrainIterator.__next__
    calls = {"n": 0}

    def poisoned(self):
        batch = original(self)
        calls["n"] += 1
        if calls["n"] == 3:
            batch = dict(batch, vfeats=batch["vfeats"].copy())
            batch["vfeats"][0, 0, 0] = np.nan
        return batch

    monkeypatch.setattr(TrainIterator, "__next__", poisoned)
    workdir = str(tmp_path / "nan")
    config = small_config(store, checkpoint_every=1, steps=5)
    config.train.hard_negatives.enabled = False
    with pytest.raises(NonFiniteError, match="step 3: the input batch field 'vfeats'"):
        train_and_evaluate(config, workdir)
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [1, 2]
    params = final_params(workdir, config)
    assert all(np.isfinite(v).all() for v in params.values())


def test_sigterm_saves_and_exits_cleanly(store, tmp_path, monkeypatch):
    original = TrainIterator.__next__
    calls = {"n": 0}

    def terminate_after_two(self):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    monkeypatch.setattr(TrainIterator, "__next__", terminate_after_two)
    workdir = str(tmp_path / "term")
    config = small_config(store, checkpoint_every=100, steps=6)
    config.train.hard_negatives.enabled = False
    summary = train_and_evaluate(config, workdir)
    assert summary["interrupted"] and summary["step"] == 2
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [2]
    restored_state = json.load(open(os.path.join(workdir, "summary.json")))
    assert restored_state["step"] == 2


def test_hard_negative_batches_group_nearest_neighbours():
    from norton_jax.training.hard_negatives import build_batches

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 8)) * 10
    vectors = np.repeat(centres, 8, axis=0) + rng.normal(size=(80, 8)) * 0.1  # 10 clusters of 8
    batches = build_batches(vectors.astype(np.float32), 8, rng=np.random.default_rng(1), num_candidates=8)
    assert len(batches) == 10
    for batch in batches:
        assert len(set(batch)) == 8
        assert len({i // 8 for i in batch}) == 1  # the seed's whole cluster, nothing else
    with pytest.raises(ValueError, match="cannot fill a batch"):
        build_batches(vectors[:4].astype(np.float32), 8, rng=np.random.default_rng(1))
