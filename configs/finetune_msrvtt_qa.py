"""MSR-VTT multiple-choice QA fine-tuning (spec §5.6, ``vttqa_ft.yaml``).

    python -m norton_jax.finetune --config configs/finetune_msrvtt_qa.py \\
        --init NORTON_CHECKPOINT --data DATA_DIR --workdir WORKDIR
    python -m norton_jax.finetune --config configs/finetune_msrvtt_qa.py:tiny ...   # CPU

Reference: ``MSRVTT_train.7k.csv`` x ``dup`` 20, captions from ``MSRVTT_data.json``;
first 16 s of video, text <= 77 tokens (max_video_len 16, max_len 96); ``V2TContraLoss``;
batch 128; lr 5e-5, 8 epochs (§5.6 lists no warm-up: 122, Adam and clipping as the
retrieval config).
Test: ``MSR_MC_test.csv`` (tab-separated), accuracy of ``argmax_k <video, option k>``.
"""

from ml_collections import ConfigDict

from norton_jax.finetune import config as ft


def get_config(arg: str | None = None) -> ConfigDict:
    config = ConfigDict()
    config.task = "msrvtt_qa"
    config.model = ft.paper_model()
    config.optim = ft.optim_config()
    config.train = ft.train_config(epochs=8, batch_size=128)
    config.data = ft.msrvtt_data_config(train_list="MSRVTT_train.7k.csv", max_video_len=16)
    config.eval = ft.eval_config("MSR_MC_test.csv")
    if arg == "tiny":
        ft.tiny_overrides(config)
        config.train.epochs = 4
        config.train.batch_size = 32
        config.data.dup = 2
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use configs/finetune_msrvtt_qa.py or configs/finetune_msrvtt_qa.py:tiny")
    return config
