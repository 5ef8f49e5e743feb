"""Damaged checkpoints are detected, reported in one error, and never loaded silently."""

from __future__ import annotations

import glob
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from norton_jax import checkpoint as checkpoint_lib
from norton_jax.checkpoint import CheckpointDamagedError, CheckpointError, Checkpointer
from norton_jax.cli import UserError
from norton_jax.models import ModelConfig, abstract_model, init_model, tiny_model_config

CFG = ModelConfig.from_any(tiny_model_config()).replace(
    hidden_size=16, intermediate_size=32, num_hidden_text_layers=2, num_hidden_video_layers=2)


def _params(seed: int) -> dict:
    return nnx.to_pure_dict(nnx.state(init_model(CFG, seed=seed), nnx.Param))


def _save_steps(root, steps=(1, 2)) -> dict[int, dict]:
    saved = {}
    with Checkpointer(root, max_to_keep=None, model_config=CFG) as ckpt:
        for step in steps:
            saved[step] = _params(step)
            ckpt.save(step, params=saved[step], opt_state={"m": jnp.full((4,), float(step))}, force=True)
    return saved


def _data_files(root, step: int, item: str = "params") -> list[str]:
    """The files holding the item's array bytes (orbax's OCDBT store), largest first."""
    files = glob.glob(os.path.join(root, str(step), item, "**", "d", "*"), recursive=True)
    return sorted((f for f in files if os.path.isfile(f)), key=os.path.getsize, reverse=True)


def _flip_a_stored_byte(root, step: int, array: np.ndarray) -> str:
    """Flips one byte of ``array``'s stored bytes (found in the data files when stored raw,
    else in the middle of the largest data file, e.g. a compressed chunk)."""
    needle = np.ascontiguousarray(array).reshape(-1)[100:116].tobytes()
    for path in _data_files(root, step):
        blob = open(path, "rb").read()
        at = blob.find(needle)
        if at >= 0:
            break
    else:
        path = _data_files(root, step)[0]
        at = os.path.getsize(path) // 2
    with open(path, "r+b") as f:
        f.seek(at + 5)
        byte = f.read(1)
        f.seek(at + 5)
        f.write(bytes([byte[0] ^ 0x01]))
    return path


def test_the_checksum_is_verified_with_and_without_templates(tmp_path):
    """Saved with integer layer keys, restored with string keys (no template): same checksum."""
    root = str(tmp_path / "ckpt")
    saved = _save_steps(root, steps=(1,))
    meta = json.load(open(os.path.join(root, "1", "meta", "metadata")))
    digest = meta["params_digest"]
    assert digest["algorithm"] == "sha256" and len(digest["hexdigest"]) == 64
    assert digest["leaves"]["video_encoder/bert/encoder/layers/1/output/dense/kernel"] == [[32, 16], "float32"]
    with Checkpointer(root, enable_async=False) as ckpt:
        plain = ckpt.restore(1)  # string keys
        templated = ckpt.restore(1, params=nnx.state(abstract_model(CFG), nnx.Param))
    assert checkpoint_lib.params_digest(plain.params)["hexdigest"] == digest["hexdigest"]
    assert checkpoint_lib.params_digest(saved[1])["hexdigest"] == digest["hexdigest"]
    assert templated.step == 1


def test_a_flipped_byte_in_the_stored_parameters_is_detected(tmp_path):
    root = str(tmp_path / "ckpt")
    saved = _save_steps(root)
    kernel = np.asarray(saved[2]["video_encoder"]["bert"]["encoder"]["layers"][1]["output"]["dense"]["kernel"])
    _flip_a_stored_byte(root, 2, kernel)
    template = nnx.state(abstract_model(CFG), nnx.Param)
    with Checkpointer(root, enable_async=False) as ckpt:
        for kwargs in (dict(params=template), dict()):  # with a template (training) and without (export)
            with pytest.raises(CheckpointDamagedError) as info:
                ckpt.restore(**kwargs)
            msg = str(info.value)
            assert f"checkpoint step 2 in {root} is damaged" in msg
            assert "pass --step 1" in msg and "steps on disk: [1, 2]" in msg
        assert ckpt.damage(2) is not None and ckpt.damage(1) is None
        r = ckpt.restore(1, params=template)  # the intact step still loads, verified
        assert r.step == 1
    assert isinstance(info.value, UserError)


