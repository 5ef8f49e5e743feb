"""PyTorch export / import: round trips, key names, torch_reference parity, bad checkpoints."""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from norton_jax.checkpoint import Checkpointer
from norton_jax.export_torch import export_state_dict, main as export_main, save_safetensors
from norton_jax.import_torch import (
    CheckpointKeyError,
    build_pretrained,
    load_pretrained,
    load_state_dict_into_model,
    main as import_main,
    read_state_dict,
)
from norton_jax.models import ModelConfig, init_model
from norton_jax.torch_reference import TorchDualEncoder, load_torch_dual_encoder

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "reference_encoders"
OUTPUT_KEYS = ("pooled_video", "pooled_text", "video_outputs", "text_outputs")


class _Opaque:
    """Stands for a pickled config object (e.g. omegaconf) that weights_only loading refuses."""


def fixture_config() -> ModelConfig:
    g = json.loads((FIXTURE / "config.json").read_text())["geometry"]
    return ModelConfig(
        hidden_size=g["hidden_size"], num_attention_heads=g["num_attention_heads"],
        intermediate_size=g["intermediate_size"], num_hidden_video_layers=g["num_hidden_video_layers"],
        num_hidden_text_layers=g["num_hidden_text_layers"], vocab_size=g["vocab_size"],
        max_position_embeddings=g["max_position_embeddings"], type_vocab_size=g["type_vocab_size"],
        video_input_dim=g["input_dim"],
    )


def _fixture_state() -> dict[str, np.ndarray]:
    return read_state_dict(FIXTURE / "checkpoint.pt")[0]


def _pure(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _assert_params_identical(a, b) -> None:
    la = jax.tree_util.tree_leaves_with_path(a)
    lb = jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def _perturbed_model(cfg: ModelConfig, seed: int):
    """Random model whose LayerNorm / bias parameters are not at their init values."""
    model = init_model(cfg, seed=seed)
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    leaves = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))
    model.eval()
    return model


def test_exported_keys_match_reference(tmp_path):
    """Same key names and shapes as the reference state dict, minus poolers and position_ids."""
    cfg = fixture_config()
    exported = export_state_dict(init_model(cfg, seed=0))
    reference = {k[len("mmmodel."):]: v for k, v in _fixture_state().items()}
    covered = {k: v for k, v in reference.items() if ".pooler." not in k and not k.endswith("position_ids")}
    assert len(covered) == 96 and len(reference) == 102
    assert set(exported) == set(covered)
    for key, value in covered.items():
        assert exported[key].shape == value.shape, key
        assert exported[key].dtype == np.float32
    with_ids = export_state_dict(init_model(cfg, seed=0), include_position_ids=True)
    assert set(with_ids) == {k for k in reference if ".pooler." not in k}
    np.testing.assert_array_equal(with_ids["text_encoder.embeddings.position_ids"], reference["text_encoder.embeddings.position_ids"])


def test_torch_to_flax_to_torch_bit_exact(tmp_path):
    """Reference .pt -> orbax (CLI) -> .safetensors (CLI) reproduces every covered tensor bit for bit."""
    cfg = fixture_config()
    cfg_file = tmp_path / "fixture_config.py"
    cfg_file.write_text(
        "from ml_collections import ConfigDict\n"
        "def get_config():\n"
        f"    return ConfigDict({{'model': {cfg.to_dict()!r}}})\n"
    )
    ckpt = tmp_path / "ckpt"
    import_main(["--checkpoint", str(FIXTURE / "checkpoint.pt"), "--config", str(cfg_file), "--out", str(ckpt)])
    out = tmp_path / "model.safetensors"
    export_main(["--checkpoint", str(ckpt), "--out", str(out)])
    exported, meta = read_state_dict(out)
    assert json.loads(meta["norton_jax_model_config"]) == cfg.to_dict()
    reference = {k[len("mmmodel."):]: v for k, v in _fixture_state().items()}
    assert len(exported) == 96
    for key, value in exported.items():
        np.testing.assert_array_equal(value, reference[key], err_msg=key)


