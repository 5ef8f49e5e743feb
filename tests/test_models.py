"""Dual encoder: reference-fixture parity, HuggingFace BERT parity, dropout, configs, layernorm_only."""

from __future__ import annotations

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from norton_jax.import_torch import build_pretrained, load_state_dict_into_model, read_state_dict
from norton_jax.models import (
    ModelConfig,
    abstract_model,
    count_trainable,
    freeze_non_trainable,
    init_model,
    layernorm_only_count,
    load_config_file,
    paper_model_config,
    tiny_model_config,
    trainable_filter,
    trainable_mask,
)
from norton_jax.models.keys import flax_path_to_torch_key, iter_paths

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "reference_encoders"


def fixture_config() -> ModelConfig:
    g = json.loads((FIXTURE / "config.json").read_text())["geometry"]
    return ModelConfig(
        hidden_size=g["hidden_size"],
        num_attention_heads=g["num_attention_heads"],
        intermediate_size=g["intermediate_size"],
        num_hidden_video_layers=g["num_hidden_video_layers"],
        num_hidden_text_layers=g["num_hidden_text_layers"],
        vocab_size=g["vocab_size"],
        max_position_embeddings=g["max_position_embeddings"],
        type_vocab_size=g["type_vocab_size"],
        video_input_dim=g["input_dim"],
    )


def random_batch(config: ModelConfig, batch: int = 6, lv: int = 8, lc: int = 12, seed: int = 0):
    """Inputs in the layout of spec §3.2 with varied padding (default shapes = the fixture's,
    so that eager-mode op compilations are shared between tests)."""
    rng = np.random.default_rng(seed)
    caps = np.zeros((batch, lc), np.int32)
    cmasks = np.zeros((batch, lc), bool)
    vfeats = np.zeros((batch, lv, config.video_input_dim), np.float32)
    vmasks = np.zeros((batch, lv), bool)
    for i in range(batch):
        n = 1 + (i * 3) % (lc - 3)
        caps[i, :2] = [101, 102]
        caps[i, 2:2 + n] = rng.integers(103, min(config.vocab_size, 2000), n)
        caps[i, 2 + n] = 102
        cmasks[i, :n + 3] = True
        nf = 1 + (i * 2) % lv
        vfeats[i, :nf] = rng.normal(size=(nf, config.video_input_dim))
        vmasks[i, :nf] = True
    return caps, cmasks, vfeats, vmasks


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(FIXTURE / "expected.npz"))


@pytest.fixture(scope="module")
def reference_model():
    model = build_pretrained(FIXTURE / "checkpoint.pt", fixture_config())
    model.eval()
    return model


def test_reference_fixture_parity(reference_model, expected):
    """Importing the reference checkpoint reproduces every stored output to 1e-5 (eval, fp32)."""
    out = reference_model(
        expected["caps"], expected["cmasks"], expected["vfeats"], expected["vmasks"],
        return_intermediates=True,
    )
    for key in ("video_mask_outputs", "text_mask_outputs"):
        assert out[key].dtype == jnp.bool_
        np.testing.assert_array_equal(np.asarray(out[key]), expected[key])
    keys = ("pooled_video", "pooled_text", "video_outputs", "text_outputs",
            "video_tokens", "video_embeddings", "text_embeddings")
    for key in keys:
        got = np.asarray(out[key])
        assert got.shape == expected[key].shape, key
        assert got.dtype == np.float32, key
        err = np.abs(got.astype(np.float64) - expected[key]).max()
        assert err < 1e-5, f"{key}: max abs diff {err:.3g}"
    # Shapes of spec §3.5: F = Lv + 2, T = Lc - 1.
    assert out["video_outputs"].shape == (6, 10, 32) and out["text_outputs"].shape == (6, 11, 32)


def test_reference_padding_semantics(reference_model, expected):
    """Padding is handled only by masks: changing padded frames / words changes nothing valid."""
    caps, cmasks = expected["caps"].copy(), expected["cmasks"]
    vfeats, vmasks = expected["vfeats"].copy(), expected["vmasks"]
    vfeats[~vmasks] = 7.0
    caps[~cmasks] = 5
    out = reference_model(caps, cmasks, vfeats, vmasks)
    np.testing.assert_allclose(np.asarray(out["pooled_video"]), expected["pooled_video"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["pooled_text"]), expected["pooled_text"], atol=1e-5)


def _randomise_torch(module, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if p.ndim == 1 and p.shape[0] == 32 else 0.0))


