"""The shard_map train step on simulated devices and across two processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).parent / "train_worker.py"
ROOT = Path(__file__).parents[1]


def run_worker(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.mark.slow
def test_global_negatives_match_one_device_and_local_matches_shard_mean(tmp_path):
    out = tmp_path / "mesh.json"
    wait(run_worker("mesh", out))
    r = json.loads(out.read_text())
    one, glob, loc = r["one_device"], r["global"], r["local"]
    # negatives="global" on 8 devices == one device on the same global batch.
    assert glob["loss_total"] == pytest.approx(one["loss_total"], rel=1e-5)
    assert glob["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
    assert r["max_param_diff_global_vs_one"] < 1e-5
    assert glob["loss_total"] == pytest.approx(r["full_batch_loss"], rel=1e-5)
    # negatives="local" == mean of the per-shard reference losses (spec 4.7).
    assert loc["loss_total"] == pytest.approx(r["mean_shard_loss"], rel=1e-5)
    assert abs(loc["loss_total"] - glob["loss_total"]) > 1.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_with_four_devices(tmp_path):
    single = tmp_path / "single.npz"
    wait(run_worker("step", 4, single))
    port = free_port()
    dist = tmp_path / "dist.npz"
    workers = [run_worker("dist", pid, 2, port, dist) for pid in range(2)]
    for w in workers:
        wait(w)
    a, b = np.load(single), np.load(dist)
    assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-6)
    assert float(b["grad_norm"]) == pytest.approx(float(a["grad_norm"]), rel=1e-5)
    assert set(a.files) == set(b.files)
    for k in a.files:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6)


# --- configs/pretrain.py: epochs, presets; LossConfig through the step; remat ------------------


def _load_with_flags(spec: str, *overrides: str):
    """The config loading of ``python -m norton_jax.train --config <spec> --config.x=y``."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["train", f"--config={spec}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv, sys_argv=argv)
    fv(argv)
    return fv.config


def test_pretrain_steps_follow_epochs_not_the_device_count():
    epochs = {}
    for devices in (2, 64):
        cfg = _load_with_flags(str(ROOT / "configs" / "pretrain.py"), f"--config.train.num_devices={devices}")
        global_videos = cfg.data.videos_per_device * devices
        steps_per_epoch = cfg.train.num_videos // global_videos
        assert cfg.train.steps == cfg.train.epochs * steps_per_epoch
        epochs[devices] = cfg.train.steps / steps_per_epoch
    assert epochs[2] == epochs[64] == 6  # the reference's max_epoch
    cfg = _load_with_flags(str(ROOT / "configs" / "pretrain.py"), "--config.train.epochs=3",
                           "--config.data.videos_per_device=32", "--config.train.num_devices=8")
    assert cfg.train.steps == 3 * (cfg.train.num_videos // (32 * 8))
    cfg = _load_with_flags(str(ROOT / "configs" / "pretrain.py"), "--config.train.steps=123")
    assert cfg.train.steps == 123  # an explicit step count wins


def test_every_documented_preset_loads():
    import re

    from norton_jax.losses import LossConfig
    from norton_jax.models.config import ModelConfig
    from norton_jax.training.validate import validate_config

    text = (ROOT / "docs" / "hardware.md").read_text()
    presets = sorted(set(re.findall(r"configs/pretrain\.py:(\w+)", text)))
    assert len(presets) >= 4, presets
    for preset in presets:
        cfg = _load_with_flags(f"{ROOT / 'configs' / 'pretrain.py'}:{preset}", "--config.data.store=/x")
        assert cfg.preset == preset
        validate_config(cfg)
        model = ModelConfig.from_any(cfg.model)
        assert model.dtype in ("float32", "bfloat16") and model.hidden_size == 768
        assert LossConfig.from_config(cfg) == LossConfig()  # presets never change the loss
    from absl import flags

    # ml_collections reports the config file's ValueError as an absl flag error
    with pytest.raises((ValueError, flags.IllegalFlagValueError), match="unknown preset"):
        _load_with_flags(f"{ROOT / 'configs' / 'pretrain.py'}:no_such_chip")


def _tiny_step(remat: bool, loss_config=None, loss_kwargs=None, dropout: bool = True):
    import ml_collections

    from norton_jax.models.config import ModelConfig, tiny_model_config
    from norton_jax.models.dual_encoder import init_model
    from norton_jax.training.defaults import optim_config
    from norton_jax.training.step import (init_train_state, make_mesh, make_optimizer, make_train_step,
                                          shard_batch, split_model)
    import jax

    mesh = make_mesh(jax.devices()[:1])
    rng = np.random.default_rng(0)
    rows = 16
    caps = rng.integers(1000, 2000, (rows, 10)).astype(np.int32)
    caps[:, 0], caps[:, 1] = 101, 102
    batch = dict(caps=caps, cmasks=np.ones((rows, 10), bool),
                 vfeats=rng.normal(size=(rows, 6, 512)).astype(np.float32),
                 vmasks=rng.uniform(size=(rows, 6)) > 0.2)
    config = ModelConfig.from_any(tiny_model_config()).replace(
        remat=remat, num_hidden_text_layers=2, num_hidden_video_layers=1)
    if not dropout:
        config = config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    parts, trainable = split_model(init_model(config, seed=0), "layernorm_only")
    tx, _ = make_optimizer(ml_collections.ConfigDict(optim_config()), 100)
    step = make_train_step(parts, tx, mesh, loss_config=loss_config, loss_kwargs=loss_kwargs)
    state, metrics = step(init_train_state(trainable, tx, 0), shard_batch(batch, mesh))
    return jax.device_get(metrics), jax.device_get(state.trainable)


def test_remat_step_equals_plain_step():
    import jax

    from norton_jax.losses import LossConfig

    cfg = LossConfig(seq_len=8)
    plain_m, plain_p = _tiny_step(False, cfg, dropout=False)
    remat_m, remat_p = _tiny_step(True, cfg, dropout=False)
    assert remat_m["loss_total"] == pytest.approx(plain_m["loss_total"], rel=1e-6)
    assert remat_m["grad_norm"] == pytest.approx(plain_m["grad_norm"], rel=1e-5)
    for a, b in zip(jax.tree.leaves(plain_p), jax.tree.leaves(remat_p)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_step_takes_a_loss_config_and_keywords_on_top():
    from norton_jax.losses import LossConfig

    # Keywords apply on top of the config: lambda = 0.5, not the config's 0.1 (with dropout).
    m, _ = _tiny_step(False, LossConfig(seq_len=8, weight=0.1), dict(weight=0.5))
    assert m["finite"] == 1.0
    assert m["loss_total"] == pytest.approx(m["loss_clip_caption"] + 0.5 * m["loss_video_paragraph"], rel=1e-6)
