"""Flax parameter paths <-> reference PyTorch state-dict keys (spec §3.8). No torch needed.

A Flax path such as `('video_encoder', 'bert', 'encoder', 'layers', 0, 'attention',
'self_attn', 'query', 'kernel')` maps to the reference key
`video_encoder.bert.encoder.layer.0.attention.self.query.weight` by renaming
`layer_norm -> LayerNorm`, `self_attn -> self`, `layers -> layer`, and the leaf
`kernel -> weight` (transposed: torch Linear weights are `[out, in]`),
`scale -> weight`, `embedding -> weight`, `bias -> bias`.

Parameter trees here are "pure dicts": nested `dict`s of arrays as returned by
`nnx.to_pure_dict(nnx.state(model, nnx.Param))` (list indices as `int` keys; `str` digits,
as orbax returns them, are accepted too).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import numpy as np

_MODULE_RENAMES = {"layer_norm": "LayerNorm", "self_attn": "self", "layers": "layer"}
_LEAF_RENAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}

#: Prefixes stripped from checkpoint keys before matching (fairseq `MMPTModel` wraps the
#: model as `mmmodel`; DataParallel adds `module.`).
STRIP_PREFIXES = ("module.", "mmmodel.")

#: Reference keys that exist in the reference state dict but not in our model
#: (buffers and the unused BERT poolers); they are ignored on import.
IGNORED_KEY_SUFFIXES = ("position_ids",)


class CheckpointKeyError(ValueError):
    """A required parameter is missing from a checkpoint, or has the wrong shape / dtype."""


def iter_paths(tree: Mapping[str, Any], prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Yields `(path, leaf)` for every leaf of a nested dict, in sorted key order."""
    for key in sorted(tree, key=lambda k: (str(type(k)), k)):
        value = tree[key]
        if isinstance(value, Mapping):
            yield from iter_paths(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def set_path(tree: dict, path: tuple, value: Any) -> None:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def flax_path_to_torch_key(path: Iterable[Any]) -> tuple[str, bool]:
    """Returns `(reference_key, transpose)` for a Flax parameter path."""
    parts = [str(p) for p in path]
    if not parts or parts[-1] not in _LEAF_RENAMES:
        raise ValueError(f"not a parameter path of the dual encoder: {'/'.join(parts)}")
    leaf = parts[-1]
    modules = [_MODULE_RENAMES.get(p, p) for p in parts[:-1]]
    return ".".join(modules + [_LEAF_RENAMES[leaf]]), leaf == "kernel"


def torch_shape(path: tuple, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    _, transpose = flax_path_to_torch_key(path)
    return tuple(reversed(flax_shape)) if transpose else tuple(flax_shape)


def normalise_key(key: str) -> str:
    """Strips `module.` / `mmmodel.` prefixes (repeatedly, in any order)."""
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                changed = True
    return key


def params_to_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Pure Flax param dict -> reference state dict (numpy, torch layouts), sorted by key."""
    out: dict[str, np.ndarray] = {}
    for path, leaf in iter_paths(params):
        key, transpose = flax_path_to_torch_key(path)
        arr = np.asarray(leaf)
        out[key] = np.ascontiguousarray(arr.T if transpose else arr)
    return dict(sorted(out.items()))


def state_dict_to_params(
    state_dict: Mapping[str, Any],
    template: Mapping[str, Any],
    *,
    source: str = "<state dict>",
    include: Iterable[str] | None = None,
) -> tuple[dict, list[str]]:
    """Reference state dict -> pure Flax param dict shaped like `template`.

    Args:
      state_dict: key -> array-like (numpy or anything `np.asarray` accepts; fp16 is cast).
        Keys may carry `mmmodel.` / `module.` prefixes.
      template: pure param dict (arrays or `jax.ShapeDtypeStruct`s) giving the expected
        paths, shapes and dtypes.
      source: a name for error messages (file path).
      include: top-level submodules to read (e.g. `("text_encoder",)`); the other template
        leaves are copied from `template`, which must then hold concrete arrays.

    Returns:
      `(params, unused_keys)`; `unused_keys` lists checkpoint keys not consumed
      (poolers, `position_ids`, classifier heads, ...).

    Raises:
      CheckpointKeyError: naming the reference key, when a required key is missing, a shape
        differs, a float parameter is stored as a non-float, or a value is not finite.
    """
    normalised: dict[str, Any] = {}
    for key, value in state_dict.items():
        nkey = normalise_key(key)
        if nkey in normalised:
            raise CheckpointKeyError(f"{source}: key {nkey!r} appears twice (with different prefixes)")
        normalised[nkey] = value
    include_set = None if include is None else set(include)
    used: set[str] = set()
    params: dict = {}
    for path, leaf in iter_paths(template):
        if include_set is not None and str(path[0]) not in include_set:
            if not isinstance(leaf, np.ndarray) and not hasattr(leaf, "__array__"):
                raise ValueError(
                    f"include={sorted(include_set)} needs a concrete template for {path}"
                )
            set_path(params, path, leaf)
            continue
        key, transpose = flax_path_to_torch_key(path)
        if key not in normalised:
            raise CheckpointKeyError(
                f"{source}: missing required parameter {key!r} (for Flax path "
                f"{'/'.join(map(str, path))})"
            )
        value = np.asarray(normalised[key])
        used.add(key)
        expected = torch_shape(path, tuple(leaf.shape))
        if tuple(value.shape) != expected:
            raise CheckpointKeyError(
                f"{source}: parameter {key!r} has shape {tuple(value.shape)}, expected {expected}"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointKeyError(
                f"{source}: parameter {key!r} has non-float dtype {value.dtype}"
            )
        if not np.all(np.isfinite(value)):
            raise CheckpointKeyError(f"{source}: parameter {key!r} holds non-finite values")
        value = value.T if transpose else value
        set_path(params, path, np.ascontiguousarray(value.astype(np.dtype(leaf.dtype))))
    unused = sorted(k for k in normalised if k not in used)
    return params, unused
