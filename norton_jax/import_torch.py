"""Import a VideoCLIP / Norton reference checkpoint (PyTorch) into the Flax dual encoder.

Accepted files:

* fairseq / MMPT `.pt` checkpoints: a dict whose `model` (or `state_dict`) entry is the
  state dict, keys prefixed `mmmodel.` (spec §3.8); fp16 / bf16 / fp32 tensors (cast to
  the parameter dtype); extra keys (`position_ids`, poolers, a COIN classifier, optimiser
  state, `args` / `cfg`) are tolerated. A bare state dict works too. Reading `.pt` needs
  torch; it is loaded with `weights_only=True` (`argparse.Namespace`, which fairseq stores
  under `args`, is allowlisted). A checkpoint holding other pickled objects (e.g. an
  omegaconf `cfg`) is refused unless `trust_pickle=True` (CLI of this module:
  `--trust-pickle`; other commands read such a file once it is converted here), because
  full unpickling can run arbitrary code: only use it on files you trust.
* `.safetensors` files (e.g. written by `norton_jax.export_torch`): read with
  `safetensors.numpy`, no torch needed.

A missing required key, a shape mismatch or a non-finite value raises
`CheckpointKeyError` naming the key.

Command line (start Norton from VideoCLIP: writes an orbax checkpoint at step 0)::

    python -m norton_jax.import_torch --checkpoint runs/retri/videoclip/checkpoint_best.pt \
        --config configs/pretrain.py --out checkpoints/videoclip_init
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, Iterable, Mapping

import numpy as np
from flax import nnx

from norton_jax.models.config import ModelConfig
from norton_jax.models.dual_encoder import DualEncoder, abstract_model
from norton_jax.models.keys import CheckpointKeyError, state_dict_to_params

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointKeyError",
    "UntrustedPickleError",
    "read_state_dict",
    "load_state_dict_into_model",
    "load_pretrained",
    "build_pretrained",
    "import_to_checkpoint",
    "main",
]

METADATA_CONFIG_KEY = "norton_jax_model_config"


def _torch_to_numpy(value: Any) -> Any:
    import torch  # noqa: PLC0415  (torch is optional; only .pt reading needs it)

    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.is_floating_point():
            t = t.to(torch.float32)  # fp16 -> fp32 is exact; numpy has no bf16
        return t.numpy()
    return value


def _load_pt(path: str, trust_pickle: bool) -> Any:
    import argparse as _argparse  # noqa: PLC0415

    import torch  # noqa: PLC0415

    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals([_argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle.UnpicklingError with the offending global
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise UntrustedPickleError(path, str(err).splitlines()[0]) from err
        raise


class UntrustedPickleError(ValueError):
    """A ``.pt`` file holds pickled objects that safe (``weights_only``) loading refuses.

    The message tells how to go on with a trusted file from any command: convert it once
    with ``python -m norton_jax.import_torch ... --trust-pickle`` (the only command with
    that flag) and use the converted checkpoint; from Python, ``trust_pickle=True``.
    """

    def __init__(self, path: str, detail: str):
        self.path, self.detail = path, detail
        super().__init__(
            f"{path}: safe loading (torch.load weights_only=True) refused a pickled object in the "
            f"checkpoint ({detail}). Loading it fully could run code stored in the file. If you trust "
            f"it, convert it once with `python -m norton_jax.import_torch --checkpoint {path} "
            "--config CONFIG --out DIR --trust-pickle` and use DIR instead (from Python: trust_pickle=True)."
        )


def read_state_dict(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads a checkpoint file into `(state_dict, metadata)` with numpy values.

    Floating tensors from `.pt` files come back as float32 numpy arrays. `metadata` is the
    safetensors header metadata (empty for `.pt`).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import safe_open  # noqa: PLC0415
        from safetensors.numpy import load_file  # noqa: PLC0415

        with safe_open(path, framework="numpy") as f:
            metadata = dict(f.metadata() or {})
        return dict(load_file(path)), metadata
    obj = _load_pt(path, trust_pickle)
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict or a dict with 'model'/'state_dict', got {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        value = _torch_to_numpy(value)
        if isinstance(value, np.ndarray):
            state[str(key)] = value
    return state, {}


def load_state_dict_into_model(
    model: DualEncoder,
    state_dict: Mapping[str, Any],
    *,
    source: str = "<state dict>",
    include: Iterable[str] | None = None,
) -> list[str]:
    """Copies a reference state dict into `model` in place; returns the unused keys.

    `include=("text_encoder",)` loads only that submodule (e.g. from a HuggingFace
    `BertModel` state dict whose keys were prefixed with `text_encoder.`).
    """
    state = nnx.state(model, nnx.Param)
    template = nnx.to_pure_dict(state)
    params, unused = state_dict_to_params(state_dict, template, source=source, include=include)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    if unused:
        log.info("%s: %d unused keys (e.g. %s)", source, len(unused), unused[:3])
    return unused


_GEOMETRY_FIELDS = (
    "hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_video_layers",
    "num_hidden_text_layers", "vocab_size", "max_position_embeddings", "type_vocab_size",
    "video_input_dim",
)


def load_pretrained(
    model: DualEncoder,
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
) -> list[str]:
    """Loads pretrained weights into `model` in place; returns the unused checkpoint keys.

    `path` is a reference `.pt` (VideoCLIP / Norton), a `.safetensors` export, or an orbax
    checkpoint directory written by `norton_jax.checkpoint.Checkpointer` (latest step,
    params only). When the file carries a model config (safetensors export, orbax
    checkpoint) its geometry must equal `model.config` (this catches e.g. a different head
    count, which shapes alone cannot reveal).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        from norton_jax.checkpoint import Checkpointer, checkpoint_root  # noqa: PLC0415

        path = checkpoint_root(path)

        with Checkpointer(path, max_to_keep=None, enable_async=False) as ckpt:
            stored = ckpt.model_config()
            _check_geometry(stored, model.config, path)
            restored = ckpt.restore(params=nnx.state(model, nnx.Param))
        nnx.update(model, restored.params)
        return []
    state_dict, metadata = read_state_dict(path, trust_pickle=trust_pickle)
    if METADATA_CONFIG_KEY in metadata:
        _check_geometry(json.loads(metadata[METADATA_CONFIG_KEY]), model.config, path)
    return load_state_dict_into_model(model, state_dict, source=path)


