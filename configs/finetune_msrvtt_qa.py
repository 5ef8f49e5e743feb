"""MSR-VTT multiple-choice QA fine-tuning (spec §5.6, ``vttqa_ft.yaml``).

    python -m norton_jax.finetune --config configs/finetune_msrvtt_qa.py \\
        --init NORTON_CHECKPOINT --data DATA_DIR --workdir WORKDIR
    python -m norton_jax.finetune --config configs/finetune_msrvtt_qa.py:tiny ...   # CPU

Reference: ``MSRVTT_train.7k.csv`` x ``dup`` 20, captions from ``MSRVTT_data.json``;
training (``vttqa_ft.yaml``, ``DSAligner``) on the first 32 s of video, captions <= 61 tokens
(max_video_len 32, max_len 96, as retrieval); ``V2TContraLoss``; batch 128; lr 5e-5,
8 epochs (§5.6 lists no warm-up: 122, Adam and clipping as the retrieval config).
Test (``test_vttqa_ft.yaml``, ``MSRVTTQAAligner``): ``MSR_MC_test.csv`` (tab-separated),
first 16 s of video, options <= 77 tokens (max_video_len 16, max_len 96:
``norton_jax.inference.QA_LAYOUT``), accuracy of ``argmax_k <video, option k>``.
"""

from ml_collections import ConfigDict

from norton_jax.finetune import config as ft


def get_config(arg: str | None = None) -> ConfigDict:
    config = ConfigDict()
    config.task = "msrvtt_qa"
    config.model = ft.paper_model()
    config.optim = ft.optim_config()
    config.train = ft.train_config(epochs=8, batch_size=128)
    # "global": the loss sees the whole batch on any number of devices (the authors: one GPU);
    # "local": each device's shard only (norton_jax.finetune.losses)
    config.train.negatives = "global"
    config.data = ft.msrvtt_data_config(train_list="MSRVTT_train.7k.csv", max_video_len=32)  # the test layout is QA_LAYOUT (16 s)
    config.eval = ft.eval_config("MSR_MC_test.csv")
    if arg == "tiny":
        ft.tiny_overrides(config)
        config.train.epochs = 4
        config.train.batch_size = 32
        config.data.dup = 2
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use configs/finetune_msrvtt_qa.py or configs/finetune_msrvtt_qa.py:tiny")
    return config
