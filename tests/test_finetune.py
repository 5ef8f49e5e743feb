"""End-to-end fine-tuning on generated stand-ins (spec §5.5-5.7): the task metric improves
over the starting checkpoint, runs resume, and a COIN checkpoint exports to PyTorch with
the reference's classifier keys."""

import json
import os

import numpy as np
import pytest
import torch

from norton_jax.export_torch import export_checkpoint
from norton_jax.finetune import standins
from norton_jax.finetune.trainer import finetune
from norton_jax.import_torch import build_pretrained
from norton_jax.models.config import load_config_file
from norton_jax.torch_reference import TorchDualEncoder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune_data")
    standins.write_msrvtt(root, num_train=48, num_qa_train=32, num_test=24, seconds=(8, 24))
    standins.write_coin(root, num_train=8, num_test=3, num_steps=4, seconds=(40, 70))
    init = standins.write_init_checkpoint(root / "init.safetensors")
    return root, init


def small_config(name, data_dir, init, **train):
    """The tiny variant, shrunk further (hidden 16, one layer per encoder) for test time."""
    config = load_config_file(f"configs/{name}.py:tiny")
    config.model.update(dict(hidden_size=16, intermediate_size=32, num_hidden_video_layers=1,
                             num_hidden_text_layers=1))
    config.data.dir = str(data_dir)
    config.train.update(dict(progress=False, log_every=1, init_checkpoint="", **train))
    return config


def test_msrvtt_retrieval_finetune_improves_r1_and_resumes(data, tmp_path):
    root, _ = data
    config = small_config("finetune_msrvtt", root, None, batch_size=16, steps=40)
    config.optim.lr = 3e-3
    cut = str(tmp_path / "cut")
    config.train.stop_after_steps = 20
    part = finetune(config, cut)
    assert part["step"] == 20 and 0 in part["eval"] and 20 not in part["eval"]  # no end-of-run eval
    config.train.stop_after_steps = 0
    full = finetune(config, cut)  # resumes from step 20
    assert full["step"] == 40
    start, end = part["eval"][0], full["eval"][40]
    assert end["R1"] > start["R1"] + 0.3 and end["MR"] < start["MR"], (start, end)
    rows = [json.loads(line) for line in open(os.path.join(cut, "metrics.jsonl"))]
    steps = [r["step"] for r in rows if "loss_total" in r]
    assert steps == list(range(1, 41))  # one row per step, no step trained twice
    assert all(np.isfinite(r["loss_total"]) and r["finite"] == 1.0 for r in rows if "loss_total" in r)


def test_msrvtt_qa_finetune_improves_accuracy(data, tmp_path):
    root, _ = data
    config = small_config("finetune_msrvtt_qa", root, None, batch_size=16, steps=20)
    config.optim.lr = 3e-3
    summary = finetune(config, str(tmp_path / "qa"))
    start, end = summary["eval"][0]["acc"], summary["eval"][20]["acc"]
    assert end > start + 0.2, (start, end)


def test_coin_finetune_improves_frame_accuracy_and_exports_classifier(data, tmp_path):
    root, init = data
    config = small_config("finetune_coin", root, None, epochs=4)
    config.model = load_config_file("configs/finetune_coin.py:tiny").model  # the init's geometry
    config.train.init_checkpoint = init
    workdir = str(tmp_path / "coin")
    summary = finetune(config, workdir)
    start, end = summary["eval"][0]["frame_acc"], summary["eval"][32]["frame_acc"]
    assert end > start + 0.5, (start, end)

    out = tmp_path / "coin.safetensors"
    state = export_checkpoint(os.path.join(workdir, "checkpoints"), out)
    d = config.model.hidden_size
    assert state["video_encoder.classifier.weight"].shape == (779, d)
    assert state["video_encoder.classifier.bias"].shape == (779,)
    # the export reloads (Flax) and its classifier computes the same logits in PyTorch
    model = build_pretrained(out)
    model.eval()
    rng = np.random.default_rng(0)
    vfeats = rng.standard_normal((2, 32, 512)).astype(np.float32)
    vmasks = np.ones((2, 32), bool)
    vmasks[1, 20:] = False
    caps = np.tile(np.array([[101, 102, 0, 102]]), (2, 1))
    cmasks = np.tile(np.array([[False, True, False, True]]), (2, 1))
    flax_logits = np.asarray(model.classify_frames(caps, cmasks, vfeats, vmasks))  # [2, 32, 779]
    tmodel = TorchDualEncoder(config.model.to_dict()).eval()
    sd = {k: torch.from_numpy(v) for k, v in state.items()}
    result = tmodel.load_state_dict(sd, strict=False)
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == ["video_encoder.classifier.bias", "video_encoder.classifier.weight"]
    with torch.no_grad():
        out_t = tmodel(*(torch.from_numpy(x) for x in (caps, cmasks, vfeats, vmasks)))
        torch_logits = torch.nn.functional.linear(
            out_t["video_outputs"][:, 1:33], sd["video_encoder.classifier.weight"], sd["video_encoder.classifier.bias"]
        ).numpy()
    np.testing.assert_allclose(flax_logits, torch_logits, rtol=1e-4, atol=1e-4)


def test_evaluation_refuses_non_finite_test_features(tmp_path):
    """A NaN frame in one test video stops the evaluation with the file, video and frame named
    (the scores of all-NaN features used to be reported as a result)."""
    from norton_jax.evaluate.loaders import EvalDataError
    from norton_jax.finetune.data import MSRVTT_FEATURES
    from norton_jax.finetune.evaluate import evaluate_task
    from norton_jax.models import ModelConfig, init_model

    root = tmp_path / "msrvtt"
    standins.write_msrvtt(root, num_train=8, num_qa_train=8, num_test=6, seconds=(4, 8))
    config = small_config("finetune_msrvtt", root, None, batch_size=4, steps=1)
    model = init_model(ModelConfig.from_any(config.model), seed=0)
    assert 0 <= evaluate_task(model, config, root)["metrics"]["R1"] <= 1  # clean files score
    bad = sorted((root / MSRVTT_FEATURES).glob("video70*.npy"))[0]  # the first test video
    feats = np.load(bad)
    feats[2, 7] = np.nan
    np.save(bad, feats)
    with pytest.raises(EvalDataError, match=rf"{bad.name}: video '{bad.stem}': .*non-finite.*first at frame 2"):
        evaluate_task(model, config, root)