@pytest.mark.parametrize("how", ["delete", "truncate"])
def test_a_missing_or_truncated_data_file_is_one_clear_error(tmp_path, how):
    root = str(tmp_path / "ckpt")
    _save_steps(root)
    path = _data_files(root, 2)[0]
    if how == "delete":
        os.remove(path)
    else:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    with Checkpointer(root, enable_async=False) as ckpt:
        with pytest.raises(CheckpointDamagedError, match=r"checkpoint step 2 in .* is damaged \(params: .*"
                                                         r"the newest intact step is 1: pass --step 1"):
            ckpt.restore(params=nnx.state(abstract_model(CFG), nnx.Param))
        assert "\n" not in str(ckpt.damage(2))


def test_missing_metadata_is_damage_too(tmp_path):
    root = str(tmp_path / "ckpt")
    _save_steps(root)
    os.remove(os.path.join(root, "2", "meta", "metadata"))
    with Checkpointer(root, enable_async=False) as ckpt:
        with pytest.raises(CheckpointDamagedError, match="step 2 .* metadata cannot be read.*pass --step 1"):
            ckpt.model_config()
        with pytest.raises(CheckpointDamagedError, match="step 2"):
            ckpt.restore()


def test_checkpoints_without_a_checksum_still_load(tmp_path, monkeypatch):
    root = str(tmp_path / "old")
    monkeypatch.setattr(checkpoint_lib.trees, "params_digest", lambda tree: None)  # as before checksums
    _save_steps(root, steps=(1,))
    monkeypatch.undo()
    meta = json.load(open(os.path.join(root, "1", "meta", "metadata")))
    assert not meta.get("params_digest")
    with Checkpointer(root, enable_async=False) as ckpt:
        assert ckpt.restore(params=nnx.state(abstract_model(CFG), nnx.Param)).step == 1


def test_a_template_mismatch_is_not_called_damage(tmp_path):
    root = str(tmp_path / "ckpt")
    _save_steps(root, steps=(1,))
    other = nnx.state(abstract_model(CFG.replace(hidden_size=32, intermediate_size=64)), nnx.Param)
    with Checkpointer(root, enable_async=False) as ckpt:
        with pytest.raises(CheckpointError, match="step 1 .* does not fit") as info:
            ckpt.restore(params=other)
    assert not isinstance(info.value, CheckpointDamagedError)


def test_export_of_a_damaged_latest_step_names_the_intact_one(tmp_path):
    from norton_jax.export_torch import export_checkpoint

    workdir = tmp_path / "run"
    root = str(workdir / "checkpoints")
    _save_steps(root)
    path = _data_files(root, 2)[0]
    with open(path, "r+b") as f:
        f.truncate(10)
    with pytest.raises(CheckpointDamagedError, match="step 2 .*pass --step 1"):
        export_checkpoint(str(workdir), tmp_path / "out.safetensors")
    export_checkpoint(str(workdir), tmp_path / "out.safetensors", step=1)
    assert os.path.getsize(tmp_path / "out.safetensors") > 0


def test_set_aside_moves_a_step_out_of_the_checkpoint_folder(tmp_path):
    root = str(tmp_path / "ckpt")
    _save_steps(root)
    with Checkpointer(root, enable_async=False) as ckpt:
        dest = ckpt.set_aside(2)
        assert ckpt.all_steps() == [1] and ckpt.latest_step() == 1
    assert dest == root + ".damaged/2" and os.path.isdir(dest)
