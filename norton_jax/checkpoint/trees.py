"""Pytree conversions between what training holds and what orbax stores, and the parameter
checksum (:func:`params_digest`) recorded with every checkpoint step.

Typed PRNG keys are stored as their raw key data and re-wrapped with the template's
implementation on restore; ``nnx.State`` values are stored as pure dicts and restored
into a copy of the template State; a bare array is wrapped in a one-entry dict.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["abstract_like", "abstract_savable", "from_saved", "params_digest", "to_savable"]


def is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


LEAF_KEY = "__leaf__"  # orbax's StandardSave needs a container: a bare array is wrapped


def is_bare_leaf(tree: Any) -> bool:
    return not isinstance(tree, nnx.State) and jax.tree_util.treedef_is_leaf(jax.tree.structure(tree))


def to_savable(tree: Any) -> Any:
    """nnx.State -> pure dict; typed PRNG keys -> raw uint32 key data; bare leaf -> dict."""
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    tree = jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)
    return {LEAF_KEY: tree} if is_bare_leaf(tree) else tree


def abstract_like(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """Template pytree -> `jax.ShapeDtypeStruct`s keeping each leaf's sharding.

    Leaves without a sharding (numpy arrays, ShapeDtypeStructs without one) get `sharding`,
    default `SingleDeviceSharding(jax.devices()[0])`."""
    default = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def one(x: Any) -> jax.ShapeDtypeStruct:
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding or default)
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        arr = np.asarray(x)
        return jax.ShapeDtypeStruct(arr.shape, arr.dtype, sharding=default)

    return jax.tree.map(one, tree)


def abstract_savable(template: Any, sharding: jax.sharding.Sharding | None) -> Any:
    """Template (maybe nnx.State, maybe typed keys) -> abstract tree in the saved format."""
    if isinstance(template, nnx.State):
        template = nnx.to_pure_dict(template)
    abstract = abstract_like(template, sharding)

    def one(x: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
        if not is_key(x):
            return x
        data = jax.eval_shape(jax.random.key_data, x)
        return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=x.sharding)

    abstract = jax.tree.map(one, abstract)
    return {LEAF_KEY: abstract} if is_bare_leaf(abstract) else abstract


def from_saved(restored: Any, template: Any) -> Any:
    """Inverse of `to_savable` guided by the template."""
    pure_template = nnx.to_pure_dict(template) if isinstance(template, nnx.State) else template
    if is_bare_leaf(pure_template):
        restored = restored[LEAF_KEY]

    def one(t: Any, r: Any) -> Any:
        if is_key(t):
            impl = jax.random.key_impl(t) if isinstance(t, jax.Array) else None
            return jax.random.wrap_key_data(r, impl=impl) if impl is not None else jax.random.wrap_key_data(r)
        return r

    out = jax.tree.map(one, pure_template, restored)
    if isinstance(template, nnx.State):
        state = jax.tree.map(lambda x: x, template)  # fresh Variables, template untouched
        nnx.replace_by_pure_dict(state, out)
        return state
    return out



def path_name(path: tuple) -> str:
    """``(DictKey('a'), SequenceKey(0))`` -> ``"a/0"``: the same for int and str dict keys."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def host_array(x: Any) -> np.ndarray | None:
    """The value of a leaf on the host, or None when this process does not hold all of it."""
    if isinstance(x, jax.Array):
        if x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return None
    return np.asarray(x)


def params_digest(tree: Any) -> dict[str, Any] | None:
    """A SHA-256 over the leaves of ``tree`` plus each leaf's shape and dtype.

    Leaves are visited in the order of their path names (``"video_encoder/.../kernel"``),
    so a tree restored with string keys gives the same digest as the integer-keyed tree
    that was saved.  Returns None when some leaf is not fully held by this process (an
    array sharded over several hosts): such a tree is saved without a checksum.
    """
    entries = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = host_array(leaf)
        if arr is None:
            return None
        entries.append((path_name(path), np.ascontiguousarray(arr)))
    entries.sort(key=lambda e: e[0])
    h = hashlib.sha256()
    leaves = {}
    for name, arr in entries:
        leaves[name] = [list(arr.shape), str(arr.dtype)]
        h.update(f"{name}\0{arr.dtype}\0{arr.shape}\0".encode())
        h.update(arr.reshape(-1).view(np.uint8).data if arr.size else b"")
    return {"algorithm": "sha256", "hexdigest": h.hexdigest(), "leaves": leaves}