@pytest.mark.parametrize("full_masks", [True, False])
def test_hf_bert_text_parity(full_masks):
    """A random HuggingFace BertModel imported as our text encoder agrees to 1e-5."""
    import torch
    from transformers import BertConfig, BertModel

    cfg = fixture_config()
    hf_cfg = BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_text_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        hidden_act="gelu", layer_norm_eps=1e-12, attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = BertModel(hf_cfg, add_pooling_layer=False).eval()
    _randomise_torch(hf, seed=1)

    model = init_model(cfg, seed=3)
    model.eval()
    sd = {f"text_encoder.{k}": v.numpy() for k, v in hf.state_dict().items()}
    unused = load_state_dict_into_model(model, sd, source="hf", include=("text_encoder",))
    assert unused == []

    caps, cmasks, _, _ = random_batch(cfg, seed=2)
    if full_masks:
        cmasks = np.ones_like(cmasks)
    out = model.encode_text(caps, cmasks)
    ids = np.concatenate([caps[:, :1], caps[:, 2:]], 1)
    mask = np.concatenate([cmasks[:, :1], cmasks[:, 2:]], 1)
    with torch.no_grad():
        ref = hf(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
            token_type_ids=torch.zeros(ids.shape, dtype=torch.long),
        ).last_hidden_state.numpy()
    got = np.asarray(out["text_outputs"])
    err = np.abs(got - ref).max()
    assert err < 1e-5, err
    assert err > 0.0 or full_masks  # sanity: the comparison is not vacuous
    pool = np.asarray(out["text_mask_outputs"], np.float32)
    ref_pooled = (ref * pool[..., None]).sum(1) / pool.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out["pooled_text"]), ref_pooled, atol=1e-5, rtol=0)
    assert np.abs(ref).max() > 0.5  # non-trivial activations


def test_output_contract_and_masks():
    cfg = ModelConfig.from_any(tiny_model_config())
    model = init_model(cfg, seed=0)
    model.eval()
    caps, cmasks, vfeats, vmasks = random_batch(cfg)  # B = 6, Lv = 8, Lc = 12
    cmasks[1, 0] = False  # COIN / YouCook-BG style: [CLS] masked out of video attention
    out = model(caps, cmasks, vfeats, vmasks)
    assert set(out) == {"pooled_video", "pooled_text", "video_outputs", "text_outputs",
                        "video_mask_outputs", "text_mask_outputs"}
    assert out["video_outputs"].shape == (6, 10, 32) and out["text_outputs"].shape == (6, 11, 32)
    assert out["pooled_video"].shape == (6, 32) and out["pooled_text"].shape == (6, 32)
    np.testing.assert_array_equal(
        np.asarray(out["video_mask_outputs"]),
        np.concatenate([np.zeros((6, 1), bool), vmasks, np.ones((6, 1), bool)], 1),
    )
    np.testing.assert_array_equal(
        np.asarray(out["text_mask_outputs"]), np.concatenate([np.zeros((6, 1), bool), cmasks[:, 2:]], 1)
    )
    # masking [CLS] (cmasks[:, 0], used by both attention masks, spec §3.3-3.4) changes that row only
    ref = model(caps, np.where(np.arange(12) == 0, True, cmasks), vfeats, vmasks)
    for key in ("pooled_video", "pooled_text"):
        assert np.abs(np.asarray(ref[key][1]) - np.asarray(out[key][1])).max() > 1e-4
        np.testing.assert_array_equal(np.asarray(ref[key][0]), np.asarray(out[key][0]))
    v, m = np.asarray(out["video_outputs"]), np.asarray(out["video_mask_outputs"])
    np.testing.assert_allclose(np.asarray(out["pooled_video"]), (v * m[..., None]).sum(1) / m.sum(1, keepdims=True), atol=1e-6)
    # encode_video / encode_text return the same values as the joint forward
    ov = model.encode_video(caps, cmasks, vfeats, vmasks)
    np.testing.assert_array_equal(np.asarray(ov["pooled_video"]), np.asarray(out["pooled_video"]))
    ot = model.encode_text(caps, cmasks)
    np.testing.assert_array_equal(np.asarray(ot["text_outputs"]), np.asarray(out["text_outputs"]))


