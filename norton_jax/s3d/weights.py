"""Load the PyTorch S3D-G state dict (``s3d_howto100m.pth`` key layout) into :class:`S3D`.

Key layout of the public file (``antoine77340/S3D_HowTo100M``, see ``docs/extraction.md``):
``<unit>.conv1.weight`` ``[out, in, kt, kh, kw]`` (and ``conv2`` for the temporal half of a
separable unit), ``<unit>.bn1.{weight, bias, running_mean, running_var, num_batches_tracked}``,
``<gate>.fc.{weight, bias}``, ``fc.{weight, bias}`` for the 512-d embedding; units ``conv1``,
``conv_2b``, ``conv_2c``, gate ``gating``, Inception blocks ``mixed_3b`` .. ``mixed_5c`` with
``conv_b0``, ``conv_b1_a``, ``conv_b1_b``, ``conv_b2_a``, ``conv_b2_b``, ``conv_b3_b`` and
``gating_b0`` .. ``gating_b3``.  The text tower (``text_module.*``) and ``num_batches_tracked``
are not used; a ``module.`` prefix (DataParallel) is stripped.

Convolution weights become Flax kernels ``[kt, kh, kw, in, out]``, linear weights ``[in, out]``;
BatchNorm ``weight/bias/running_mean/running_var`` become ``scale/bias/mean/var``.  A missing
key, an unknown key, a wrong shape or a non-finite value raises :class:`S3DWeightsError`
naming the file and the key.  ``.pth``/``.pt`` files are read with ``torch.load(...,
weights_only=True)`` (torch is needed only for them); ``.safetensors`` and ``.npz`` files with
numpy only.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipeline import fileio
from norton_jax.cli import UserError
from norton_jax.s3d.model import S3D

__all__ = ["S3DWeightsError", "read_state_dict", "torch_key", "build_s3d", "load_state_dict"]

IGNORED_PREFIXES = ("text_module.",)
IGNORED_SUFFIXES = (".num_batches_tracked",)
STRIP_PREFIXES = ("module.",)
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


class S3DWeightsError(UserError, ValueError):
    """An S3D weights file that does not fit the model; the message names the file and key."""


def torch_key(path: tuple) -> str:
    """The PyTorch state-dict key of an NNX variable path (``('conv1', 'bn1', 'mean')`` ->
    ``conv1.bn1.running_mean``)."""
    *modules, leaf = (str(p) for p in path)
    return ".".join([*modules, _LEAVES[leaf]])


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A state dict file as ``{key: float32 array}`` (``.pth``/``.pt``, ``.safetensors``, ``.npz``)."""
    path = os.fspath(path)
    if not fileio.isfile(path):
        raise S3DWeightsError(f"S3D weights file not found: {path} (docs/extraction.md says where the public "
                              "s3d_howto100m.pth is published)")
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix in (".pth", ".pt"):
            import torch  # noqa: PLC0415 - only needed for PyTorch files

            with fileio.open(path, "rb") as fh:
                raw = torch.load(fh, map_location="cpu", weights_only=True)
            if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
                raw = raw["state_dict"]
            if not isinstance(raw, Mapping):
                raise S3DWeightsError(f"{path}: expected a state dict (a mapping of tensors), got {type(raw).__name__}")
            out = {str(k): v.detach().float().numpy() for k, v in raw.items() if isinstance(v, torch.Tensor)}
        elif suffix == ".safetensors":
            from safetensors.numpy import load  # noqa: PLC0415

            out = {k: np.asarray(v, np.float32) for k, v in load(fileio.read_bytes(path)).items()}
        elif suffix == ".npz":
            with fileio.open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
                out = {k: np.asarray(z[k], np.float32) for k in z.files}
        else:
            raise S3DWeightsError(f"{path}: unknown weights format {suffix!r} (expected .pth, .pt, .safetensors, .npz)")
    except S3DWeightsError:
        raise
    except Exception as err:  # noqa: BLE001 - torch/numpy raise many types on damaged files
        raise S3DWeightsError(f"{path}: cannot read the S3D weights ({type(err).__name__}: {err})") from err
    stripped = {}
    for key, value in out.items():
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        stripped[key] = value
    return stripped


def _to_flax(key: str, leaf: str, value: np.ndarray, ndim: int) -> np.ndarray:
    if leaf == "kernel" and ndim == 5:  # conv [out, in, kt, kh, kw] -> [kt, kh, kw, in, out]
        return value.transpose(2, 3, 4, 1, 0) if value.ndim == 5 else value
    if leaf == "kernel" and ndim == 2:  # linear [out, in] -> [in, out]
        return value.T if value.ndim == 2 else value
    return value


def _checked_values(flat, state_dict: Mapping[str, np.ndarray], source: str) -> list[tuple[tuple, np.ndarray]]:
    """``(path, Flax-layout array)`` for every variable of ``flat``; raises on a missing, unknown,
    misshapen or non-finite entry."""
    out, used = [], set()
    for path, var in flat:
        key = torch_key(path)
        if key not in state_dict:
            raise S3DWeightsError(f"{source}: missing key {key!r} (is this the S3D-G of s3d_howto100m.pth?)")
        expected = tuple(var.get_value().shape)
        value = _to_flax(key, str(path[-1]), np.asarray(state_dict[key], np.float32), len(expected))
        if tuple(value.shape) != expected:
            raise S3DWeightsError(f"{source}: key {key!r} has shape {tuple(state_dict[key].shape)}, the model "
                                  f"expects {expected} (in Flax layout)")
        if not np.all(np.isfinite(value)):
            raise S3DWeightsError(f"{source}: key {key!r} holds NaN or inf")
        out.append((path, np.ascontiguousarray(value)))
        used.add(key)
    unknown = sorted(k for k in state_dict if k not in used and not k.startswith(IGNORED_PREFIXES)
                     and not k.endswith(IGNORED_SUFFIXES))
    if unknown:
        raise S3DWeightsError(f"{source}: {len(unknown)} key(s) the S3D-G model does not have, e.g. {unknown[:3]}")
    return out


def load_state_dict(model: S3D, state_dict: Mapping[str, np.ndarray], *, source: str = "state dict") -> S3D:
    """Writes ``state_dict`` into ``model`` (in place; also returned).  Every model variable must
    have its key; keys other than the text tower and ``num_batches_tracked`` must be used."""
    _, state = nnx.split(model)
    flat = nnx.to_flat_state(state)
    values = dict(_checked_values(flat, state_dict, source))
    for path, var in flat:
        var.set_value(jnp.asarray(values[path], var.get_value().dtype))
    nnx.update(model, nnx.from_flat_state(flat))
    return model


@functools.lru_cache(maxsize=4)
def _abstract(dtype_name: str):
    """Graph definition and abstract variables of an S3D computing in ``dtype_name`` (traced once)."""
    model = nnx.eval_shape(lambda: S3D(dtype=jnp.dtype(dtype_name).type, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    return graphdef, list(nnx.to_flat_state(state))


def build_s3d(state_dict: Mapping[str, Any], *, dtype: Any = jnp.float32, source: str = "state dict") -> S3D:
    """An :class:`S3D` (compute ``dtype``) holding ``state_dict``; parameters are never
    randomly initialised (the structure is traced abstractly once per dtype, then filled)."""
    graphdef, flat = _abstract(jnp.dtype(dtype).name)
    values = _checked_values(flat, state_dict, source)
    kinds = {path: type(var) for path, var in flat}
    state = nnx.from_flat_state([(path, kinds[path](jnp.asarray(value))) for path, value in values])
    return nnx.merge(graphdef, state)
