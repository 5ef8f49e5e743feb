"""Config checks run before any expensive work (corpus build, model init, compilation).

:func:`validate_config` (pre-training, :mod:`norton_jax.train`) and
:func:`norton_jax.finetune.config.validate_finetune_config` (fine-tuning, built on the
:class:`ConfigChecker` and the section checks here) look at every numeric and
enumerated field the loops use and raise **one** :class:`~norton_jax.cli.ConfigError`
listing every bad value, each as ``config.<field>=<value>: <allowed range>``.  The ranges
are those the code needs: a value that passes here does not fail later in the loss, the
optimiser schedule, the data pipeline or the loop arithmetic.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

from norton_jax.cli import ConfigError

__all__ = ["ConfigChecker", "check_loop_safety", "validate_config"]

#: Clips sampled per video by the pre-training pipeline (``data_pipeline.sampling``).
CLIPS_PER_VIDEO = 16
TRAINABLE_MODES = ("layernorm_only", "all")
NEGATIVES = ("local", "global")
CLIP_SIMILARITY_KINDS = ("lse", "max", "mean")
FINE_GRAINED = ("reference", "paper")
SEQUENCE_DISTANCES = ("ot", "soft_dtw")
ON_NON_FINITE = ("stop", "skip")
_MISSING = object()


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


class ConfigChecker:
    """Collects the problems of one config; :meth:`raise_if_any` raises them together."""

    def __init__(self, config: Any):
        self.config = config
        self.problems: list[str] = []

    def get(self, dotted: str, default: Any = _MISSING) -> Any:
        """``config.<dotted>``; a missing field is a problem unless ``default`` is given."""
        node = self.config
        for part in dotted.split("."):
            try:
                node = node[part]
            except (KeyError, TypeError, AttributeError):
                if default is _MISSING:
                    self.problems.append(f"config.{dotted} is missing")
                return default
        return node

    def bad(self, dotted: str, value: Any, allowed: str) -> None:
        self.problems.append(f"config.{dotted}={value!r} (must be {allowed})")

    def integer(self, dotted: str, *, minimum: int | None = None, default: Any = _MISSING) -> int | None:
        value = self.get(dotted, default)
        if value is _MISSING:
            return None
        allowed = "an integer" if minimum is None else f"an integer >= {minimum}"
        if not _is_int(value) or (minimum is not None and value < minimum):
            self.bad(dotted, value, allowed)
            return None
        return int(value)

    def real(self, dotted: str, *, low: float | None = None, high: float | None = None,
             low_open: bool = False, high_open: bool = False, default: Any = _MISSING,
             none_ok: bool = False) -> float | None:
        value = self.get(dotted, default)
        if value is _MISSING or (value is None and none_ok):
            return None
        ok = _is_real(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            if low is not None and high is not None:
                allowed = f"a finite number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            elif low is not None:
                allowed = f"a finite number {'>' if low_open else '>='} {low:g}"
            elif high is not None:
                allowed = f"a finite number {'<' if high_open else '<='} {high:g}"
            else:
                allowed = "a finite number"
            if none_ok:
                allowed += " or None"
            self.bad(dotted, value, allowed)
            return None
        return float(value)

    def choice(self, dotted: str, choices: Iterable[str], *, default: Any = _MISSING) -> str | None:
        choices = tuple(choices)
        value = self.get(dotted, default)
        if value is _MISSING:
            return None
        if value not in choices:
            self.bad(dotted, value, "one of " + ", ".join(repr(c) for c in choices))
            return None
        return value

    def raise_if_any(self, what: str = "config") -> None:
        if self.problems:
            n = len(self.problems)
            raise ConfigError(f"{n} invalid {what} value{'s' if n > 1 else ''}: " + "; ".join(self.problems))


def check_loop_safety(c: ConfigChecker) -> None:
    """``train.on_non_finite`` ("stop" | "skip") and ``train.max_skipped`` (>= 0)."""
    c.choice("train.on_non_finite", ON_NON_FINITE, default="stop")
    c.integer("train.max_skipped", minimum=0, default=0)


def check_model(c: ConfigChecker) -> None:
    from norton_jax.models.config import ModelConfig  # noqa: PLC0415

    model = c.get("model")
    if model is _MISSING:
        return
    try:
        ModelConfig.from_any(model)
    except (TypeError, ValueError) as err:
        c.problems.append(str(err).replace("model config: ", "config.model."))


def check_optim(c: ConfigChecker) -> None:
    c.real("optim.lr", low=0.0, low_open=True)
    c.real("optim.end_lr", low=0.0)
    c.integer("optim.warmup_steps", minimum=0)
    total = c.get("optim.total_steps", None)
    if total is not None and (not _is_int(total) or total < 1):
        c.bad("optim.total_steps", total, "an integer >= 1, or None for the run's step count")
    c.real("optim.b1", low=0.0, high=1.0, high_open=True)
    c.real("optim.b2", low=0.0, high=1.0, high_open=True)
    c.real("optim.eps", low=0.0, low_open=True)
    c.real("optim.clip_norm", low=0.0, low_open=True)


def _check_loss(c: ConfigChecker, rows_per_device: int | None) -> None:
    weight = c.real("loss.weight", low=0.0)
    c.real("loss.beta", low=0.0, high=1.0)
    seq_len = c.integer("loss.seq_len", minimum=1)
    if seq_len is not None and CLIPS_PER_VIDEO % seq_len:
        divisors = [d for d in range(1, CLIPS_PER_VIDEO + 1) if CLIPS_PER_VIDEO % d == 0]
        c.bad("loss.seq_len", seq_len, f"a divisor of the {CLIPS_PER_VIDEO} clips per video: "
              + ", ".join(map(str, divisors)))
    ratio = c.real("loss.prompt_ratio", low=0.0, high=1.0, low_open=True, none_ok=True)
    distance = c.choice("loss.sequence_distance", SEQUENCE_DISTANCES, default="ot")
    if ratio is not None and rows_per_device and weight and distance == "ot" and int(ratio * rows_per_device) < 1:
        c.bad("loss.prompt_ratio", ratio, f">= 1/{rows_per_device} (it selects no clip of the "
              f"{rows_per_device} per device)")
    if distance == "soft_dtw" and c.get("loss.prompt_ratio", None) is not None:
        c.bad("loss.prompt_ratio", c.get("loss.prompt_ratio"), "None with loss.sequence_distance='soft_dtw'")
    c.real("loss.epsilon", low=0.0, low_open=True)
    c.real("loss.alpha", low=0.0, low_open=True)
    c.real("loss.fusion_weight", low=0.0, high=1.0)
    c.integer("loss.num_iters", minimum=1)
    c.choice("loss.clip_similarity_kind", CLIP_SIMILARITY_KINDS)
    c.choice("loss.fine_grained", FINE_GRAINED)
    c.integer("loss.chunk_size", minimum=1)


def validate_config(config: Any) -> None:
    """Checks a pre-training config (``configs/tiny.py``, ``configs/pretrain.py``, ...).

    Raises one :class:`~norton_jax.cli.ConfigError` naming every bad field, its value and
    the allowed range; returns None when the config is usable.
    """
    c = ConfigChecker(config)
    check_model(c)
    c.integer("train.steps", minimum=1)
    c.integer("train.seed", minimum=0)
    c.choice("train.trainable", TRAINABLE_MODES)
    c.choice("train.negatives", NEGATIVES)
    c.integer("train.log_every", minimum=1)
    c.integer("train.checkpoint_every", minimum=1)
    c.integer("train.keep_checkpoints", minimum=1)
    c.integer("train.stop_after_steps", minimum=0, default=0)
    check_loop_safety(c)
    eval_every = c.integer("train.eval_every", minimum=0, default=0)
    if eval_every:
        c.integer("train.eval_batches", minimum=1, default=4)
        val_split = c.get("data.val_split", "val")
        if not isinstance(val_split, str) or not val_split or val_split == c.get("data.split", "train"):
            c.bad("data.val_split", val_split, "a held-out split name other than config.data.split, such as 'val'")
    if c.get("train.hard_negatives.enabled", False):
        c.integer("train.hard_negatives.num_lists", minimum=1)
        c.integer("train.hard_negatives.num_candidates", minimum=1)
        c.integer("train.hard_negatives.videos_per_call", minimum=1, default=8)
    check_optim(c)
    store = c.get("data.store")
    if store is not _MISSING and (not isinstance(store, str) or not store.strip()):
        c.bad("data.store", store, "the feature-store folder (--config.data.store=DIR)")
    split = c.get("data.split")
    if split is not _MISSING and (not isinstance(split, str) or not split):
        c.bad("data.split", split, "a split name such as 'train'")
    videos = c.integer("data.videos_per_device", minimum=1)
    c.integer("data.seed", minimum=0)
    calls = c.get("data.num_parallel_calls", -1)
    if not _is_int(calls) or (calls < 1 and calls != -1):
        c.bad("data.num_parallel_calls", calls, "-1 (automatic) or an integer >= 1")
    workers = c.get("data.num_workers", None)
    if workers is not None and (not _is_int(workers) or workers < 0):
        c.bad("data.num_workers", workers, "an integer >= 0, or None for one per core")
    _check_loss(c, None if videos is None else videos * CLIPS_PER_VIDEO)
    c.raise_if_any()
