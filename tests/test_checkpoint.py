"""Orbax checkpoints: exact round trip, resumed training, retention, atomicity, resharding."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from norton_jax.checkpoint import Checkpointer, CheckpointSaveError
from norton_jax.models import (
    DualEncoder,
    ModelConfig,
    abstract_model,
    freeze_non_trainable,
    init_model,
    tiny_model_config,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
CFG = ModelConfig.from_any(tiny_model_config()).replace(num_hidden_text_layers=1, num_hidden_video_layers=1)


def _batch(seed: int):
    rng = np.random.default_rng(seed)
    b, lv, lc = 4, 3, 6
    caps = np.concatenate(
        [np.tile([[101, 102]], (b, 1)), rng.integers(103, 3000, (b, lc - 3)), np.full((b, 1), 102)], 1
    ).astype(np.int32)
    cmasks = np.ones((b, lc), bool)
    vfeats = rng.normal(size=(b, lv, 512)).astype(np.float32)
    vmasks = np.ones((b, lv), bool)
    vmasks[1, 2:] = False
    return caps, cmasks, vfeats, vmasks


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    for x, y in zip(la, lb):
        if jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        if not np.array_equal(np.asarray(x), np.asarray(y)):
            return False
    return True


class _Trainer:
    """A minimal functional training loop (dropout on, layernorm_only AdamW)."""

    def __init__(self):
        # rbg keys: much cheaper to compile than threefry on CPU, and they exercise the
        # checkpointing of a non-default PRNG implementation
        model = DualEncoder(CFG, rngs=nnx.Rngs(params=0, dropout=jax.random.key(1, impl="rbg")))
        model.train()
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.params = nnx.to_pure_dict(params)
        self.rest = rest
        self.param_state = params
        self.tx = freeze_non_trainable(optax.adamw(1e-2, weight_decay=0.01), "layernorm_only")
        self.opt_state = self.tx.init(self.params)

        def step(params, opt_state, rest, batch):
            def loss_fn(p):
                state = jax.tree.map(lambda x: x, self.param_state)
                nnx.replace_by_pure_dict(state, p)
                model = nnx.merge(self.graphdef, state, jax.tree.map(lambda x: x, rest))
                out = model(*batch)
                logits = out["pooled_video"] @ out["pooled_text"].T
                labels = jnp.arange(logits.shape[0])
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                return loss, nnx.state(model, nnx.RngState)

            (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, new_rest, loss

        self._step = jax.jit(step)

    def rng(self):
        return nnx.state(nnx.merge(self.graphdef, self.param_state, self.rest), nnx.RngState)

    def step(self, seed: int):
        rng_state = self.rng()
        self.params, self.opt_state, new_rng, loss = self._step(self.params, self.opt_state, rng_state, _batch(seed))
        model = nnx.merge(self.graphdef, self.param_state, self.rest)
        nnx.update(model, new_rng)
        _, _, self.rest = nnx.split(model, nnx.Param, ...)
        return float(loss)


@pytest.fixture(scope="module")
def trainer():
    return _Trainer()


def test_roundtrip_and_resume_exact(tmp_path, trainer):
    t = trainer
    for s in range(2):
        t.step(s)
    with Checkpointer(tmp_path / "ckpt", max_to_keep=2, model_config=CFG, enable_async=True) as ckpt:
        assert ckpt.save(2, params=t.params, opt_state=t.opt_state, rng=t.rng(), extra={"data": {"epoch": 1, "pos": 17}})
        ckpt.wait_until_finished()
        saved = jax.tree.map(lambda x: x, (t.params, t.opt_state, t.rng()))  # snapshot (fresh Variables)
        loss_a = t.step(2)
        after_a = t.params

        # Restore into abstract templates (nothing allocated for the model) and resume.
        abstract_params = nnx.to_pure_dict(nnx.state(abstract_model(CFG), nnx.Param))
        abstract_opt = jax.eval_shape(lambda: t.opt_state)
        fresh = DualEncoder(CFG, rngs=nnx.Rngs(params=0, dropout=jax.random.key(123, impl="rbg")))
        r = ckpt.restore(params=abstract_params, opt_state=abstract_opt, rng=nnx.state(fresh, nnx.RngState))
    assert r.step == 2 and r.extra == {"data": {"epoch": 1, "pos": 17}}
    assert _leaves_equal(r.params, saved[0])
    assert _leaves_equal(r.opt_state, saved[1])
    assert type(r.opt_state) is type(saved[1])
    assert _leaves_equal(r.rng, saved[2])
    assert int(r.opt_state.inner_states["trainable"].inner_state[0].count) == 2

    t.params, t.opt_state = r.params, r.opt_state
    model = nnx.merge(t.graphdef, t.param_state, t.rest)
    nnx.update(model, r.rng)
    _, _, t.rest = nnx.split(model, nnx.Param, ...)
    loss_b = t.step(2)
    assert loss_a == loss_b
    assert _leaves_equal(t.params, after_a)
    # without the RNG restore, dropout masks would differ: the check above is meaningful
    assert not _leaves_equal(nnx.state(fresh, nnx.RngState), saved[2])


def test_interval_and_retention(tmp_path):
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    with Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2, enable_async=False) as ckpt:
        written = [ckpt.save(s, params=jax.tree.map(lambda x: x + s, params)) for s in range(7)]
        assert written == [True, False, True, False, True, False, True]
        assert ckpt.all_steps() == [4, 6]
        assert ckpt.save(7, params=params, force=True)
        assert ckpt.all_steps() == [6, 7]
        r = ckpt.restore(6, params=params)
        np.testing.assert_array_equal(np.asarray(r.params["w"]), np.arange(6.0).reshape(2, 3) + 6)
        with pytest.raises(FileNotFoundError, match="step 4"):
            ckpt.restore(4, params=params)
    assert sorted(os.listdir(tmp_path)) == ["6", "7"]


def test_unfinalised_checkpoint_is_not_restored(tmp_path, monkeypatch):
    """A save interrupted before orbax's final rename leaves only a tmp dir, never restored."""
    from orbax.checkpoint._src.path import atomicity

    good = {"w": jnp.ones((3,)), "k": jax.random.key(0)}
    with Checkpointer(tmp_path, max_to_keep=5, enable_async=False) as ckpt:
        ckpt.save(1, params={"w": good["w"]}, rng=good["k"])

    async def crash(self):
        raise RuntimeError("simulated crash before finalisation")

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", crash)
    # The failure comes back as one CheckpointSaveError naming the step, with orbax's reason.
    with pytest.raises(CheckpointSaveError, match="could not save checkpoint step 2 .*simulated crash"):
        with Checkpointer(tmp_path, max_to_keep=5, enable_async=False) as ckpt:
            ckpt.save(2, params={"w": good["w"] * 5}, rng=jax.random.key(9))
    monkeypatch.undo()
    leftovers = sorted(os.listdir(tmp_path))
    assert "1" in leftovers and "2" not in leftovers
    assert any(name.startswith("2.orbax-checkpoint-tmp") for name in leftovers), leftovers

    with Checkpointer(tmp_path, max_to_keep=5, enable_async=False) as ckpt:
        assert ckpt.all_steps() == [1] and ckpt.latest_step() == 1
        r = ckpt.restore(params={"w": good["w"]}, rng=jax.random.key(3))
        assert r.step == 1
        np.testing.assert_array_equal(np.asarray(r.params["w"]), np.ones(3))
        assert np.array_equal(jax.random.key_data(r.rng), jax.random.key_data(good["k"]))
        with pytest.raises(FileNotFoundError, match="step 2"):
            ckpt.restore(2, params={"w": good["w"]})