def _check_geometry(stored: Mapping[str, Any] | None, config: ModelConfig, source: str) -> None:
    if not stored:
        return
    diffs = {k: (stored.get(k), getattr(config, k)) for k in _GEOMETRY_FIELDS if k in stored and stored[k] != getattr(config, k)}
    if diffs:
        detail = ", ".join(f"{k}: file {a} vs model {b}" for k, (a, b) in diffs.items())
        raise ValueError(f"{source}: model geometry differs from the checkpoint's ({detail})")


def build_pretrained(
    path: str | os.PathLike,
    config: ModelConfig | Any | None = None,
    *,
    seed: int = 0,
    trust_pickle: bool = False,
) -> DualEncoder:
    """Builds a DualEncoder and fills it from a `.pt`, `.safetensors` or orbax checkpoint.

    `config` (ModelConfig / ConfigDict / mapping) gives the geometry; when omitted it is read
    from the safetensors metadata / orbax checkpoint written by norton-jax. The dropout
    stream is seeded with `seed + 1`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        from norton_jax.checkpoint import checkpoint_root  # noqa: PLC0415

        path = checkpoint_root(path)
    if config is None:
        if os.path.isdir(path):
            from norton_jax.checkpoint import Checkpointer  # noqa: PLC0415

            with Checkpointer(path, max_to_keep=None, enable_async=False) as ckpt:
                config = ckpt.model_config()
        elif path.endswith(".safetensors"):
            _, metadata = read_state_dict(path)
            if METADATA_CONFIG_KEY in metadata:
                config = json.loads(metadata[METADATA_CONFIG_KEY])
        if config is None:
            raise ValueError(
                f"{path}: no model config given and none stored with the checkpoint; give the config file "
                "with --config CONFIG (from Python: config=)"
            )
    model = DualEncoder(ModelConfig.from_any(config), rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    load_pretrained(model, path, trust_pickle=trust_pickle)
    return model


def import_to_checkpoint(
    path: str | os.PathLike,
    config: Any,
    out_dir: str | os.PathLike,
    *,
    trust_pickle: bool = False,
) -> list[str]:
    """Converts a reference checkpoint into an orbax checkpoint (step 0, params only).

    Returns the unused checkpoint keys. Parameters are converted on the host without
    materialising a randomly initialised model.
    """
    from norton_jax.checkpoint import Checkpointer  # noqa: PLC0415

    config = ModelConfig.from_any(config)
    state_dict, _ = read_state_dict(path, trust_pickle=trust_pickle)
    template = nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))
    params, unused = state_dict_to_params(state_dict, template, source=os.fspath(path))
    with Checkpointer(out_dir, max_to_keep=None, model_config=config, enable_async=False) as ckpt:
        ckpt.save(0, params=params, force=True)
    return unused


def main(argv: list[str] | None = None) -> int:
    from norton_jax import cli  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="python -m norton_jax.import_torch",
        description="Convert a VideoCLIP / Norton PyTorch checkpoint into an orbax checkpoint.",
        epilog="A mistake (missing or unreadable file, wrong geometry, refused pickle) prints one "
               "'error:' line and exits with status 2 (--debug: traceback).",
    )
    parser.add_argument("--checkpoint", required=True, help=".pt (fairseq) or .safetensors file")
    parser.add_argument("--config", required=True, help="config file with get_config().model, e.g. configs/pretrain.py")
    parser.add_argument("--out", required=True, help="orbax checkpoint directory to create")
    parser.add_argument("--trust-pickle", action="store_true", help="allow full unpickling (trusted files only)")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    from norton_jax.models.config import load_config_file  # noqa: PLC0415

    config = load_config_file(args.config).model
    try:
        unused = import_to_checkpoint(args.checkpoint, config, args.out, trust_pickle=args.trust_pickle)
    except UntrustedPickleError as err:
        raise cli.UserError(
            f"{err.path}: safe loading refused a pickled object in the checkpoint ({err.detail}); "
            "loading it fully could run code stored in the file: if you trust it, rerun with --trust-pickle"
        ) from err
    print(f"wrote {args.out} (step 0, params); ignored {len(unused)} checkpoint keys: {unused}")
    return 0


if __name__ == "__main__":
    import sys

    from norton_jax import cli

    sys.exit(cli.run(main, prog="python -m norton_jax.import_torch"))