def test_dropout_only_in_training():
    cfg = ModelConfig.from_any(tiny_model_config())
    model = init_model(cfg, seed=0)
    batch = random_batch(cfg)
    model.eval()
    e1, e2 = model(*batch), model(*batch)
    np.testing.assert_array_equal(np.asarray(e1["pooled_video"]), np.asarray(e2["pooled_video"]))
    model.train()
    t1, t2 = model(*batch), model(*batch)
    for key in ("pooled_video", "pooled_text"):
        assert np.abs(np.asarray(t1[key]) - np.asarray(t2[key])).max() > 1e-3  # fresh masks per call
        assert np.abs(np.asarray(t1[key]) - np.asarray(e1[key])).max() > 1e-3
    # the call-site flag overrides the module mode; explicit rngs make dropout reproducible
    d = model(*batch, deterministic=True)
    np.testing.assert_array_equal(np.asarray(d["pooled_text"]), np.asarray(e1["pooled_text"]))
    r1 = model(*batch, rngs=nnx.Rngs(dropout=7))
    r2 = model(*batch, rngs=nnx.Rngs(dropout=7))
    np.testing.assert_array_equal(np.asarray(r1["pooled_text"]), np.asarray(r2["pooled_text"]))
    # with rate 0, training mode equals eval mode
    cfg0 = cfg.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    m0 = init_model(cfg0, seed=0)
    m0.train()
    np.testing.assert_array_equal(np.asarray(m0(*batch)["pooled_video"]), np.asarray(e1["pooled_video"]))


def test_bfloat16_compute():
    cfg = ModelConfig.from_any(tiny_model_config())
    batch = random_batch(cfg)
    ref = init_model(cfg, seed=0)
    ref.eval()
    low = init_model(cfg.replace(dtype="bfloat16"), seed=0)
    low.eval()
    params = jax.tree.leaves(nnx.state(low, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    a = ref(*batch)
    b = nnx.jit(lambda mdl, *x: mdl(*x))(low, *batch)  # jit: one compile instead of many eager ones
    for key in ("pooled_video", "pooled_text", "video_outputs"):
        assert b[key].dtype == jnp.float32
        err = np.abs(np.asarray(a[key]) - np.asarray(b[key])).max()
        assert 0 < err < 0.1, (key, err)


def test_input_validation():
    cfg = ModelConfig.from_any(tiny_model_config())
    model = init_model(cfg, seed=0)
    caps, cmasks, vfeats, vmasks = random_batch(cfg)
    bad = caps.copy()
    bad[0, 3] = cfg.vocab_size
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(bad, cmasks, vfeats, vmasks)
    with pytest.raises(ValueError, match="vfeats must be"):
        model(caps, cmasks, vfeats[..., :100], vmasks)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(np.zeros((1, 200), np.int32), np.ones((1, 200), bool), vfeats[:1], vmasks[:1])


def test_configs():
    pre = load_config_file(str(ROOT / "configs" / "pretrain.py"))
    tiny = load_config_file(str(ROOT / "configs" / "tiny.py"))
    p = ModelConfig.from_any(pre.model)
    assert (p.hidden_size, p.num_attention_heads, p.intermediate_size) == (768, 12, 3072)
    assert (p.num_hidden_video_layers, p.num_hidden_text_layers) == (6, 12)
    assert (p.vocab_size, p.max_position_embeddings, p.type_vocab_size) == (30522, 512, 2)
    assert (p.layer_norm_eps, p.videomlp_layer_norm_eps, p.attention_mask_value) == (1e-12, 1e-5, -10000.0)
    assert pre.model.to_dict() == paper_model_config().to_dict()
    assert tiny.model.to_dict() == tiny_model_config().to_dict()
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_any({"hidden_size": 8, "num_heads": 2})
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig(hidden_size=30, num_attention_heads=4)


def _expected_layernorm_keys(cfg: ModelConfig) -> set[str]:
    """The reference rule of spec §3.7 written out for the given depths."""
    names = ["video_encoder.videomlp.LayerNorm", "video_encoder.bert.embeddings.LayerNorm",
             "text_encoder.embeddings.LayerNorm"]
    for prefix, n in (("video_encoder.bert", cfg.num_hidden_video_layers), ("text_encoder", cfg.num_hidden_text_layers)):
        for i in range(n):
            names += [f"{prefix}.encoder.layer.{i}.attention.output.LayerNorm", f"{prefix}.encoder.layer.{i}.output.LayerNorm"]
    return {f"{n}.{leaf}" for n in names for leaf in ("weight", "bias")}


def test_layernorm_only_tiny_paths_and_counts():
    cfg = ModelConfig.from_any(tiny_model_config())
    model = init_model(cfg, seed=0)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    mask = trainable_mask(params, "layernorm_only")
    selected = {flax_path_to_torch_key(p)[0] for p, m in iter_paths(mask) if m}
    assert selected == _expected_layernorm_keys(cfg)
    # the reference's rule on the torch-style names: second-to-last component is LayerNorm
    all_keys = {flax_path_to_torch_key(p)[0] for p, _ in iter_paths(params)}
    assert selected == {k for k in all_keys if k.split(".")[-2] == "LayerNorm"}
    assert len(selected) == 2 * 13
    assert count_trainable(params, "layernorm_only") == 13 * 2 * 32 == layernorm_only_count(cfg) == 832
    assert count_trainable(params, "all") == sum(x.size for x in jax.tree.leaves(params))
    # the same selection from an nnx.State and from the NNX filter
    assert count_trainable(nnx.state(model, nnx.Param), "layernorm_only") == 832
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, trainable_filter("layernorm_only")))) == 832


