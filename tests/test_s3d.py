"""S3D-G in Flax (norton_jax.s3d): parity with a PyTorch S3D-G on the same state dict, the
importer's checks, the TF-style pooling, batching."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from s3d_testing import test_frames, torch_s3d, write_random_s3d_weights  # noqa: E402

from norton_jax.cli import UserError  # noqa: E402
from norton_jax.s3d import S3DEncoder, S3DWeightsError, build_s3d, l2_normalize, read_state_dict  # noqa: E402
from norton_jax.s3d.model import space_to_depth, tf_same_max_pool  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_random_s3d_weights(tmp_path_factory.mktemp("s3d") / "s3d_howto100m.pth", seed=0)


@pytest.fixture(scope="module")
def state_dict(weights):
    return read_state_dict(weights)


def _torch_embedding(model, chunks: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(chunks.astype(np.float32) / 255.0).permute(0, 4, 1, 2, 3)  # [B, 3, T, H, W]
    with torch.no_grad():
        return model(x).numpy()


def test_forward_matches_torch_float32(state_dict):
    # 2 chunks of 30 frames at 48 x 48: odd sizes after space-to-depth (15 steps, 3 x 3 before
    # maxpool_5a), so the ceil-mode partial windows and the zero padding are exercised
    first = test_frames(30, 48, 48, seed=1)
    chunks = np.stack([first, 255 - first[:, ::-1]])  # a second chunk unlike the first
    ref = _torch_embedding(torch_s3d(seed=0), chunks)
    ours = S3DEncoder(build_s3d(state_dict), batch_size=2, normalize=False)(chunks)
    assert ours.shape == (2, 512) and ours.dtype == np.float32
    scale = np.abs(ref).max()
    assert 0.05 < scale < 100  # the random BatchNorm statistics keep activations in range
    assert np.abs(ours - ref).max() <= 1e-4 * scale
    # a random S3D's output is mostly input-independent (BatchNorm shifts, ReLU, mean pooling): the
    # part that depends on the input must match too, to 1% of its own size
    signal = ref[0] - ref[1]
    assert np.abs(signal).max() > 0.005 * scale
    assert np.abs((ours[0] - ours[1]) - signal).max() <= 1e-2 * np.abs(signal).max()


def test_bfloat16_is_close_to_float32(state_dict):
    chunks = test_frames(48, 32, 32, seed=3).reshape(3, 16, 32, 32, 3)[:1]
    f32 = S3DEncoder(build_s3d(state_dict), batch_size=1, normalize=False)(chunks)
    bf16 = S3DEncoder(build_s3d(state_dict, dtype=jnp.bfloat16), batch_size=1, normalize=False)(chunks)
    assert bf16.dtype == np.float32
    cos = float(np.sum(f32 * bf16) / (np.linalg.norm(f32) * np.linalg.norm(bf16)))
    assert cos > 0.99
    assert np.abs(bf16 - f32).max() > 0  # it did compute in bfloat16


def test_l2_normalize():
    x = jnp.asarray([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(l2_normalize(x)), [[0.6, 0.8], [0.0, 0.0]])


def test_batches_are_padded_without_changing_results(state_dict):
    chunks = test_frames(48, 32, 32, seed=3).reshape(3, 16, 32, 32, 3)
    model = build_s3d(state_dict)
    one = S3DEncoder(model, batch_size=1, normalize=False)(chunks)
    padded = S3DEncoder(model, batch_size=4, normalize=False)(chunks)  # 3 chunks padded to 4
    np.testing.assert_allclose(padded, one, rtol=1e-5, atol=1e-5 * np.abs(one).max())
    with pytest.raises(ValueError, match="uint8"):
        S3DEncoder(model, batch_size=1)(chunks.astype(np.float32))


def test_space_to_depth_matches_the_reference_channel_order():
    x = np.random.default_rng(0).normal(size=(2, 4, 6, 8, 3)).astype(np.float32)  # [B, T, H, W, C]
    t = torch.from_numpy(x).permute(0, 4, 1, 2, 3)  # [B, C, T, H, W]
    b, c, tt, h, w = t.shape
    ref = t.reshape(b, c, tt // 2, 2, h // 2, 2, w // 2, 2).permute(0, 3, 5, 7, 1, 2, 4, 6)
    ref = ref.reshape(b, 8 * c, tt // 2, h // 2, w // 2).permute(0, 2, 3, 4, 1).numpy()
    np.testing.assert_array_equal(np.asarray(space_to_depth(jnp.asarray(x))), ref)


@pytest.mark.parametrize("shape,kernel,stride", [
    ((5, 7, 9), (1, 3, 3), (1, 2, 2)), ((15, 8, 8), (3, 3, 3), (2, 2, 2)), ((3, 3, 5), (2, 2, 2), (2, 2, 2)),
    ((8, 12, 12), (2, 2, 2), (2, 2, 2)),
])
def test_tf_same_max_pool_matches_zero_pad_and_ceil_mode(shape, kernel, stride):
    x = np.random.default_rng(1).normal(size=(1, *shape, 4)).astype(np.float32)  # negatives: zero pad shows
    pads = []
    for k, s in zip(kernel, stride):
        along = max(k - s, 0)
        pads += [along // 2, along - along // 2]
    t = torch.from_numpy(x).permute(0, 4, 1, 2, 3)
    t = torch.nn.functional.pad(t, (pads[4], pads[5], pads[2], pads[3], pads[0], pads[1]))
    ref = torch.nn.functional.max_pool3d(t, kernel, stride, ceil_mode=True).permute(0, 2, 3, 4, 1).numpy()
    ours = np.asarray(tf_same_max_pool(jnp.asarray(x), kernel, stride))
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


def test_importer_layouts_and_ignored_keys(state_dict, tmp_path):
    assert "text_module.fc2.weight" in state_dict  # ignored, like the real file's text tower
    model = build_s3d(state_dict)
    kernel = np.asarray(model.mixed_4b.conv_b1_b.conv2.kernel[...])
    np.testing.assert_array_equal(kernel, state_dict["mixed_4b.conv_b1_b.conv2.weight"].transpose(2, 3, 4, 1, 0))
    np.testing.assert_array_equal(np.asarray(model.fc.kernel[...]), state_dict["fc.weight"].T)
    np.testing.assert_array_equal(np.asarray(model.conv1.bn1.var[...]), state_dict["conv1.bn1.running_var"])
    # a DataParallel prefix and the numpy formats give the same parameters
    np.savez(tmp_path / "w.npz", **{f"module.{k}": v for k, v in state_dict.items()})
    again = build_s3d(read_state_dict(tmp_path / "w.npz"))
    a, b = nnx.state(model), nnx.state(again)
    for (path, x), (_, y) in zip(nnx.to_flat_state(a), nnx.to_flat_state(b)):
        np.testing.assert_array_equal(np.asarray(x[...]), np.asarray(y[...]), err_msg=str(path))


def test_importer_errors_name_the_key(state_dict, tmp_path):
    def attempt(sd):
        with pytest.raises(S3DWeightsError) as info:
            build_s3d(sd, source="w.pth")
        assert isinstance(info.value, UserError)
        return str(info.value)

    missing = {k: v for k, v in state_dict.items() if k != "mixed_5c.gating_b3.fc.bias"}
    assert "w.pth: missing key 'mixed_5c.gating_b3.fc.bias'" in attempt(missing)
    wrong = dict(state_dict, **{"conv1.conv1.weight": np.zeros((64, 3, 3, 7, 7), np.float32)})  # no space-to-depth
    assert "'conv1.conv1.weight' has shape (64, 3, 3, 7, 7)" in attempt(wrong)
    extra = dict(state_dict, **{"mixed_6a.conv_b0.conv1.weight": np.zeros(1, np.float32)})
    assert "mixed_6a.conv_b0.conv1.weight" in attempt(extra)
    bad = dict(state_dict)
    bad["fc.bias"] = state_dict["fc.bias"].copy()
    bad["fc.bias"][3] = np.nan
    assert "'fc.bias' holds NaN" in attempt(bad)
    with pytest.raises(S3DWeightsError, match="not found.*docs/extraction.md"):
        read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(S3DWeightsError, match="junk.pth: cannot read the S3D weights"):
        read_state_dict(tmp_path / "junk.pth")
