"""Multi-device / multi-process checks of the train step, run in subprocesses by the tests.

    python tests/train_worker.py mesh OUT.json                  # 8 simulated devices
    python tests/train_worker.py step DEVICES OUT.npz           # 1 process, DEVICES devices
    python tests/train_worker.py dist PID NPROC PORT OUT.npz    # jax.distributed worker (2 devices)
    python tests/train_worker.py failsave STEP TRAIN_FLAGS...   # the train CLI; saving STEP fails

XLA_FLAGS must be set before JAX starts, hence the subprocesses.

``failsave`` runs ``python -m norton_jax.train`` with ``TRAIN_FLAGS`` and makes the
checkpoint folder unwritable just before step ``STEP`` is saved: ``chattr +i`` when run as
root (root ignores permissions), ``chmod a-w`` otherwise; where neither is possible, the
creation of the step's folder fails with ENOSPC (a full disk).  It prints the method used
(``failsave-method: ...``) to stderr first.
"""

import json
import os
import sys

mode = sys.argv[1]
if mode == "failsave":
    import errno
    import subprocess

    fail_step = int(sys.argv[2])
    sys.argv = ["python -m norton_jax.train"] + sys.argv[3:]
    from norton_jax import train
    from norton_jax.checkpoint import Checkpointer

    original_save = Checkpointer.save

    def make_unwritable(path: str) -> str:
        if os.geteuid() != 0:
            os.chmod(path, 0o555)
            return "chmod"
        try:
            if subprocess.run(["chattr", "+i", path], capture_output=True, timeout=30).returncode == 0:
                return "chattr"
        except (OSError, subprocess.TimeoutExpired):
            pass
        from etils.epath import backend

        original_makedirs = backend._OsPathBackend.makedirs

        def full_disk(self, p, *args, **kwargs):
            if f"{fail_step}.orbax-checkpoint-tmp" in os.fspath(p):
                raise OSError(errno.ENOSPC, "No space left on device", os.fspath(p))
            return original_makedirs(self, p, *args, **kwargs)

        backend._OsPathBackend.makedirs = full_disk
        return "enospc"

    def save(self, step, **kwargs):
        if int(step) == fail_step:
            self.wait_until_finished()  # the previous step is written before the folder turns read-only
            print(f"failsave-method: {make_unwritable(self.directory)}", file=sys.stderr, flush=True)
        return original_save(self, step, **kwargs)

    Checkpointer.save = save
    train.run_absl_cli(train.main, "python -m norton_jax.train")
    raise SystemExit("unreachable")
if mode == "mesh":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
elif mode == "step":
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={int(sys.argv[2])}"
elif mode == "dist":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
from data_pipeline.tf_utils import configure_tensorflow_environment  # noqa: E402

configure_tensorflow_environment()

import jax  # noqa: E402

if mode == "dist":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, nproc, port = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from norton_jax.losses import norton_loss  # noqa: E402
from norton_jax.models.config import tiny_model_config  # noqa: E402
from norton_jax.models.dual_encoder import init_model  # noqa: E402
from norton_jax.training.step import (  # noqa: E402
    ModelParts, init_train_state, make_mesh, make_train_step, model_outputs_for_loss,
    replicate, shard_batch, split_model,
)

ROWS_PER_DEVICE = 16  # 1 video of 16 clips = 2 sequences of 8


def global_batch(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    caps = rng.integers(1000, 2000, (rows, 32)).astype(np.int32)
    caps[:, 0], caps[:, 1] = 101, 102
    cmasks = np.ones((rows, 32), bool)
    cmasks[:, 20:] = False
    vmasks = rng.uniform(size=(rows, 16)) > 0.3
    vmasks[:, 0] = True
    return dict(caps=caps, cmasks=cmasks, vfeats=rng.normal(size=(rows, 16, 512)).astype(np.float32), vmasks=vmasks)


def one_step(devices, negatives: str, local_rows: slice | None = None, global_rows: int | None = None):
    cfg = tiny_model_config()
    cfg.hidden_dropout_prob = 0.0
    cfg.attention_probs_dropout_prob = 0.0
    model = init_model(cfg, seed=0)
    parts, trainable = split_model(model, "all")
    mesh = make_mesh(devices)
    tx = optax.sgd(0.1)  # scale-sensitive, unlike Adam's first step
    parts = ModelParts(parts.graphdef, replicate(parts.frozen, mesh), replicate(parts.rest, mesh))
    state = replicate(init_train_state(trainable, tx, 0), mesh)
    step = make_train_step(parts, tx, mesh, loss_kwargs=dict(seq_len=8), negatives=negatives)
    batch = global_batch(global_rows or ROWS_PER_DEVICE * mesh.devices.size)
    if local_rows is not None:
        batch = {k: v[local_rows] for k, v in batch.items()}
    state, metrics = step(state, shard_batch(batch, mesh))
    params = {jax.tree_util.keystr(p): np.asarray(v.addressable_data(0))
              for p, v in jax.tree_util.tree_leaves_with_path(state.trainable)}
    return {k: float(v) for k, v in metrics.items()}, params


if mode == "mesh":
    out = {}
    one, p_one = one_step(jax.devices()[:1], "global", global_rows=ROWS_PER_DEVICE * 8)
    glob, p_glob = one_step(jax.devices(), "global")
    loc, _ = one_step(jax.devices(), "local")
    # Per-shard reference losses with the initial parameters.
    cfg = tiny_model_config()
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    model = init_model(cfg, seed=0)
    batch = global_batch(ROWS_PER_DEVICE * 8)
    feats = model_outputs_for_loss(model(batch["caps"], batch["cmasks"], batch["vfeats"], batch["vmasks"],
                                         deterministic=True))
    shards = [float(norton_loss(*[x[i * 16:(i + 1) * 16] for x in feats], seq_len=8)[0]) for i in range(8)]
    full = float(norton_loss(*feats, seq_len=8)[0])
    out = {
        "one_device": one, "global": glob, "local": loc,
        "mean_shard_loss": float(np.mean(shards)), "full_batch_loss": full,
        "max_param_diff_global_vs_one": max(float(np.abs(p_one[k] - p_glob[k]).max()) for k in p_one),
    }
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)
elif mode == "step":
    metrics, params = one_step(jax.devices(), "global")
    np.savez(sys.argv[3], loss=metrics["loss_total"], grad_norm=metrics["grad_norm"], **params)
elif mode == "dist":
    rows = ROWS_PER_DEVICE * jax.local_device_count()
    metrics, params = one_step(jax.devices(), "global", local_rows=slice(pid * rows, (pid + 1) * rows))
    if pid == 0:
        np.savez(sys.argv[5], loss=metrics["loss_total"], grad_norm=metrics["grad_norm"], **params)
    jax.distributed.shutdown()
