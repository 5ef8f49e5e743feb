"""MSR-VTT QA fine-tuning layout (spec §5.6, ``vttqa_ft.yaml`` / ``test_vttqa_ft.yaml``): the
reference trains on the first 32 s of video (``DSAligner``, max_video_len 32, max_len 96, so
captions <= 61 tokens) and tests at 16 s (``MSRVTTQAAligner``, max_video_len 16, options
<= 77 tokens)."""

import numpy as np
import pytest

from norton_jax.finetune import standins
from norton_jax.finetune.evaluate import evaluate_task
from norton_jax.finetune.trainer import build_batches
from norton_jax.inference import Encoder
from norton_jax.models import ModelConfig, init_model
from norton_jax.models.config import load_config_file


@pytest.mark.parametrize("variant", ["", ":tiny"])
def test_qa_config_trains_at_the_reference_layout(variant):
    config = load_config_file(f"configs/finetune_msrvtt_qa.py{variant}")
    assert (config.data.max_video_len, config.data.max_len) == (32, 96)
    assert config.data.train_list == "MSRVTT_train.7k.csv" and config.train.batch_size in (128, 32)


def test_qa_train_batches_are_32s_and_test_batches_16s(tmp_path, monkeypatch):
    root = tmp_path / "msrvtt"
    standins.write_msrvtt(root, num_train=12, num_qa_train=8, num_test=6, seconds=(20, 40))
    config = load_config_file("configs/finetune_msrvtt_qa.py:tiny")
    config.model.update(dict(hidden_size=16, intermediate_size=32, num_hidden_video_layers=1,
                             num_hidden_text_layers=1))
    config.data.dir = str(root)
    config.train.batch_size = 4

    batch = build_batches(config, str(root), 1)(0)
    assert batch["vfeats"].shape == (4, 32, 512) and batch["vmasks"].shape == (4, 32)
    assert batch["caps"].shape == (4, 64) and batch["cmasks"].shape == (4, 64)   # 96 - 32 text slots
    assert (batch["vmasks"].sum(1) > 16).all()         # every stand-in video has >= 20 s: all of its first 32
    assert np.abs(batch["vfeats"][:, 16:]).sum() > 0   # seconds 16..31 really are in the batch

    seen = {"video": [], "text": []}
    video, pooled_text = Encoder.video, Encoder.pooled_text

    def spy_video(self, caps, cmasks, vfeats, vmasks, **kw):
        seen["video"].append((vfeats.shape, int(np.asarray(vmasks).sum(1).max())))
        return video(self, caps, cmasks, vfeats, vmasks, **kw)

    def spy_text(self, caps, cmasks):
        seen["text"].append(caps.shape)
        return pooled_text(self, caps, cmasks)

    monkeypatch.setattr(Encoder, "video", spy_video)
    monkeypatch.setattr(Encoder, "pooled_text", spy_text)
    model = init_model(ModelConfig.from_any(config.model), seed=0)
    result = evaluate_task(model, config, root)
    assert 0 <= result["metrics"]["acc"] <= 1
    assert seen["video"] == [((6, 16, 512), 16)]       # test videos: the first 16 s
    assert seen["text"] == [(30, 80)]                  # 6 questions x 5 options, 96 - 16 text slots