def test_flax_to_torch_to_flax_bit_exact(tmp_path):
    cfg = fixture_config()
    model = _perturbed_model(cfg, seed=1)
    with Checkpointer(tmp_path / "ckpt", model_config=cfg, enable_async=False) as ckpt:
        ckpt.save(42, params=nnx.state(model, nnx.Param))
    out = tmp_path / "export.safetensors"
    export_main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(out)])
    back = build_pretrained(out, seed=9)  # geometry from the file metadata
    assert back.config == cfg
    _assert_params_identical(_pure(back), _pure(model))
    # in place into an existing model, from the orbax directory and from the export
    target = init_model(cfg, seed=11)
    assert load_pretrained(target, tmp_path / "ckpt") == []
    _assert_params_identical(_pure(target), _pure(model))
    target = init_model(cfg, seed=12)
    assert load_pretrained(target, out) == []
    _assert_params_identical(_pure(target), _pure(model))
    # a geometry the shapes cannot reveal (head count) is caught from the stored config
    with pytest.raises(ValueError, match="num_attention_heads: file 2 vs model 4"):
        load_pretrained(init_model(cfg.replace(num_attention_heads=4), seed=0), out)
    # via torch tensors (.pt, loaded with torch) as well
    pt = tmp_path / "export.pt"
    torch.save({"model": {f"mmmodel.{k}": torch.from_numpy(v) for k, v in export_state_dict(model).items()}}, pt)
    _assert_params_identical(_pure(build_pretrained(pt, cfg)), _pure(model))


def test_pt_export_is_the_authors_fairseq_layout_and_round_trips(tmp_path):
    """``--out m.pt``: ``{"model": {"mmmodel.<key>": tensor}}`` with the reference checkpoint's
    102 keys (position_ids and poolers included), safe to load, read back bit for bit."""
    cfg = fixture_config()
    model = _perturbed_model(cfg, seed=3)
    with Checkpointer(tmp_path / "ckpt", model_config=cfg, enable_async=False) as ckpt:
        ckpt.save(7, params=nnx.state(model, nnx.Param))
        ckpt.save(9, params=nnx.state(_perturbed_model(cfg, seed=4), nnx.Param))
    out = tmp_path / "m.pt"
    assert export_main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(out), "--step", "7"]) == 0
    obj = torch.load(out, map_location="cpu", weights_only=True)
    assert list(obj) == ["model"]
    reference = torch.load(FIXTURE / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    assert sorted(obj["model"]) == sorted(reference) and len(reference) == 102
    for key, value in reference.items():
        assert isinstance(obj["model"][key], torch.Tensor), key
        assert obj["model"][key].shape == value.shape and obj["model"][key].dtype == value.dtype, key
    for key in ("mmmodel.text_encoder.embeddings.position_ids", "mmmodel.video_encoder.bert.embeddings.position_ids"):
        assert torch.equal(obj["model"][key], reference[key])
    _assert_params_identical(_pure(build_pretrained(out, cfg)), _pure(model))   # step 7, not the latest 9
    # the default for the other suffix stays safetensors (geometry in the metadata)
    st = tmp_path / "m.safetensors"
    export_main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(st), "--step", "7"])
    assert len(read_state_dict(st)[0]) == 96
    _assert_params_identical(_pure(build_pretrained(st)), _pure(model))
    with pytest.raises(SystemExit):
        export_main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "m.bin")])


def test_torch_reference_matches_flax(tmp_path):
    """torch_reference rebuilt from an export agrees with the Flax model to 1e-5."""
    cfg = fixture_config()
    model = _perturbed_model(cfg, seed=2)
    path = tmp_path / "m.safetensors"
    save_safetensors(export_state_dict(model), path, cfg)
    tmodel = load_torch_dual_encoder(path)
    assert not tmodel.training
    exp = np.load(FIXTURE / "expected.npz")
    caps, cmasks, vfeats, vmasks = (exp[k] for k in ("caps", "cmasks", "vfeats", "vmasks"))
    cmasks = cmasks.copy()
    cmasks[5, 0] = False  # a row with [CLS] masked from the video attention (COIN-style)
    flax_out = model(caps, cmasks, vfeats, vmasks)
    with torch.no_grad():
        torch_out = tmodel(*(torch.from_numpy(np.asarray(x)) for x in (caps, cmasks, vfeats, vmasks)))
    for key in OUTPUT_KEYS:
        err = np.abs(np.asarray(flax_out[key]) - torch_out[key].numpy()).max()
        assert err < 1e-5, (key, err)
    for key in ("video_mask_outputs", "text_mask_outputs"):
        np.testing.assert_array_equal(np.asarray(flax_out[key]), torch_out[key].numpy())
    # dropout only in train mode
    tmodel.train()
    with torch.no_grad():
        t1 = tmodel(*(torch.from_numpy(np.asarray(x)) for x in (caps, cmasks, vfeats, vmasks)))
    assert (t1["pooled_text"] - torch_out["pooled_text"]).abs().max() > 1e-3


