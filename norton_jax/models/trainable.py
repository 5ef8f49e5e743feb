"""Trainable-parameter selection: `layernorm_only` (Norton pretraining, spec §3.7 / T15) and `all`.

The reference freezes every parameter whose second-to-last dotted name component is not
`LayerNorm`. Our modules name those `layer_norm`, so the rule is: a leaf is trainable iff
its parent module is called `layer_norm`. At paper size this selects 39 LayerNorms
(scale + bias, 768 each) = 59,904 scalars:

* video: `videomlp.layer_norm`, `bert.embeddings.layer_norm`, 6 x (attention output, FFN output)
* text: `embeddings.layer_norm`, 12 x (attention output, FFN output)

Use with optax::

    tx = freeze_non_trainable(optax.adamw(5e-5), "layernorm_only")
    opt_state = tx.init(params)          # params: pure dict or nnx.State of nnx.Param

`freeze_non_trainable` is `optax.multi_transform` with `optax.set_to_zero()` for frozen
leaves, so frozen parameters get exactly zero updates and no optimiser slots. Do not use
`optax.masked(tx, mask)` alone to freeze: it passes the *raw gradient* through for masked
out leaves. With `nnx.Optimizer`, pass `wrt=trainable_filter(mode)` instead.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import optax
from flax import nnx

from norton_jax.models.config import ModelConfig

TrainableMode = Literal["layernorm_only", "all"]
TRAINABLE_MODES: tuple[str, ...] = ("layernorm_only", "all")
LAYER_NORM_NAME = "layer_norm"


def _check_mode(mode: str) -> None:
    if mode not in TRAINABLE_MODES:
        raise ValueError(f"trainable mode must be one of {TRAINABLE_MODES}, got {mode!r}")


def _names(path: tuple) -> list[str]:
    """Key-path entries -> names, dropping the `value` attribute of NNX Variables."""
    names = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            names.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            names.append(entry.name)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            names.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
            names.append(str(entry.key))
        else:
            names.append(str(entry))
    while names and names[-1] in ("value", "raw_value"):
        names.pop()
    return names


def is_trainable_path(path: tuple, mode: TrainableMode) -> bool:
    """Whether the parameter at `path` (a jax key path or a tuple of names) trains under `mode`."""
    _check_mode(mode)
    if mode == "all":
        return True
    names = _names(path) if path and not isinstance(path[0], (str, int)) else [str(p) for p in path]
    return len(names) >= 2 and names[-2] == LAYER_NORM_NAME


def trainable_mask(params: Any, mode: TrainableMode) -> Any:
    """Bool pytree shaped like `params` (pure dict or `nnx.State`): True = trainable.

    Usable as the `mask` of `optax.masked` (e.g. to restrict weight decay)."""
    _check_mode(mode)
    return jax.tree_util.tree_map_with_path(lambda p, _: is_trainable_path(p, mode), params)


def param_labels(params: Any, mode: TrainableMode) -> Any:
    """`"trainable"` / `"frozen"` label pytree for `optax.multi_transform`."""
    return jax.tree.map(lambda t: "trainable" if t else "frozen", trainable_mask(params, mode))


def freeze_non_trainable(tx: optax.GradientTransformation, mode: TrainableMode) -> optax.GradientTransformation:
    """`tx` on the trainable leaves, exact zero updates (and no state) on the frozen ones."""
    _check_mode(mode)
    if mode == "all":
        return tx
    return optax.multi_transform(
        {"trainable": tx, "frozen": optax.set_to_zero()},
        lambda params: param_labels(params, mode),
    )


def trainable_filter(mode: TrainableMode) -> nnx.filterlib.Filter:
    """NNX filter selecting the trainable `nnx.Param`s (for `nnx.Optimizer(..., wrt=...)`,
    `nnx.grad(..., argnums=nnx.DiffState(0, ...))`, `nnx.state(model, ...)`)."""
    _check_mode(mode)
    if mode == "all":
        return nnx.Param
    return nnx.All(nnx.Param, nnx.PathContains(LAYER_NORM_NAME))


def count_trainable(params: Any, mode: TrainableMode) -> int:
    """Number of trainable scalars in `params` (arrays or ShapeDtypeStructs)."""
    mask = trainable_mask(params, mode)
    return int(sum(leaf.size for leaf, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m))


def layernorm_only_count(config: ModelConfig) -> int:
    """Analytic count: (2 + 2 * video layers + 1 + 2 * text layers) LayerNorms x 2 x hidden."""
    config = ModelConfig.from_any(config)
    n_norms = 2 + 2 * config.num_hidden_video_layers + 1 + 2 * config.num_hidden_text_layers
    return n_norms * 2 * config.hidden_size
