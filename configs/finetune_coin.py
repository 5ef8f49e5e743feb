"""COIN action segmentation fine-tuning (spec §3.6, §5.7, ``coin_ft.yaml``).

    python -m norton_jax.finetune --config configs/finetune_coin.py \\
        --init NORTON_CHECKPOINT --data DATA_DIR --workdir WORKDIR
    python -m norton_jax.finetune --config configs/finetune_coin.py:tiny ...   # CPU

Reference: the ``training`` videos of ``COIN.json``; the video encoder gets
``classifier: Linear(768, 779)`` (778 step ids + background 0) on the frame positions;
each step is one whole video per device, cut into 32-frame windows with stride 8
([CLS] masked); per-frame cross-entropy ignoring padded frames (-100); lr 5e-5, 122
warm-up updates, 8 epochs.  Test: ``testing`` videos, stride-16 windows, logits averaged
over the windows covering each second, frame accuracy.
"""

from ml_collections import ConfigDict

from norton_jax.finetune import config as ft


def get_config(arg: str | None = None) -> ConfigDict:
    config = ConfigDict()
    config.task = "coin"
    config.model = ft.paper_model(num_labels=779)
    config.optim = ft.optim_config()
    config.train = ft.train_config(epochs=8, videos_per_device=1)
    # "global": the loss sees the whole batch on any number of devices (the authors: one GPU);
    # "local": each device's shard only (norton_jax.finetune.losses)
    config.train.negatives = "global"
    config.data = ConfigDict(
        dict(
            dir="",  # --data
            train_list="COIN.json",  # the "training" subset
            features="coin_feature_fps30_512",
            stride=8,  # training windows (spec §5.7, trap T24)
            size=32,
            seed=0,
            missing="drop",
        )
    )
    config.eval = ft.eval_config("COIN.json", stride=16)
    if arg == "tiny":
        ft.tiny_overrides(config)
        config.train.epochs = 3
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use configs/finetune_coin.py or configs/finetune_coin.py:tiny")
    return config
