"""Export Flax dual-encoder parameters to a PyTorch state dict (`.safetensors`, spec §3.8).

The file holds exactly the reference keys our model covers, float32, torch layouts
(Linear weight = kernel^T):

    video_encoder.videomlp.{linear1,LayerNorm,linear2}.{weight,bias}
    video_encoder.bert.embeddings.{word,position,token_type}_embeddings.weight
    video_encoder.bert.embeddings.LayerNorm.{weight,bias}
    video_encoder.bert.encoder.layer.{i}.attention.self.{query,key,value}.{weight,bias}
    video_encoder.bert.encoder.layer.{i}.attention.output.{dense,LayerNorm}.{weight,bias}
    video_encoder.bert.encoder.layer.{i}.{intermediate,output}.dense.{weight,bias}
    video_encoder.bert.encoder.layer.{i}.output.LayerNorm.{weight,bias}
    text_encoder.<same BERT keys>
    video_encoder.classifier.{weight,bias}   (COIN fine-tuned models, `model.num_labels > 0`, spec §3.6)

Not written: the unused BERT poolers (our model has none) and, unless
`include_position_ids=True`, the `position_ids` buffers. Consequences:

* `norton_jax.torch_reference.TorchDualEncoder` loads the file with `strict=True` (a COIN
  export's two classifier keys are its only unexpected keys: `strict=False`);
* HuggingFace `BertModel(config, add_pooling_layer=False)` loads the `text_encoder.*` keys
  (prefix stripped) with `strict=True`;
* the reference `MMFusionSeparate` loads it the way fairseq loads checkpoints
  (`strict=False`); its only missing keys are the two poolers (and `position_ids` unless
  included), which its forward does not use.

The model geometry is stored as JSON in the safetensors metadata
(`norton_jax_model_config`), so `torch_reference.load_torch_dual_encoder(file)` and
`import_torch.build_pretrained(file)` need no config.

The authors' layout (``--out m.pt``, :func:`save_fairseq_pt`): the fairseq checkpoint their
scripts restore, ``{"model": {"mmmodel.<key>": tensor}}`` (spec §3.8) with exactly the keys
of the reference ``MMFusionSeparate`` (``tests/fixtures/reference_encoders/checkpoint.pt``
for its geometry): the keys above, the int64 ``position_ids`` buffers and the two BERT
poolers, which our model has not and the reference forward never uses (written as zeros so
that strict key matching loads the file).  It is a plain dict of tensors, loadable with
``torch.load(..., weights_only=True)``; ``norton_jax.import_torch`` reads it back bit for
bit (give the geometry with ``--config``: the fairseq layout has no place for it).

Command line::

    python -m norton_jax.export_torch --checkpoint CKPT_DIR --out model.safetensors [--step N|best]
    python -m norton_jax.export_torch --checkpoint CKPT_DIR --out checkpoint_best.pt   # fairseq

It prints the step it exported (the latest unless ``--step`` is given) and the folder.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np
from flax import nnx

from norton_jax.inference.checkpoints import parse_step_arg
from norton_jax.models.config import ModelConfig, load_config_file
from norton_jax.models.dual_encoder import DualEncoder
from norton_jax.models.keys import params_to_state_dict

METADATA_CONFIG_KEY = "norton_jax_model_config"

FAIRSEQ_PREFIX = "mmmodel."
#: BERT poolers of the reference encoders (unused by its forward; zeros in our .pt exports).
POOLER_KEYS = ("video_encoder.bert.pooler.dense", "text_encoder.pooler.dense")

__all__ = ["export_state_dict", "fairseq_state_dict", "save_safetensors", "save_fairseq_pt",
           "save_export", "export_checkpoint", "main"]


def export_state_dict(
    params: DualEncoder | nnx.State | dict,
    *,
    include_position_ids: bool = False,
    max_position_embeddings: int | None = None,
) -> dict[str, np.ndarray]:
    """Model / `nnx.State` / pure param dict -> reference state dict (float32 numpy)."""
    if isinstance(params, DualEncoder):
        max_position_embeddings = params.config.max_position_embeddings
        params = nnx.state(params, nnx.Param)
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    state = {k: np.array(v, dtype=np.float32) for k, v in params_to_state_dict(params).items()}  # writable copies
    if include_position_ids:
        n = max_position_embeddings
        if n is None:
            n = state["text_encoder.embeddings.position_embeddings.weight"].shape[0]
        ids = np.arange(n, dtype=np.int64)[None]
        state["video_encoder.bert.embeddings.position_ids"] = ids
        state["text_encoder.embeddings.position_ids"] = ids.copy()
    return dict(sorted(state.items()))


def save_safetensors(
    state_dict: dict[str, np.ndarray],
    path: str | os.PathLike,
    model_config: ModelConfig | Any | None = None,
) -> None:
    """Writes `state_dict` with `safetensors.numpy` (torch not needed), config in metadata."""
    from safetensors.numpy import save_file  # noqa: PLC0415

    metadata = {"format": "pt"}
    if model_config is not None:
        metadata[METADATA_CONFIG_KEY] = json.dumps(ModelConfig.from_any(model_config).to_dict(), sort_keys=True)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"  # a crash mid-write leaves no truncated file under the final name
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fairseq_state_dict(state_dict: dict[str, np.ndarray], model_config: ModelConfig | Any) -> dict[str, np.ndarray]:
    """Our export -> the reference model's full state dict, keys prefixed ``mmmodel.``.

    Adds the ``position_ids`` buffers (if missing) and zero poolers ``[H, H]`` / ``[H]``.
    """
    config = ModelConfig.from_any(model_config)
    state = dict(state_dict)
    ids = np.arange(config.max_position_embeddings, dtype=np.int64)[None]
    state.setdefault("video_encoder.bert.embeddings.position_ids", ids)
    state.setdefault("text_encoder.embeddings.position_ids", ids.copy())
    h = config.hidden_size
    for prefix in POOLER_KEYS:
        state.setdefault(f"{prefix}.weight", np.zeros((h, h), np.float32))
        state.setdefault(f"{prefix}.bias", np.zeros((h,), np.float32))
    return {FAIRSEQ_PREFIX + k: state[k] for k in sorted(state)}


def save_fairseq_pt(
    state_dict: dict[str, np.ndarray],
    path: str | os.PathLike,
    model_config: ModelConfig | Any,
) -> None:
    """Writes ``{"model": fairseq_state_dict(...)}`` with ``torch.save`` (atomically)."""
    import torch  # noqa: PLC0415

    model = {k: torch.from_numpy(np.ascontiguousarray(v).copy())
             for k, v in fairseq_state_dict(state_dict, model_config).items()}
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        torch.save({"model": model}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_export(state_dict: dict[str, np.ndarray], path: str | os.PathLike, model_config: ModelConfig | Any) -> None:
    """By suffix: ``.pt`` -> :func:`save_fairseq_pt`, anything else -> :func:`save_safetensors`."""
    if os.fspath(path).endswith(".pt"):
        save_fairseq_pt(state_dict, path, model_config)
    else:
        save_safetensors(state_dict, path, model_config)


def export_checkpoint(
    checkpoint_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    step: int | str | None = None,
    config: ModelConfig | Any | None = None,
    include_position_ids: bool = False,
) -> dict[str, np.ndarray]:
    """Orbax checkpoint (see `norton_jax.checkpoint`) -> `.safetensors` (or, for an ``out``
    ending in ``.pt``, the fairseq layout of :func:`save_fairseq_pt`); returns the state dict.

    Only the `params` item is read, onto the first local device. `config` is needed only
    when the checkpoint does not store its model config.
    """
    return _export(checkpoint_dir, out, step=step, config=config,
                   include_position_ids=include_position_ids)[0]


def _export(
    checkpoint_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    step: int | str | None,
    config: ModelConfig | Any | None,
    include_position_ids: bool,
) -> tuple[dict[str, np.ndarray], int, str, int]:
    """:func:`export_checkpoint` that also returns the step it read, the orbax folder and the
    number of tensors written."""
    from norton_jax.checkpoint import Checkpointer, checkpoint_root  # noqa: PLC0415

    checkpoint_dir = checkpoint_root(checkpoint_dir)  # a training workdir -> its checkpoints/
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"checkpoint directory not found: {os.fspath(checkpoint_dir)}")
    with Checkpointer(checkpoint_dir, max_to_keep=None, enable_async=False) as ckpt:
        restored = ckpt.restore(step)
        stored = ckpt.model_config(restored.step)
    if config is None:
        if stored is None:
            raise ValueError(
                f"{checkpoint_dir}: the checkpoint stores no model config; give the config file with "
                "--config CONFIG (from Python: config=)"
            )
        config = stored
    config = ModelConfig.from_any(config)
    state = export_state_dict(
        restored.params,
        include_position_ids=include_position_ids,
        max_position_embeddings=config.max_position_embeddings,
    )
    _check_against_config(state, config, os.fspath(checkpoint_dir))
    save_export(state, out, config)
    written = len(fairseq_state_dict(state, config)) if os.fspath(out).endswith(".pt") else len(state)
    return state, int(restored.step), os.fspath(checkpoint_dir), written


def _check_against_config(state: dict[str, np.ndarray], config: ModelConfig, source: str) -> None:
    """The exported keys and shapes must be exactly those of a model built from `config`."""
    from norton_jax.models.dual_encoder import abstract_model  # noqa: PLC0415
    from norton_jax.models.keys import iter_paths, flax_path_to_torch_key, torch_shape  # noqa: PLC0415

    template = nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))
    expected = {flax_path_to_torch_key(p)[0]: torch_shape(p, tuple(l.shape)) for p, l in iter_paths(template)}
    got = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("position_ids")}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        raise ValueError(f"{source}: parameters do not match the model config: missing {missing[:5]}, extra {extra[:5]}")
    for key, shape in expected.items():
        if got[key] != shape:
            raise ValueError(f"{source}: parameter {key!r} has shape {got[key]}, config expects {shape}")


def main(argv: list[str] | None = None) -> int:
    from norton_jax import cli  # noqa: PLC0415
    from norton_jax.evaluate.run import check_writable  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="python -m norton_jax.export_torch",
        description="Export a norton-jax orbax checkpoint to a PyTorch .safetensors state dict "
                    "or the authors' fairseq .pt checkpoint.",
        epilog="Prints the step and the checkpoint folder it exported.  A mistake (missing or damaged "
               "checkpoint, unknown --step, unwritable --out) prints one 'error:' line and exits with status 2.",
    )
    parser.add_argument("--checkpoint", required=True,
                        help="training workdir or its orbax checkpoints/ folder (norton_jax.checkpoint)")
    parser.add_argument("--out", required=True,
                        help="output file: .safetensors, or .pt for the authors' fairseq layout "
                             "{'model': {'mmmodel.<key>': tensor}}")
    parser.add_argument("--step", type=parse_step_arg, default=None,
                        help="step to export: an integer, 'latest' (default) or 'best'")
    parser.add_argument("--config", default=None, help="config file, only if the checkpoint has no model config")
    parser.add_argument("--include-position-ids", action="store_true", help="also write the position_ids buffers")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    if not args.out.endswith((".safetensors", ".pt")):
        parser.error(f"--out must end with .safetensors (or .pt for the fairseq layout), got {args.out}")
    check_writable(args.out, "--out")
    config = load_config_file(args.config).model if args.config else None
    state, step, root, written = _export(
        args.checkpoint, args.out, step=args.step, config=config,
        include_position_ids=args.include_position_ids,
    )
    n = sum(int(v.size) for k, v in state.items() if not k.endswith("position_ids"))
    print(f"exported step {step} of {root}")
    print(f"wrote {args.out}: {written} tensors, {n:,} parameters")
    return 0


if __name__ == "__main__":
    import sys

    from norton_jax import cli

    sys.exit(cli.run(main, prog="python -m norton_jax.export_torch"))
