"""The best checkpoint (lowest validation loss) beside the rotating latest ones, and step names."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from norton_jax.checkpoint import BEST, Checkpointer, parse_step
from norton_jax.models.config import tiny_model_config


def test_parse_step_reads_integers_best_and_latest():
    assert parse_step("best") == BEST == "best"
    assert parse_step(" BEST ") == "best"
    assert parse_step("12") == 12 and parse_step(7) == 7
    assert parse_step("latest") is None and parse_step("") is None and parse_step(None) is None
    for bad in ("x", "-3", "1.5"):
        with pytest.raises(ValueError, match=repr(bad)):
            parse_step(bad)


def _params(step: int):
    return {"w": jnp.full((3, 2), float(step), jnp.float32), "b": jnp.arange(4.0) * step}


def test_best_is_kept_while_the_latest_ones_rotate_and_survives_a_reopen(tmp_path):
    root = str(tmp_path / "checkpoints")
    losses = {1: 3.0, 2: 1.0, 3: 2.0, 4: float("nan"), 5: 5.0}
    with Checkpointer(root, max_to_keep=2, enable_async=False, model_config=tiny_model_config()) as ckpt:
        assert ckpt.best_record() is None
        kept = {}
        for step, loss in losses.items():
            ckpt.save(step, params=_params(step), force=True)
            kept[step] = ckpt.save_best(step, loss, params=_params(step))
        assert kept == {1: True, 2: True, 3: False, 4: False, 5: False}
        assert ckpt.all_steps() == [4, 5]  # the latest two rotate as before
        assert ckpt.best_record() == {"metric": "val/loss_total", "value": 1.0, "step": 2}
        assert ckpt.model_config("best")["hidden_size"] == tiny_model_config().hidden_size
    assert json.load(open(os.path.join(root + ".best", "best.json")))["step"] == 2
    with Checkpointer(root, max_to_keep=2, enable_async=False) as ckpt:  # a resumed run
        assert ckpt.best_step() == 2
        restored = ckpt.restore("best", params=jax.tree.map(jnp.zeros_like, _params(0)))
        assert restored.step == 2
        for k, v in _params(2).items():
            np.testing.assert_array_equal(np.asarray(restored.params[k]), np.asarray(v))
        assert not ckpt.save_best(6, 1.5, params=_params(6))
        assert ckpt.save_best(7, 0.5, params=_params(7))
        assert ckpt.best_step() == 7 and ckpt.restore(BEST).step == 7
        assert ckpt.all_steps() == [4, 5]  # best saves never touch the latest ones


def test_restore_best_without_a_best_checkpoint_says_how_to_get_one(tmp_path):
    with Checkpointer(str(tmp_path / "c"), enable_async=False) as ckpt:
        ckpt.save(1, params=_params(1), force=True)
        with pytest.raises(FileNotFoundError, match="train.eval_every"):
            ckpt.restore("best")
        with pytest.raises(FileNotFoundError, match="no best checkpoint"):
            ckpt.model_config("best")
        assert ckpt.restore("latest").step == 1


def test_finetune_init_takes_the_best_step_of_a_pretraining_workdir(tmp_path):
    from flax import nnx

    from norton_jax.finetune.trainer import load_init
    from norton_jax.models.dual_encoder import init_model

    cfg = tiny_model_config()
    cfg.hidden_size, cfg.intermediate_size = 16, 32
    cfg.num_hidden_video_layers = cfg.num_hidden_text_layers = 1
    latest, best = init_model(cfg, seed=1), init_model(cfg, seed=2)
    workdir = tmp_path / "pretrain"
    with Checkpointer(str(workdir / "checkpoints"), enable_async=False, model_config=cfg) as ckpt:
        ckpt.save_best(1, 0.5, params=nnx.state(best, nnx.Param))
        ckpt.save(2, params=nnx.state(latest, nnx.Param), force=True)

    def leaves(model):
        return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]

    for step, want in (("best", best), (None, latest), ("latest", latest), (2, latest)):
        model = init_model(cfg, seed=3)
        described = load_init(model, str(workdir), step=step)
        assert all(np.array_equal(a, b) for a, b in zip(leaves(model), leaves(want))), step
        assert ("(step best)" in described) == (step == "best")
