"""Prints, as JSON, how closely norton_jax reproduces the reference loss fixtures.

    python benchmarks/reference_parity.py [--fixtures tests/fixtures/reference_losses]

For every fixture and for float64 and float32: relative error of the three losses and
relative error (norm of difference / norm of reference) of the gradient w.r.t. each of
the four float inputs.
"""

import argparse
import json
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from norton_jax.losses import norton_loss  # noqa: E402

INPUTS = ["pooled_video", "pooled_text", "video_tokens", "text_tokens"]


def measure(path: pathlib.Path, dtype) -> dict:
    d = np.load(path)
    h = json.loads(str(d["hparams"]))
    kwargs = dict(
        weight=h["weight"], beta=h["beta"], seq_len=h["seq"], prompt_ratio=h["ratio"],
        epsilon=h["scale"], alpha=h["alpha"], fusion_weight=h["fw"], num_iters=h["iters"],
        logit_scale=float(d["logit_scale"]),
    )
    args = [jnp.asarray(d[k], dtype) for k in INPUTS]
    masks = (jnp.asarray(d["video_mask"]), jnp.asarray(d["text_mask"]))
    fn = jax.jit(jax.value_and_grad(lambda *a: norton_loss(*a, *masks, **kwargs), argnums=(0, 1, 2, 3), has_aux=True))
    (total, metrics), grads = fn(*args)

    def rel(a, b):
        return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))

    out = {
        "loss_total": rel(total, d["loss_total"]),
        "loss_clip_caption": rel(metrics["loss_clip_caption"], d["loss_clip_caption"]),
        "loss_video_paragraph": rel(metrics["loss_video_paragraph"], d["loss_video_paragraph"]),
    }
    out.update({f"grad_{k}": rel(g, d[f"grad_{k}"]) for k, g in zip(INPUTS, grads)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference_losses"
    parser.add_argument("--fixtures", type=pathlib.Path, default=default)
    args = parser.parse_args()
    report = {"device": str(jax.devices()[0]), "jax": jax.__version__, "python": platform.python_version(),
              "relative_error": {}}
    for path in sorted(args.fixtures.glob("*.npz")):
        report["relative_error"][path.stem] = {
            "float64": measure(path, jnp.float64),
            "float32": measure(path, jnp.float32),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
