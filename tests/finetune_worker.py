"""Fine-tuning train steps on simulated CPU devices, run in a subprocess by the tests.

    python tests/finetune_worker.py DEVICES OUT.npz

XLA_FLAGS must be set before JAX starts, hence the subprocess.  For each task (msrvtt,
msrvtt_qa, coin) and each ``train.negatives`` mode (global, local) it runs 2 steps of the
fine-tuning train step (SGD) on the same fixed global batch of 16 rows (dropout off, so devices
differ only in how the batch is split) and saves the losses and the final parameters as
``<task>/<negatives>/loss`` and ``<task>/<negatives>/param<i>``.
"""

import os
import sys

devices, out_path = int(sys.argv[1]), sys.argv[2]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
from data_pipeline.tf_utils import configure_tensorflow_environment  # noqa: E402

configure_tensorflow_environment()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from norton_jax.finetune.losses import make_loss_fn  # noqa: E402
from norton_jax.inference import Layout, text_inputs, video_inputs  # noqa: E402
from norton_jax.models import ModelConfig, init_model  # noqa: E402
from norton_jax.training.step import (  # noqa: E402
    init_train_state, make_mesh, make_train_step, replicate, shard_batch, split_model,
)

assert jax.device_count() == devices, jax.devices()
B, LV, LABELS = 16, 8, 5
rng = np.random.default_rng(0)
words = ["red", "blue", "ball", "car", "runs", "falls", "green", "dog", "jumps", "cup"]
texts = [" ".join(rng.choice(words, size=int(rng.integers(2, 7)))) for _ in range(B)]
caps, cmasks = text_inputs(texts, Layout(LV, 24))
segments = [rng.standard_normal((int(rng.integers(1, LV + 1)), 512)).astype(np.float32) for _ in range(B)]
_, _, vfeats, vmasks = video_inputs(segments, LV)
retrieval = {"caps": caps, "cmasks": cmasks, "vfeats": vfeats, "vmasks": vmasks}
vcaps, vcmasks, _, _ = video_inputs(segments, LV, mask_cls=True)
targets = np.where(vmasks, rng.integers(0, LABELS, size=vmasks.shape), -100).astype(np.int32)
coin = {"caps": vcaps, "cmasks": vcmasks, "vfeats": vfeats, "vmasks": vmasks, "targets": targets}

mesh = make_mesh()
tx = optax.sgd(0.5)  # plain SGD: the parameters show the gradient itself (Adam's first step is ~sign(g))
results = {}
for task in ("msrvtt", "msrvtt_qa", "coin"):
    cfg = ModelConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32, num_hidden_video_layers=1,
                      num_hidden_text_layers=1, vocab_size=30522, max_position_embeddings=64,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                      num_labels=LABELS if task == "coin" else 0)
    batch = coin if task == "coin" else retrieval
    for negatives in ("global", "local"):
        parts, trainable = split_model(init_model(cfg, seed=0), "all")
        state = replicate(init_train_state(trainable, tx, 0), mesh)
        parts = parts._replace(frozen=replicate(parts.frozen, mesh), rest=replicate(parts.rest, mesh))
        step = make_train_step(parts, tx, mesh, loss_fn=make_loss_fn(task, negatives))
        losses = []
        for _ in range(2):
            state, metrics = step(state, shard_batch(batch, mesh, tuple(batch)))
            losses.append(float(metrics["loss_total"]))
        results[f"{task}/{negatives}/loss"] = np.asarray(losses)
        for i, leaf in enumerate(jax.tree.leaves(state.trainable)):
            results[f"{task}/{negatives}/param{i}"] = np.asarray(jax.device_get(leaf))
np.savez(out_path, **results)
print(f"ok {devices} devices")
