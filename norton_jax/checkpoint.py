"""Training checkpoints with `orbax.checkpoint.CheckpointManager`.

One checkpoint step holds four orbax items:

| item | content | handler |
|---|---|---|
| `params` | model parameters (pytree / `nnx.State`) | StandardSave |
| `opt_state` | optimiser state (optax state, `nnx.state(optimizer)`), optional | StandardSave |
| `rng` | RNG state (a key, a pytree of keys, `nnx.state(model, nnx.RngState)`), optional | StandardSave |
| `meta` | `{"step", "model_config", "items", "extra"}` | JsonSave |

Orbax provides the guarantees we rely on: saves are written to
`<step>.orbax-checkpoint-tmp-<timestamp>` and renamed to `<step>` only once complete, so an
interrupted save is never listed nor restored; `max_to_keep` keeps the last N;
`save_interval_steps` saves every K steps (`force=True` overrides).

Restoring onto a different device count / mesh: pass templates whose leaves are
`jax.ShapeDtypeStruct`s (or arrays) carrying the *target* sharding, e.g. from
`nnx.eval_shape` plus `jax.sharding.NamedSharding`; orbax reads and reshards accordingly.
Without a `params` template, parameters are restored from the checkpoint's own metadata
onto `jax.devices()[0]` (or the `sharding` given).

Typed PRNG keys are stored as their raw key data and re-wrapped with the template's
implementation on restore. `nnx.State` values are stored as pure dicts and restored into a
copy of the template State.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from norton_jax.models.config import ModelConfig

__all__ = ["Checkpointer", "Restored", "abstract_like", "checkpoint_root"]

_STATE_ITEMS = ("params", "opt_state", "rng")


class Restored(NamedTuple):
    """What `Checkpointer.restore` returns (`opt_state` / `rng` are None when not requested;
    `extra` is the JSON dict given to `save(extra=...)`, or None)."""

    step: int
    params: Any
    opt_state: Any
    rng: Any
    extra: dict[str, Any] | None = None


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


_LEAF_KEY = "__leaf__"  # orbax's StandardSave needs a container: a bare array is wrapped


def _is_bare_leaf(tree: Any) -> bool:
    return not isinstance(tree, nnx.State) and jax.tree_util.treedef_is_leaf(jax.tree.structure(tree))


def _to_savable(tree: Any) -> Any:
    """nnx.State -> pure dict; typed PRNG keys -> raw uint32 key data; bare leaf -> dict."""
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    tree = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)
    return {_LEAF_KEY: tree} if _is_bare_leaf(tree) else tree


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


def _abstract_savable(template: Any, sharding: jax.sharding.Sharding | None) -> Any:
    """Template (maybe nnx.State, maybe typed keys) -> abstract tree in the saved format."""
    if isinstance(template, nnx.State):
        template = nnx.to_pure_dict(template)
    abstract = abstract_like(template, sharding)

    def one(x: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
        if not _is_key(x):
            return x
        data = jax.eval_shape(jax.random.key_data, x)
        return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=x.sharding)

    abstract = jax.tree.map(one, abstract)
    return {_LEAF_KEY: abstract} if _is_bare_leaf(abstract) else abstract


def _from_saved(restored: Any, template: Any) -> Any:
    """Inverse of `_to_savable` guided by the template."""
    pure_template = nnx.to_pure_dict(template) if isinstance(template, nnx.State) else template
    if _is_bare_leaf(pure_template):
        restored = restored[_LEAF_KEY]

    def one(t: Any, r: Any) -> Any:
        if _is_key(t):
            impl = jax.random.key_impl(t) if isinstance(t, jax.Array) else None
            return jax.random.wrap_key_data(r, impl=impl) if impl is not None else jax.random.wrap_key_data(r)
        return r

    out = jax.tree.map(one, pure_template, restored)
    if isinstance(template, nnx.State):
        state = jax.tree.map(lambda x: x, template)  # fresh Variables, template untouched
        nnx.replace_by_pure_dict(state, out)
        return state
    return out


def checkpoint_root(path: str | os.PathLike) -> str:
    """The orbax checkpoint folder for ``path``: a training workdir (one holding
    ``checkpoints/``, as ``norton_jax.train`` writes) maps to that subfolder."""
    path = os.fspath(path)
    sub = os.path.join(path, "checkpoints")
    return sub if os.path.isdir(sub) else path


class Checkpointer:
    """Saves / restores (params, opt_state, step, rng) with an orbax `CheckpointManager`.

    Args:
      directory: checkpoint root (created if missing); steps live in `directory/<step>`.
      max_to_keep: keep the last N finalised checkpoints (None = all).
      save_interval_steps: `save` only writes when `step % K == 0` (unless `force=True`).
      model_config: geometry stored with every checkpoint (read back by `model_config()`,
        used by `norton_jax.export_torch`).
      enable_async: write in a background thread (call `wait_until_finished()` / `close()`).

    Example::

        with Checkpointer("ckpt", max_to_keep=3, save_interval_steps=1000,
                          model_config=model.config) as ckpt:
            ckpt.save(step, params=nnx.state(model, nnx.Param), opt_state=opt_state,
                      rng=nnx.state(model, nnx.RngState))
            ...
            r = ckpt.restore(params=abstract_params, opt_state=abstract_opt_state,
                             rng=nnx.state(model, nnx.RngState))
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        save_interval_steps: int = 1,
        model_config: ModelConfig | Any | None = None,
        enable_async: bool = True,
    ):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
        if save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
        self.directory = os.path.abspath(os.fspath(directory))
        self._model_config = None if model_config is None else ModelConfig.from_any(model_config).to_dict()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            create=True,
            enable_async_checkpointing=enable_async,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                **{name: ocp.StandardCheckpointHandler() for name in _STATE_ITEMS},
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    # -- bookkeeping -------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Finalised steps, ascending (unfinished `*.orbax-checkpoint-tmp-*` dirs excluded)."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _resolve_step(self, step: int | None) -> int:
        self.manager.reload()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no finalised checkpoint in {self.directory}")
            return steps[-1]
        if step not in steps:
            raise FileNotFoundError(
                f"no finalised checkpoint for step {step} in {self.directory}; available: {steps}"
            )
        return step

    def model_config(self, step: int | None = None) -> dict[str, Any] | None:
        """The model geometry stored with `step` (latest by default), or None."""
        step = self._resolve_step(step)
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        return meta.get("model_config")

    # -- save / restore ------------------------------------------------------------------
    def save(
        self,
        step: int,
        *,
        params: Any,
        opt_state: Any = None,
        rng: Any = None,
        extra: dict[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves a checkpoint for `step`; returns whether one was written (interval policy).

        `extra` is a small JSON-serialisable dict stored with the step (e.g. the input
        pipeline position); it comes back as `Restored.extra`.
        """
        step = int(step)
        items: dict[str, Any] = {"params": ocp.args.StandardSave(_to_savable(params))}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(_to_savable(opt_state))
        if rng is not None:
            items["rng"] = ocp.args.StandardSave(_to_savable(rng))
        meta = {"step": step, "model_config": self._model_config, "items": sorted(items), "extra": extra}
        items["meta"] = ocp.args.JsonSave(meta)
        return bool(self.manager.save(step, args=ocp.args.Composite(**items), force=force))

    def restore(
        self,
        step: int | None = None,
        *,
        params: Any = None,
        opt_state: Any = None,
        rng: Any = None,
        sharding: jax.sharding.Sharding | None = None,
    ) -> Restored:
        """Restores `step` (default: latest finalised).

        `params`, `opt_state`, `rng` are templates (arrays, `jax.ShapeDtypeStruct`s or
        `nnx.State`s; their shardings are the restore targets). `opt_state` / `rng` are
        restored only when a template is given. Without a `params` template the saved
        structure is restored onto `sharding` (default: first device), with string keys.
        """
        step = self._resolve_step(step)
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        saved_items = set(meta.get("items", _STATE_ITEMS))
        args: dict[str, Any] = {}
        templates = {"params": params, "opt_state": opt_state, "rng": rng}
        for name, template in templates.items():
            if name != "params" and template is None:
                continue
            if name not in saved_items:
                raise ValueError(f"checkpoint {self.directory}/{step} has no '{name}' item (saved: {sorted(saved_items)})")
            if template is None:
                metadata = self.manager.item_metadata(step)[name]
                tree = getattr(metadata, "tree", metadata)
                abstract = jax.tree.map(
                    lambda m: jax.ShapeDtypeStruct(
                        m.shape, m.dtype,
                        sharding=sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                    ),
                    tree,
                )
            else:
                abstract = _abstract_savable(template, sharding)
            args[name] = ocp.args.StandardRestore(abstract)
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        out = {}
        for name, template in templates.items():
            if name not in args:
                out[name] = None
            elif template is None:
                out[name] = restored[name]
            else:
                out[name] = _from_saved(restored[name], template)
        return Restored(step=int(meta.get("step", step)), extra=meta.get("extra"), **out)