def test_torch_reference_matches_reference_fixture():
    """torch_reference loaded from the reference checkpoint reproduces expected.npz (1e-5)."""
    sd = {k[len("mmmodel."):]: torch.from_numpy(v) for k, v in _fixture_state().items()}
    tmodel = TorchDualEncoder(fixture_config().to_dict()).eval()
    result = tmodel.load_state_dict(sd, strict=False)
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == sorted(
        k for k in sd if ".pooler." in k or k.endswith("position_ids")
    )
    exp = np.load(FIXTURE / "expected.npz")
    with torch.no_grad():
        out = tmodel(*(torch.from_numpy(exp[k]) for k in ("caps", "cmasks", "vfeats", "vmasks")))
    for key in OUTPUT_KEYS:
        err = np.abs(out[key].numpy().astype(np.float64) - exp[key]).max()
        assert err < 1e-5, (key, err)


def test_hf_bert_loads_text_export_strict(tmp_path):
    from transformers import BertConfig, BertModel

    cfg = fixture_config()
    model = _perturbed_model(cfg, seed=3)
    sd = export_state_dict(model)
    text = {k[len("text_encoder."):]: torch.from_numpy(v) for k, v in sd.items() if k.startswith("text_encoder.")}
    hf = BertModel(
        BertConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_text_layers,
            num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_position_embeddings, layer_norm_eps=1e-12,
            attn_implementation="eager",
        ),
        add_pooling_layer=False,
    ).eval()
    hf.load_state_dict(text, strict=True)
    caps = np.load(FIXTURE / "expected.npz")["caps"]
    cmasks = np.ones_like(caps, bool)  # HF masks with the dtype minimum: compare unpadded
    ids = torch.from_numpy(np.concatenate([caps[:, :1], caps[:, 2:]], 1))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.numpy()
    got = np.asarray(model.encode_text(caps, cmasks)["text_outputs"])
    assert np.abs(got - ref).max() < 1e-5


def test_fp16_checkpoint_with_extras(tmp_path):
    """fp16 tensors, `state_dict` wrapper, optimizer state and argparse args are tolerated."""
    cfg = fixture_config()
    sd = _fixture_state()
    half = {k: (torch.from_numpy(v).half() if v.dtype == np.float32 else torch.from_numpy(v)) for k, v in sd.items()}
    path = tmp_path / "fp16.pt"
    torch.save(
        {
            "state_dict": half,
            "args": argparse.Namespace(arch="mmfusionseparate", lr=5e-5),
            "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(3)}}},
            "extra_state": {"epoch": 3},
        },
        path,
    )
    model = build_pretrained(path, cfg)
    params = export_state_dict(model)
    for key, value in params.items():
        want = half[f"mmmodel.{key}"].float().numpy()
        np.testing.assert_array_equal(value, want, err_msg=key)


def test_bad_checkpoints_name_the_key(tmp_path):
    cfg = fixture_config()
    sd = _fixture_state()
    model = init_model(cfg, seed=0)

    missing = dict(sd)
    del missing["mmmodel.text_encoder.encoder.layer.2.output.LayerNorm.bias"]
    with pytest.raises(CheckpointKeyError, match=r"missing required parameter 'text_encoder\.encoder\.layer\.2\.output\.LayerNorm\.bias'"):
        load_state_dict_into_model(model, missing, source="bad.pt")

    wrong = dict(sd)
    wrong["mmmodel.video_encoder.videomlp.linear1.weight"] = np.zeros((32, 256), np.float32)
    with pytest.raises(CheckpointKeyError, match=r"'video_encoder\.videomlp\.linear1\.weight' has shape \(32, 256\), expected \(32, 512\)"):
        load_state_dict_into_model(model, wrong, source="bad.pt")

    nan = dict(sd)
    nan["mmmodel.video_encoder.bert.embeddings.LayerNorm.weight"] = np.full((32,), np.nan, np.float32)
    with pytest.raises(CheckpointKeyError, match=r"'video_encoder\.bert\.embeddings\.LayerNorm\.weight' holds non-finite"):
        load_state_dict_into_model(model, nan, source="bad.pt")

    # a file with a wrong geometry fails through the CLI path too, naming the file and key
    bigger = fixture_config().replace(intermediate_size=128)
    with pytest.raises(CheckpointKeyError, match=r"checkpoint\.pt: parameter '\w+(\.\w+)*\.intermediate\.dense\.(weight|bias)' has shape"):
        build_pretrained(FIXTURE / "checkpoint.pt", bigger)

    # untrusted pickled objects are refused by weights_only loading with a clear message
    path = tmp_path / "pickled.pt"
    torch.save({"model": {}, "cfg": _Opaque()}, path)
    with pytest.raises(ValueError, match="trust_pickle"):
        read_state_dict(path)
