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


@pytest.fixture(scope="module")
def store_with_val(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_val_store")
    synthetic.write_per_video_layout(str(root / "f"), str(root / "c"), 12, seed=3, min_seconds=30, max_seconds=80)
    synthetic.write_per_video_layout(str(root / "vf"), str(root / "vc"), 4, seed=11, min_seconds=30, max_seconds=80)
    convert.convert_per_video(str(root / "f"), str(root / "c"), str(root / "store"), videos_per_shard=6)
    convert.convert_per_video(str(root / "vf"), str(root / "vc"), str(root / "store"), split="val", videos_per_shard=6)
    return str(root / "store")


@pytest.mark.slow
def test_validation_keeps_the_best_step_beside_the_rotating_latest_ones(store_with_val, tmp_path):
    workdir = str(tmp_path / "val")
    config = small_config(store_with_val, steps=6, eval_every=2, eval_batches=2, checkpoint_every=1,
                          keep_checkpoints=2)
    config.train.hard_negatives.enabled = False
    summary = train_and_evaluate(config, workdir)
    rows = read_metrics(workdir)
    val = {s: r["val/loss_total"] for s, r in rows.items() if "val/loss_total" in r}
    assert sorted(val) == [2, 4, 6] and all(np.isfinite(v) for v in val.values())
    assert all(r["val/groups"] == 2.0 for s, r in rows.items() if s in val)  # 2 batches x 1 device group
    best = min(val, key=val.get)
    assert summary["best"] == {"metric": "val/loss_total", "value": val[best], "step": best}
    assert json.load(open(os.path.join(workdir, "checkpoints.best", "best.json")))["step"] == best
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [5, 6]
        assert ckpt.best_step() == best
    # restore("best") gives the parameters the run had at that step: a full run keeping
    # every step gives the reference.
    every = small_config(store_with_val, steps=6, checkpoint_every=1, keep_checkpoints=10)
    every.train.hard_negatives.enabled = False
    train_and_evaluate(every, str(tmp_path / "every"))
    ref = final_params(str(tmp_path / "every"), config, step=best)
    got = final_params(workdir, config, step="best")
    assert ref.keys() == got.keys()
    for k in ref:
        np.testing.assert_array_equal(ref[k], got[k], err_msg=k)


@pytest.mark.slow
def test_a_resumed_run_keeps_the_best_record(store_with_val, tmp_path, monkeypatch):
    from norton_jax.training import validation

    script = {2: 1.0, 4: 0.5, 6: 0.9, 8: 0.7}  # the best (step 4) comes before the interruption
    calls = []

    def scripted(self, model):
        step = 2 + 2 * len(calls)
        calls.append(step)
        return {"val/loss_total": script[step], "val/groups": 1.0}

    monkeypatch.setattr(validation.ValidationLoss, "__call__", scripted)
    workdir = str(tmp_path / "resume")
    config = small_config(store_with_val, steps=8, eval_every=2, checkpoint_every=2, keep_checkpoints=1)
    config.train.hard_negatives.enabled = False
    config.train.stop_after_steps = 4
    first = train_and_evaluate(config, workdir)
    assert first["step"] == 4 and first["best"]["step"] == 4
    config.train.stop_after_steps = 0
    resumed = train_and_evaluate(config, workdir)
    assert calls == [2, 4, 6, 8]
    assert resumed["step"] == 8 and resumed["best"] == {"metric": "val/loss_total", "value": 0.5, "step": 4}
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [8] and ckpt.restore("best", params=nnx.state(
            abstract_model(config.model), nnx.Param)).step == 4


def _nan_steps(monkeypatch, poisoned_calls):
    """Makes the train step's calls number ``poisoned_calls`` compute a NaN loss (and NaN
    gradients) from finite inputs: the step function built for them is the real one with a
    loss multiplied by NaN, applied through the loop's own optimiser (``tx``)."""
    import jax.numpy as jnp

    from norton_jax import train as train_lib

    real_make = train_lib.make_train_step

    def nan_loss(model, batch, rngs):
        out = model(batch["caps"], batch["cmasks"], batch["vfeats"], batch["vmasks"], deterministic=False, rngs=rngs)
        loss = jnp.mean(out["pooled_video"] * out["pooled_text"]) * jnp.nan
        return loss, {"loss_total": loss}

    def make(parts, tx, mesh, **kwargs):
        good, bad = real_make(parts, tx, mesh, **kwargs), real_make(parts, tx, mesh, loss_fn=nan_loss)
        calls = {"n": 0}

        def step(state, batch):
            calls["n"] += 1
            return (bad if calls["n"] in poisoned_calls else good)(state, batch)

        return step

    monkeypatch.setattr(train_lib, "make_train_step", make)


def test_skip_mode_skips_a_non_finite_step_and_counts_it(store, tmp_path, monkeypatch):
    _nan_steps(monkeypatch, {3})
    workdir = str(tmp_path / "skip")
    config = small_config(store, steps=5, checkpoint_every=1, on_non_finite="skip", max_skipped=1)
    config.train.hard_negatives.enabled = False
    summary = train_and_evaluate(config, workdir)
    assert summary["step"] == 5 and summary["skipped_steps"] == 1
    rows = read_metrics(workdir)
    assert rows[3]["finite"] == 0.0 and [rows[s]["skipped_steps"] for s in range(1, 6)] == [0, 0, 1, 1, 1]
    before, after = final_params(workdir, config, step=2), final_params(workdir, config, step=3)
    for k in before:  # the skipped step left every parameter bit for bit as it was
        assert before[k].tobytes() == after[k].tobytes(), k
    assert any(before[k].tobytes() != v.tobytes() for k, v in final_params(workdir, config, step=4).items())


@pytest.mark.slow
def test_skip_mode_still_stops_after_max_skipped_in_a_row(store, tmp_path, monkeypatch):
    _nan_steps(monkeypatch, {2, 3})
    workdir = str(tmp_path / "skip-stop")
    config = small_config(store, steps=5, checkpoint_every=1, on_non_finite="skip", max_skipped=1)
    config.train.hard_negatives.enabled = False
    with pytest.raises(NonFiniteError, match=r"step 3: non-finite .*2 steps in a row, more than train.max_skipped"):
        train_and_evaluate(config, workdir)
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [1, 2]