def test_layernorm_only_paper_size_count():
    """Paper size without allocation: 39 LayerNorms, 59,904 scalars (spec §3.7)."""
    cfg = ModelConfig.from_any(paper_model_config())
    params = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))
    mask = trainable_mask(params, "layernorm_only")
    selected = {flax_path_to_torch_key(p)[0] for p, m in iter_paths(mask) if m}
    assert selected == _expected_layernorm_keys(cfg) and len(selected) == 78
    assert count_trainable(params, "layernorm_only") == 59_904 == layernorm_only_count(cfg) == 39 * 2 * 768
    assert count_trainable(params, "all") == 176_242_176


def test_freeze_non_trainable_updates_only_layernorms():
    cfg = ModelConfig.from_any(tiny_model_config())
    params = nnx.to_pure_dict(nnx.state(init_model(cfg, seed=0), nnx.Param))
    grads = jax.tree.map(jnp.ones_like, params)
    tx = freeze_non_trainable(optax.adam(1e-2), "layernorm_only")
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    mask = trainable_mask(params, "layernorm_only")
    for (path, old), (_, upd), (_, m) in zip(iter_paths(params), iter_paths(new), iter_paths(mask)):
        if m:
            assert np.abs(np.asarray(upd) - np.asarray(old)).min() > 1e-3, path
        else:
            np.testing.assert_array_equal(np.asarray(upd), np.asarray(old))
    # optimiser slots only for the 832 trainable scalars (+ the step count)
    n_state = sum(x.size for x in jax.tree.leaves(state))
    assert n_state == 2 * 832 + 1


def test_summary_command(capsys):
    from norton_jax.models.__main__ import main

    main(["--config", str(ROOT / "configs" / "pretrain.py"), "--summary"])
    text = capsys.readouterr().out
    assert re.search(r"video_encoder\s+67,350,528", text)
    assert re.search(r"text_encoder\s+108,891,648", text)
    assert re.search(r"total\s+176,242,176", text)
    assert re.search(r"layernorm_only\s+59,904", text)
    assert "closed-form cross-check: matches" in text
    assert "poolers" in text


def test_read_state_dict_fixture_keys():
    sd, meta = read_state_dict(FIXTURE / "checkpoint.pt")
    assert meta == {} and len(sd) == 102
    assert all(k.startswith("mmmodel.") for k in sd)


#: Documented in docs/hardware.md ("Precision policy"): bfloat16 encoders with the float32 loss.
BF16_OUTPUT_TOL = 0.1  # max abs error of the encoder outputs (LayerNorm outputs, values of order 1)
BF16_LOSS_RTOL = 0.01  # relative error of Norton's loss on those outputs


def test_bfloat16_encoders_keep_parity_with_the_reference_fixture(expected):
    """The reference checkpoint in bfloat16 compute: outputs and the (float32) loss stay within
    the documented tolerance of the fixture's float32 reference values."""
    from norton_jax.losses import norton_loss

    model = build_pretrained(FIXTURE / "checkpoint.pt", fixture_config().replace(dtype="bfloat16"))
    model.eval()
    inputs = (expected["caps"], expected["cmasks"], expected["vfeats"], expected["vmasks"])
    out = nnx.jit(lambda mdl, *x: mdl(*x))(model, *inputs)
    for key in ("pooled_video", "pooled_text", "video_outputs", "text_outputs"):
        assert out[key].dtype == jnp.float32
        err = np.abs(np.asarray(out[key], np.float64) - expected[key]).max()
        assert 0 < err < BF16_OUTPUT_TOL, (key, err)

    def loss(o):
        return float(norton_loss(o["pooled_video"], o["pooled_text"], o["video_outputs"], o["text_outputs"],
                                 o["video_mask_outputs"], o["text_mask_outputs"], seq_len=3)[0])

    ref = loss({k: jnp.asarray(v) for k, v in expected.items()})
    got = loss(out)
    assert abs(got - ref) / abs(ref) < BF16_LOSS_RTOL, (got, ref)
