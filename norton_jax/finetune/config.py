"""Config sections of the fine-tuning runs (``configs/finetune_*.py``; spec §5.5-5.7).

Reference values (``vtt_ft.yaml``, ``vttqa_ft.yaml``, ``coin_ft.yaml``): Adam (0.9, 0.98,
1e-8), lr 5e-5, 122 warm-up updates, gradient clip 2.0, all parameters trained (spec
§3.7: the fine-tuning configs do not set ``layernorm_only``).  The decay horizon is not
given in §5.5-5.7; we keep the pre-training one (fairseq ``total_num_update`` 1,000,000,
spec §4.6), i.e. a nearly constant learning rate after warm-up.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from norton_jax.models.config import paper_model_config, tiny_model_config
from norton_jax.training import defaults


def optim_config() -> ConfigDict:
    """Adam, lr 5e-5, 122 warm-up steps, then the fairseq polynomial decay, clip 2.0."""
    optim = defaults.optim_config()
    optim.lr = 5e-5
    optim.warmup_steps = 122
    return optim


def train_config(*, epochs: int, batch_size: int = 0, videos_per_device: int = 1) -> ConfigDict:
    return ConfigDict(
        dict(
            epochs=epochs,
            steps=0,  # > 0 overrides epochs x steps-per-epoch
            batch_size=batch_size,  # global batch of video-caption pairs (MSR-VTT tasks)
            videos_per_device=videos_per_device,  # COIN: whole videos per device per step
            seed=0,
            trainable="all",  # fine-tuning trains every parameter (spec §3.7)
            init_checkpoint="",  # --init: pre-trained Norton .pt / .safetensors / orbax dir
            log_every=10,
            checkpoint_every=0,  # steps; 0 = at the end of every epoch
            keep_checkpoints=2,
            progress=True,
            stop_after_steps=0,  # > 0: stop (and save) after this many steps of this run
            distributed=False,  # call jax.distributed.initialize()
        )
    )


def msrvtt_data_config(*, train_list: str, max_video_len: int) -> ConfigDict:
    """MSR-VTT training files (relative to --data) and the ``DSAligner`` layout (spec §3.2)."""
    return ConfigDict(
        dict(
            dir="",  # --data
            train_list=train_list,
            captions="MSRVTT_data.json",
            features="msrvtt_feature_fps30_512",
            dup=20,  # each epoch repeats the list 20x, one random caption per item
            max_video_len=max_video_len,
            max_len=96,
            seed=0,
            missing="drop",  # videos without features: "drop" (reported) | "error"
        )
    )


def eval_config(test_file: str, **overrides) -> ConfigDict:
    config = ConfigDict(
        dict(
            test_file=test_file,  # relative to --data
            at_start=False,  # evaluate the starting checkpoint too
            at_end=True,
            every_steps=0,
            batch_size=64,
            max_videos=0,  # > 0: only the first N test items (quick checks)
            stride=16,  # COIN test windows
        )
    )
    config.update(overrides)
    return config


def tiny_overrides(config: ConfigDict) -> ConfigDict:
    """CPU variant: tiny model, more lr (the tiny init is random), evaluation at start and end."""
    num_labels = config.model.num_labels
    config.model = tiny_model_config()
    config.model.num_labels = num_labels
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 10
    config.optim.total_steps = None  # decay to 0 at the last step
    config.train.log_every = 5
    config.train.checkpoint_every = 0
    config.eval.at_start = True
    return config


def paper_model(num_labels: int = 0) -> ConfigDict:
    model = paper_model_config()
    model.num_labels = num_labels
    return model
