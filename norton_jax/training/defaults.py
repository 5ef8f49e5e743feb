"""Default config sections shared by the files in ``configs/`` (reference values, spec 4.6).

Each function returns a fresh ``ConfigDict``; a config file composes them and overrides
what differs (big_vision style: the config files stay a few lines long).
"""

from __future__ import annotations

from ml_collections import ConfigDict


def loss_config() -> ConfigDict:
    """Norton's loss (spec 2, ``how2_pretrain.yaml``): the keyword arguments of ``norton_loss``."""
    return ConfigDict(
        dict(
            weight=0.1,  # lambda of Eq. 1
            beta=0.3,  # faulty-negative weight (Eq. 8); 0 = plain InfoNCE
            seq_len=8,  # clips per sequence
            prompt_ratio=0.3,  # bucket quantile; None = vanilla OT
            epsilon=0.1,  # Sinkhorn epsilon of the video-paragraph OT
            alpha=1.0,  # log-sum-exp temperature of Eq. 5
            fusion_weight=0.5,
            num_iters=50,  # Sinkhorn iterations (both OTs)
            clip_similarity_kind="lse",  # "lse" | "max" | "mean"
            fine_grained="reference",  # "reference" | "paper"
            sequence_distance="ot",  # "ot" (Norton) | "soft_dtw" (TempCLR-style baseline)
            chunk_size=64,
        )
    )


def optim_config() -> ConfigDict:
    """Adam (0.9, 0.98, 1e-8), lr 1e-5, 1000 warm-up steps, linear decay, clip 2.0."""
    return ConfigDict(
        dict(
            lr=1e-5,
            end_lr=0.0,
            warmup_steps=1000,
            total_steps=1_000_000,  # decay horizon (fairseq total_num_update); None = train.steps
            b1=0.9,
            b2=0.98,
            eps=1e-8,
            clip_norm=2.0,
        )
    )


def train_config() -> ConfigDict:
    return ConfigDict(
        dict(
            steps=10_000,
            seed=0,
            trainable="layernorm_only",  # "layernorm_only" (post-pretraining) | "all"
            init_checkpoint="",  # VideoCLIP/Norton .pt, .safetensors; empty = random init
            negatives="local",  # "local" (reference) | "global" (all_gather)
            log_every=10,
            checkpoint_every=1024,
            keep_checkpoints=2,
            distributed=False,  # call jax.distributed.initialize()
            progress=True,
            stop_after_steps=0,  # > 0: stop (and save) after this many steps of this run
            on_non_finite="stop",  # "stop" | "skip": a NaN/inf loss or gradient skips the update
            max_skipped=0,  # "skip": more than this many skipped steps in a row still stop the run
            eval_every=0,  # > 0: validation loss on data.val_split every N steps; keeps the best step
            eval_batches=4,  # validation batches per evaluation (the same ones every time)
            hard_negatives=ConfigDict(
                dict(enabled=True, num_lists=512, num_candidates=192, videos_per_call=8)
            ),
        )
    )


def data_config() -> ConfigDict:
    return ConfigDict(
        dict(
            store="",  # feature-store directory (data_pipeline)
            split="train",
            val_split="val",  # held-out split for train.eval_every (checkpoint selection)
            build_if_missing="",  # e.g. "youcook2-mnc": build the embedded corpus if the store is missing,
            build_anywhere=False,  # ... only into its default folder unless this is True
            videos_per_device=64,  # V_b: 64 videos x 16 clips = 1024 clips per device
            seed=0,
            num_parallel_calls=-1,
        )
    )