_RESHARD_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from flax import nnx
    from norton_jax.checkpoint import Checkpointer
    from norton_jax.models import ModelConfig, abstract_model
    src, dst, cfg_json = sys.argv[1], sys.argv[2], sys.argv[3]
    import json
    cfg = ModelConfig.from_any(json.loads(cfg_json))
    assert jax.device_count() == 4
    mesh = Mesh(np.array(jax.devices()), ("data",))
    def shard(x):
        spec = P("data") if x.ndim >= 1 and x.shape[0] % 4 == 0 else P()
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))
    abstract = jax.tree.map(shard, nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param)))
    with Checkpointer(src, enable_async=False) as ckpt:
        r = ckpt.restore(params=abstract)
    n_sharded = 0
    for leaf in jax.tree.leaves(r.params):
        assert len(leaf.sharding.device_set) == 4
        n_sharded += leaf.sharding.spec == P("data")
    assert n_sharded > 0
    ref = np.load(os.path.join(src, "..", "expected.npz"))
    for path, leaf in jax.tree_util.tree_leaves_with_path(r.params):
        np.testing.assert_array_equal(np.asarray(leaf), ref[jax.tree_util.keystr(path)])
    with Checkpointer(dst, enable_async=False, model_config=cfg) as ckpt:
        ckpt.save(r.step + 1, params=r.params, force=True)
    print("OK", n_sharded)
    """
)


def test_restore_onto_other_device_count(tmp_path):
    """1 device -> 4-device mesh (sharded targets) -> back to 1 device, bit-exact."""
    import json

    params = nnx.to_pure_dict(nnx.state(init_model(CFG, seed=5), nnx.Param))
    src, dst = tmp_path / "src", tmp_path / "dst"
    with Checkpointer(src, enable_async=False, model_config=CFG) as ckpt:
        ckpt.save(10, params=params)
    flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(tmp_path / "expected.npz", **flat)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", _RESHARD_SCRIPT, str(src), str(dst), json.dumps(CFG.to_dict())],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("OK")
    with Checkpointer(dst, enable_async=False) as ckpt:
        r = ckpt.restore(params=jax.eval_shape(lambda: params))  # 4-device save -> 1 device
        assert ckpt.model_config()["hidden_size"] == CFG.hidden_size
    assert r.step == 11
    assert _leaves_equal(r.params, params)
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(r.params))


def test_restore_without_template_and_errors(tmp_path):
    params = nnx.to_pure_dict(nnx.state(init_model(CFG, seed=1), nnx.Param))
    with Checkpointer(tmp_path, enable_async=False) as ckpt:
        with pytest.raises(FileNotFoundError, match="no finalised checkpoint"):
            ckpt.restore()
        ckpt.save(3, params=params)
        r = ckpt.restore()  # structure from the checkpoint metadata, string keys
        assert r.opt_state is None and r.rng is None and ckpt.model_config() is None
        a = r.params["video_encoder"]["bert"]["encoder"]["layers"]["0"]["output"]["dense"]["kernel"]
        np.testing.assert_array_equal(
            np.asarray(a), np.asarray(params["video_encoder"]["bert"]["encoder"]["layers"][0]["output"]["dense"]["kernel"])
        )
        with pytest.raises(ValueError, match="no 'opt_state' item"):
            ckpt.restore(params=params, opt_state={"x": jnp.zeros(1)})
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=0)
