"""Norton post-pretraining on HowTo100M: the paper's settings (spec 3.1, 4.6).

    python -m norton_jax.train --config configs/pretrain.py --workdir DIR \
        --config.data.store=/data/howto100m_store \
        --config.train.init_checkpoint=/ckpt/videoclip_checkpoint_best.pt \
        --config.train.num_devices=8 --config.train.num_videos=1220000
    python -m norton_jax.train --config configs/pretrain.py:tpu_v5e ...   # an accelerator preset
    python -m norton_jax.models --config configs/pretrain.py --summary

Starts from a VideoCLIP checkpoint and trains only the 39 LayerNorms; 64 videos x 16 clips
per device and step; Adam (0.9, 0.98), lr 1e-5 with 1000 warm-up updates, clip 2.0;
hard-negative batches rebuilt every epoch; each device's loss on its own batch.

Training length is counted in epochs, as the reference's (``max_epoch: 6``): one epoch is
``num_videos // (videos_per_device * num_devices)`` steps (the input pipeline's
``steps_per_epoch``), so ``train.steps`` follows ``train.epochs``, ``train.num_videos`` (the
store's training videos), ``data.videos_per_device`` and ``train.num_devices`` (set it to
the run's device count: 2 or 64 devices then train the same 6 epochs).  Setting
``--config.train.steps=N`` explicitly overrides the derivation.

Presets (``configs/pretrain.py:<preset>``) size the per-device step for an accelerator's
memory (docs/hardware.md has the compiled-memory table they come from); every preset keeps
the paper's loss, only ``model.dtype``, ``model.remat`` and ``data.videos_per_device`` change.
"""

from ml_collections import ConfigDict

from norton_jax.models.config import paper_model_config
from norton_jax.training import defaults

#: HowTo100M's ~1.22M videos (set ``train.num_videos`` to ``len(store)`` of your store).
HOWTO100M_VIDEOS = 1_220_000

#: preset -> (device memory in GB, overrides).  Chosen from docs/hardware.md's table of
#: compiled (CPU) memory with a margin for the runtime, the input pipeline and the
#: platform's own buffers; 64 videos per device (the paper's batch) wherever it fits.
PRESETS: dict[str, tuple[int, dict[str, object]]] = {
    # 16 GB: TPU v5e, V100-16GB, T4 (the paper's 64 videos do not fit: fewer negatives per loss)
    "tpu_v5e": (16, {"model.dtype": "bfloat16", "model.remat": True, "data.videos_per_device": 16}),
    "gpu_16gb": (16, {"model.dtype": "bfloat16", "model.remat": True, "data.videos_per_device": 16}),
    # 32 GB: TPU v4, V100-32GB
    "tpu_v4": (32, {"model.dtype": "bfloat16", "model.remat": True, "data.videos_per_device": 32}),
    "gpu_32gb": (32, {"model.dtype": "bfloat16", "model.remat": True, "data.videos_per_device": 32}),
    # 80 GB: A100-80GB, H100; 141 GB: H200 -- the paper's 64 videos per device
    "a100_80gb": (80, {"model.dtype": "bfloat16", "model.remat": False, "data.videos_per_device": 64}),
    "h100": (80, {"model.dtype": "bfloat16", "model.remat": False, "data.videos_per_device": 64}),
    "h200": (141, {"model.dtype": "bfloat16", "model.remat": False, "data.videos_per_device": 64}),
    # float32 encoders, 64 videos: the reference's numbers as closely as possible (80 GB and up)
    "fp32_80gb": (80, {"model.dtype": "float32", "model.remat": False, "data.videos_per_device": 64}),
}


def get_config(preset: str | None = None) -> ConfigDict:
    config = ConfigDict()
    config.model = paper_model_config()
    config.loss = defaults.loss_config()
    config.loss.soft_dtw_gamma = 0.1  # used only with sequence_distance="soft_dtw"
    config.loss.matmul_precision = "high"  # similarity/logit matmuls (docs/hardware.md)
    config.optim = defaults.optim_config()
    config.train = defaults.train_config()
    config.data = defaults.data_config()  # data.store must be set
    config.train.epochs = 6  # the reference's max_epoch
    config.train.num_videos = HOWTO100M_VIDEOS
    config.train.num_devices = 2  # the reference's 2 x A100-80GB; set to the run's count
    train = config.train
    config.train.steps = train.get_ref("epochs") * (
        train.get_ref("num_videos")
        // (config.data.get_ref("videos_per_device") * train.get_ref("num_devices"))
    )
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"configs/pretrain.py: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        for dotted, value in PRESETS[preset][1].items():
            section, field = dotted.split(".")
            config[section][field] = value
        config.preset = preset
    return config
