"""The training plumbing shared by train and finetune: workdir files on a non-POSIX
filesystem (TF's ram://), and skipping non-finite steps bit for bit."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from data_pipeline import fileio
from norton_jax.cli import NonFiniteError
from norton_jax.training.guards import NonFiniteGuard, skip_non_finite_updates
from norton_jax.training.metrics import MetricLogger, truncate_metrics, write_workdir_json
from norton_jax.training.step import make_optimizer
from norton_jax.training.validate import validate_config


def _rows(path):
    with fileio.open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("tensorboard", [False, True])
def test_metrics_config_and_summary_on_ram(tensorboard):
    workdir = f"ram://h2-workdir-{int(tensorboard)}/run"
    write_workdir_json(workdir, "config.json", {"train": {"steps": 8}})
    assert fileio.read_json(fileio.join(workdir, "config.json")) == {"train": {"steps": 8}}
    logger = MetricLogger(workdir, enabled=True, tensorboard=tensorboard)
    for step in range(1, 6):
        logger.write(step, {"loss_total": 1.0 / step})
    logger.close()
    path = fileio.join(workdir, "metrics.jsonl")
    assert [r["step"] for r in _rows(path)] == [1, 2, 3, 4, 5]
    # A resumed run from step 3: the rows after it go, the new ones are appended.
    logger = MetricLogger(workdir, enabled=True, start_step=3, tensorboard=tensorboard)
    logger.write(4, {"loss_total": 0.5})
    logger.close()
    assert [(r["step"], r["loss_total"]) for r in _rows(path)] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.5)]
    write_workdir_json(workdir, "summary.json", {"step": 4, "metrics": {"loss": float("nan")}})
    assert fileio.read_json(fileio.join(workdir, "summary.json")) == {"step": 4, "metrics": {"loss": None}}
    assert not [n for n in fileio.listdir(workdir) if "tmp" in n]


def test_truncate_metrics_on_ram_drops_torn_rows():
    path = "ram://h2-truncate/metrics.jsonl"
    with fileio.open(path, "w") as f:
        f.write('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"ste')
    assert truncate_metrics(path, 2) == 2
    assert [r["step"] for r in _rows(path)] == [1, 2]
    assert truncate_metrics("ram://h2-truncate/none.jsonl", 2) == 0


def _optim():
    return ml_collections.ConfigDict(dict(lr=1e-2, end_lr=0.0, warmup_steps=2, total_steps=10, b1=0.9, b2=0.98,
                                          eps=1e-8, clip_norm=2.0))


def _bits(tree):
    return [(np.asarray(x).dtype.str, np.asarray(x).shape, np.asarray(x).tobytes()) for x in jax.tree.leaves(tree)]


def test_a_skipped_update_leaves_parameters_and_optimiser_state_bit_equal():
    tx, _ = make_optimizer(_optim(), 10)
    tx = skip_non_finite_updates(tx)
    params = {"w": jnp.asarray([[-0.0, 0.0], [1.5, -2.25]], jnp.float32), "b": jnp.asarray([3.0, -0.0])}
    state = tx.init(params)
    good = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    updates, state = tx.update(good, state, params)  # one real step first: non-trivial Adam moments
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    params = dict(params, w=params["w"].at[0, 0].set(-0.0))
    bad = dict(good, w=good["w"].at[1, 1].set(jnp.nan))
    apply = jax.jit(lambda g, s, p: (lambda u, s2: (jax.tree.map(lambda a, b: a + b, p, u), s2))(*tx.update(g, s, p)))
    new_params, new_state = apply(bad, state, params)
    assert _bits(new_params) == _bits(params) and _bits(new_state) == _bits(state)
    assert np.signbit(np.asarray(new_params["w"])[0, 0])  # -0.0 stays -0.0
    changed, _ = apply(good, state, params)
    assert _bits(changed) != _bits(params)


def _metrics(finite=1.0, inputs_finite=1.0):
    return {"finite": jnp.float32(finite), "inputs_finite": jnp.float32(inputs_finite),
            "loss_total": jnp.float32(np.nan if finite < 1 else 1.0), "grad_norm": jnp.float32(1.0)}


def test_the_guard_counts_skips_and_stops_after_max_skipped_in_a_row():
    guard = NonFiniteGuard("skip", max_skipped=2, report=lambda m: None)
    assert [guard.check(_metrics(f), s) for s, f in enumerate([1, 0, 0, 1, 0, 0], 1)] == [
        False, True, True, False, True, True]
    assert guard.skipped == 4
    with pytest.raises(NonFiniteError, match=r"step 7: non-finite loss_total \(3 steps in a row"):
        guard.check(_metrics(0), 7)
    with pytest.raises(NonFiniteError, match="step 1: non-finite loss_total; stopping"):
        NonFiniteGuard("stop").check(_metrics(0), 1)
    with pytest.raises(NonFiniteError, match="'vfeats' holds NaN"):  # bad input always stops
        NonFiniteGuard("skip", max_skipped=5).check(_metrics(0, inputs_finite=0), 1)


def test_new_train_fields_are_validated():
    from norton_jax.models.config import load_config_file
    from norton_jax.cli import ConfigError

    config = load_config_file("configs/tiny.py")
    config.data.store = "somewhere"
    validate_config(config)
    config.train.on_non_finite = "ignore"
    config.train.max_skipped = -1
    config.train.eval_every = 5
    config.data.val_split = "train"
    with pytest.raises(ConfigError, match="3 invalid config values") as info:
        validate_config(config)
    for field in ("train.on_non_finite='ignore'", "train.max_skipped=-1", "data.val_split='train'"):
        assert f"config.{field}" in str(info.value)
