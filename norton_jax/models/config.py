"""Model geometry: ml-collections factories and the frozen `ModelConfig` the modules hold.

The experiment configs (`configs/pretrain.py`, `configs/tiny.py`) put one of these
ConfigDicts under their `model` field. The modules convert it to the hashable, validated
`ModelConfig` dataclass (NNX keeps it as static graph metadata).

Field names follow the reference / HuggingFace BERT config (spec §3.1):

| field | paper | meaning |
|---|---|---|
| hidden_size | 768 | D, width of both encoders |
| num_attention_heads | 12 | heads (head dim = D / heads) |
| intermediate_size | 3072 | FFN width |
| num_hidden_video_layers | 6 | video encoder depth |
| num_hidden_text_layers | 12 | text encoder depth |
| vocab_size | 30522 | bert-base-uncased vocabulary (both encoders own a table) |
| max_position_embeddings | 512 | position table size |
| type_vocab_size | 2 | token-type table size |
| video_input_dim | 512 | S3D feature size |
| hidden_dropout_prob | 0.1 | dropout after embeddings / attention output / FFN output |
| attention_probs_dropout_prob | 0.1 | dropout on attention probabilities |
| layer_norm_eps | 1e-12 | BERT LayerNorms |
| videomlp_layer_norm_eps | 1e-5 | LayerNorm inside the video token MLP |
| attention_mask_value | -10000.0 | additive key-padding mask value |
| dtype | "float32" | compute (activation) dtype; "bfloat16" for mixed precision |
| param_dtype | "float32" | parameter dtype |
| num_labels | 0 | COIN fine-tuning head `video_encoder.classifier` (spec §3.6): 779; 0 = none |
| remat | False | recompute each encoder layer's activations in the backward pass (`nnx.remat`): less memory, ~1/3 more encoder FLOPs; same numbers |

`dtype` is the encoders' matmul dtype: the default float32 runs every encoder matmul at the
platform's default precision (TF32 on recent NVIDIA GPUs, one bfloat16 pass on TPUs, float32
on CPUs); "bfloat16" stores activations in bfloat16 with float32 accumulation. The loss's
own matmuls follow `config.loss.matmul_precision` (docs/hardware.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
import ml_collections

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Validated, hashable geometry of the Norton dual encoder (see module docstring)."""

    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    num_hidden_video_layers: int = 6
    num_hidden_text_layers: int = 12
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    video_input_dim: int = 512
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    videomlp_layer_norm_eps: float = 1e-5
    attention_mask_value: float = -10000.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    num_labels: int = 0
    remat: bool = False

    def __post_init__(self) -> None:
        positive = (
            "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size",
            "max_position_embeddings", "type_vocab_size", "video_input_dim",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"model config: {name} must be a positive int, got {value!r}")
        for name in ("num_hidden_video_layers", "num_hidden_text_layers", "num_labels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"model config: {name} must be an int >= 0, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model config: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"model config: {name} must be in [0, 1), got {value!r}")
        if not isinstance(self.remat, bool):
            raise ValueError(f"model config: remat must be True or False, got {self.remat!r}")
        for name in ("dtype", "param_dtype"):
            value = getattr(self, name)
            if value not in _DTYPES:
                raise ValueError(
                    f"model config: {name} must be one of {sorted(_DTYPES)}, got {value!r}"
                )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def compute_dtype(self) -> Any:
        return _DTYPES[self.dtype]

    @property
    def params_dtype(self) -> Any:
        return _DTYPES[self.param_dtype]

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_config_dict(self) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(self.to_dict())

    @classmethod
    def from_any(cls, config: "ModelConfig | ml_collections.ConfigDict | Mapping[str, Any]") -> "ModelConfig":
        """Builds a ModelConfig from a ModelConfig, a ConfigDict or a plain mapping.

        Unknown keys raise a ValueError naming them (a typo must not silently fall back
        to a default).
        """
        if isinstance(config, cls):
            return config
        if isinstance(config, ml_collections.ConfigDict):
            values = config.to_dict()
        elif isinstance(config, Mapping):
            values = dict(config)
        else:
            raise TypeError(f"cannot build a ModelConfig from {type(config).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"model config: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def paper_model_config() -> ml_collections.ConfigDict:
    """Paper / reference geometry: two bert-base-uncased encoders, 6 video and 12 text layers."""
    return ModelConfig().to_config_dict()


def tiny_model_config() -> ml_collections.ConfigDict:
    """Tiny geometry for CPU tests and demos (hidden 32, 2 heads, 2 video / 3 text layers).

    The vocabulary stays at 30522 so that real bert-base-uncased token ids are valid, and
    128 positions cover every input length of spec §3.2 (at most 79 text tokens).
    """
    return ModelConfig(
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        num_hidden_video_layers=2,
        num_hidden_text_layers=3,
        vocab_size=30522,
        max_position_embeddings=128,
    ).to_config_dict()


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Loads a big_vision-style config file (`configs/*.py` defining `get_config()`).

    `path` may carry an argument after a colon (`configs/pretrain.py:arg`), passed to
    `get_config(arg)` as with `ml_collections.config_flags`.
    """
    import importlib.util  # noqa: PLC0415
    import os  # noqa: PLC0415

    arg = None
    if ":" in path and not os.path.exists(path):
        path, arg = path.split(":", 1)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_norton_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path}: no get_config() function")
    config = module.get_config(arg) if arg is not None else module.get_config()
    if "model" not in config:
        raise ValueError(f"{path}: get_config() has no 'model' field")
    return config
