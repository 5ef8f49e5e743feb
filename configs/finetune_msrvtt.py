"""MSR-VTT text-to-video retrieval fine-tuning (spec §5.5, ``vtt_ft.yaml``).

    python -m norton_jax.finetune --config configs/finetune_msrvtt.py \\
        --init NORTON_CHECKPOINT --data DATA_DIR --workdir WORKDIR
    python -m norton_jax.finetune --config configs/finetune_msrvtt.py:tiny ...   # CPU

Reference: ``MSRVTT_train.9k.csv`` x ``dup`` 20 per epoch, one caption drawn uniformly
from the video's 20 in ``MSRVTT_data.json``; first 32 s of video, text <= 61 tokens
(max_video_len 32, max_len 96); ``T2VContraLoss``; batch 512; Adam (0.9, 0.98), lr 5e-5,
122 warm-up updates, 15 epochs, clip 2.0; all parameters train.  Test:
``MSRVTT_JSFUSION_test.csv`` (1k-A), R@1/5/10, MR.
"""

from ml_collections import ConfigDict

from norton_jax.finetune import config as ft


def get_config(arg: str | None = None) -> ConfigDict:
    config = ConfigDict()
    config.task = "msrvtt"
    config.model = ft.paper_model()
    config.optim = ft.optim_config()
    config.train = ft.train_config(epochs=15, batch_size=512)
    # "global": the loss sees the whole batch on any number of devices (the authors: one GPU);
    # "local": each device's shard only (norton_jax.finetune.losses)
    config.train.negatives = "global"
    config.data = ft.msrvtt_data_config(train_list="MSRVTT_train.9k.csv", max_video_len=32)
    config.eval = ft.eval_config("MSRVTT_JSFUSION_test.csv")
    if arg == "tiny":
        ft.tiny_overrides(config)
        config.train.epochs = 3
        config.train.batch_size = 32
        config.data.dup = 2
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use configs/finetune_msrvtt.py or configs/finetune_msrvtt.py:tiny")
    return config
