"""Downstream fine-tuning of Norton (spec §2.7, §3.6, §5.5-5.7): MSR-VTT retrieval,
MSR-VTT multiple-choice QA and COIN action segmentation.  See ``docs/finetuning.md``.

    python -m norton_jax.finetune --config configs/finetune_msrvtt.py \\
        --init CHECKPOINT --data DIR --workdir DIR
"""

from norton_jax.finetune.losses import (
    IGNORE_INDEX,
    frame_cross_entropy,
    make_loss_fn,
    t2v_contrastive_loss,
    v2t_contrastive_loss,
)

__all__ = [
    "IGNORE_INDEX",
    "frame_cross_entropy",
    "make_loss_fn",
    "t2v_contrastive_loss",
    "v2t_contrastive_loss",
]
