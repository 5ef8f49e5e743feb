"""What the align, evaluate, export/import and models commands do with bad input.

Each command reports a user's mistake as one ``error:`` line and exit status 2 (``--debug``
shows the traceback), refuses non-finite features naming the file, the video and the first
bad frame, checks its outputs before the work, and names only flags that it has.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from norton_jax import align as A
from norton_jax import cli
from norton_jax import export_torch, import_torch
from norton_jax.checkpoint import Checkpointer
from norton_jax.evaluate import __main__ as evaluate_cli
from norton_jax.models import ModelConfig, init_model, tiny_model_config
from norton_jax.models import __main__ as models_cli

ROOT = Path(__file__).resolve().parents[1]
CFG = ModelConfig.from_any(tiny_model_config()).replace(num_hidden_text_layers=1, num_hidden_video_layers=1)
DIM = 512


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training workdir with two checkpoints of different weights (steps 3 and 5)."""
    root = tmp_path_factory.mktemp("failsafe_work")
    with Checkpointer(root / "checkpoints", model_config=CFG, enable_async=False) as ckpt:
        for step, seed in ((3, 0), (5, 1)):
            ckpt.save(step, params=nnx.state(init_model(CFG, seed=seed), nnx.Param), force=True)
    return root


@pytest.fixture(scope="module")
def nan_store(tmp_path_factory):
    """A youcook2-mnc-like store whose second video has a NaN at frame 9 (the writer's own
    check is bypassed, as a store written by another tool or damaged in place would be)."""
    from data_pipeline import feature_store as fs
    from data_pipeline import store_writer  # the writer looks validate_record up in its own module
    from data_pipeline.tokenization import tokenize_captions

    root = tmp_path_factory.mktemp("nan_store")
    rng = np.random.default_rng(0)
    check = store_writer.validate_record
    store_writer.validate_record = lambda *a, **k: None
    try:
        with fs.FeatureStoreWriter(str(root), "val") as writer:
            for v in range(2):
                feats = rng.normal(size=(40, DIM)).astype(np.float16)
                if v == 1:
                    feats[9, 4] = np.nan
                texts = ["step one", "step two"]
                writer.add(fs.VideoRecord(
                    video_id=f"vid{v}", features=feats, starts=np.asarray([2, 20], np.float32),
                    ends=np.asarray([10, 30], np.float32), tokens=tokenize_captions(texts), texts=texts,
                    gt_start=np.asarray([1, 19], np.float32), gt_end=np.asarray([9, 29], np.float32),
                    gt_alignable=np.asarray([1, 1], np.int64), gt_text=texts,
                ))
    finally:
        store_writer.validate_record = check
    return root


def _run(capsys, main, *args):
    code = cli.run(main, [str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _msrvtt(folder: Path, bad_video: str | None = None) -> Path:
    """MSR-VTT test files for 5 videos; ``bad_video`` gets a NaN at frame 3."""
    vids = [f"video{7000 + i}" for i in range(5)]
    rows = ["key,vid_key,video_id,sentence"] + [f"r{i},msr{7000 + i},{v},a person does thing {i}"
                                                for i, v in enumerate(vids)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MSRVTT_JSFUSION_test.csv").write_text("\n".join(rows) + "\n")
    feats = folder / "msrvtt_feature_fps30_512"
    feats.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for v in vids:
        x = rng.normal(size=(20, DIM)).astype(np.float32)
        if v == bad_video:
            x[3, 0] = np.nan
        np.save(feats / f"{v}.npy", x)
    return folder


# ---------------------------------------------------------------------------------------
# Non-finite features
# ---------------------------------------------------------------------------------------


def test_evaluate_refuses_nan_features_of_a_feature_folder(workdir, tmp_path, capsys):
    data = _msrvtt(tmp_path / "msrvtt", bad_video="video7002")
    out = tmp_path / "m.json"
    code, stdout, err = _run(capsys, evaluate_cli.main, "--checkpoint", workdir, "--task", "msrvtt",
                             "--data", data, "--out", out)
    line = _one_error_line(err)
    assert code == cli.EXIT_USER_ERROR and "R@1" not in stdout and not out.exists()
    assert "msrvtt_feature_fps30_512/video7002.npy" in line and "video 'video7002'" in line
    assert "non-finite" in line and "first at frame 3" in line


def test_evaluate_refuses_nan_features_of_a_store(workdir, nan_store, capsys):
    code, _, err = _run(capsys, evaluate_cli.main, "--checkpoint", workdir, "--task", "youcook2_clip",
                        "--data", nan_store)
    line = _one_error_line(err)
    assert code == 2 and "val-00000.tfrecord" in line and "video 'vid1'" in line and "first at frame 9" in line


def test_align_store_refuses_nan_features(workdir, nan_store, tmp_path):
    from norton_jax.evaluate.loaders import EvalDataError
    from norton_jax.evaluate.run import load_model

    model, _ = load_model(workdir)
    out = tmp_path / "al.jsonl"
    with pytest.raises(EvalDataError, match=r"val-00000\.tfrecord: video 'vid1': .*first at frame 9"):
        A.align_store(model, nan_store, "val", out_jsonl=out)
    assert not out.exists() and not list(tmp_path.glob("al.jsonl*"))  # no half-written result left


def _video_and_captions(tmp_path, frames=60, nan_frame=None, captions="start,end,text\n2,8,crack eggs\n20,30,whisk\n"):
    feats = np.random.default_rng(0).normal(size=(frames, DIM)).astype(np.float32)
    if nan_frame is not None:
        feats[nan_frame, 100] = np.nan
    np.save(tmp_path / "video.npy", feats)
    (tmp_path / "caps.csv").write_text(captions, encoding="utf-8")
    return tmp_path / "video.npy", tmp_path / "caps.csv"


def test_align_refuses_nan_features(workdir, tmp_path, capsys):
    video, caps = _video_and_captions(tmp_path, nan_frame=17)
    out = tmp_path / "aligned.json"
    code, _, err = _run(capsys, A.main, "--checkpoint", workdir, "--features", video, "--captions", caps,
                        "--out", out)
    line = _one_error_line(err)
    assert code == 2 and not out.exists()
    assert "video.npy: video 'video'" in line and "first at frame 17" in line


# ---------------------------------------------------------------------------------------
# Align: captions and their file
# ---------------------------------------------------------------------------------------


def test_align_caption_errors_name_the_file_and_the_csv_line(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("start,end,text\n1,3,a\n5,4,b\n")
    with pytest.raises(ValueError, match=r"c\.csv: line 3: end 4\.0 < start 5\.0"):
        A.read_captions(p)
    p.write_text("start,end,text\n1,3,a\n\n-1,4,b\n")  # a blank line still counts
    with pytest.raises(ValueError, match=r"c\.csv: line 4: start -1\.0 is negative"):
        A.read_captions(p)
    p.write_text('start,end,text\n1,3,"two\nlines"\n2,x,b\n')  # a quoted newline counts too
    with pytest.raises(ValueError, match=r"c\.csv: line 4 end: expected a number"):
        A.read_captions(p)
    p.write_text("start,end,text\n1,3,a,extra\n")
    with pytest.raises(ValueError, match=r"c\.csv: line 2: expected 3 fields"):
        A.read_captions(p)


def test_align_reads_a_csv_with_a_byte_order_mark(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("start,end,text\n1.5,3,crème brûlée\n".encode("utf-8-sig"))
    caps = A.read_captions(p)
    assert caps.texts == ["crème brûlée"] and caps.starts.tolist() == [1.5] and caps.where == ["line 2"]
    j = tmp_path / "bom.json"
    j.write_bytes(json.dumps([{"start": 0, "end": 1, "text": "a"}]).encode("utf-8-sig"))
    assert A.read_captions(j).texts == ["a"]


def test_captions_past_the_features_are_an_error_or_clamped(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("start,end,text\n2,8,a\n50,61,b\n55,65,c\n70,80,d\n")
    caps = A.read_captions(p)
    with pytest.raises(ValueError, match=r"c\.csv: line 4: caption \[55, 65\] s runs past the video's 60 s.*"
                                         r"2 of 4 captions do.*--clamp-to-video"):
        A.fit_captions_to_video(caps, 60, source=p)
    clamped, n = A.fit_captions_to_video(caps, 60, clamp=True, source=p)
    # line 3 ends 1 s past the features: within the ASR tolerance, left as it is
    assert n == 2 and clamped.starts.tolist() == [2, 50, 55, 60] and clamped.ends.tolist() == [8, 61, 60, 60]
    same, n = A.fit_captions_to_video(caps, 80, source=p)  # within the video: untouched
    assert n == 0 and same is caps


def test_align_cli_caption_past_the_features(workdir, tmp_path, capsys):
    video, caps = _video_and_captions(tmp_path, frames=40,
                                      captions="start,end,text\n2,8,crack eggs\n20,30,whisk\n45,50,serve\n")
    out = tmp_path / "aligned.json"
    args = ["--checkpoint", workdir, "--features", video, "--captions", caps, "--out", out]
    code, _, err = _run(capsys, A.main, *args)
    line = _one_error_line(err)
    assert code == 2 and "caps.csv: line 4" in line and "40 s of features" in line and not out.exists()
    code, stdout, _ = _run(capsys, A.main, *args, "--clamp-to-video")
    assert code == 0 and "caps.csv: clamped 1 of 3 captions to the video's 40 s" in stdout
    res = json.loads(out.read_text())
    assert res["clamped_captions"] == 1 and res["captions"][2]["original"] == [40.0, 40.0]
    assert "--clamp-to-video" in A.build_parser().format_help()


# ---------------------------------------------------------------------------------------
# Outputs are checked before the work
# ---------------------------------------------------------------------------------------


def test_unwritable_out_fails_before_the_model_loads(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker / "metrics.json"  # its folder cannot be created: a file is in the way
    missing = tmp_path / "no_checkpoint"  # would fail later, at load time
    code, _, err = _run(capsys, evaluate_cli.main, "--checkpoint", missing, "--task", "msrvtt",
                        "--data", tmp_path, "--out", out)
    line = _one_error_line(err)
    assert code == 2 and f"--out {out}: cannot write in {blocker}" in line
    video, caps = _video_and_captions(tmp_path)
    code, _, err = _run(capsys, A.main, "--checkpoint", missing, "--features", video, "--captions", caps,
                        "--out", out)
    assert code == 2 and f"--out {out}" in _one_error_line(err)
    code, _, err = _run(capsys, A.main, "--checkpoint", missing, "--features", video, "--captions", caps,
                        "--out", tmp_path / "ok.json", "--plot", blocker / "p.png")
    assert code == 2 and "--plot" in _one_error_line(err)
    code, _, err = _run(capsys, evaluate_cli.main, "--checkpoint", missing, "--task", "msrvtt",
                        "--data", tmp_path, "--out", tmp_path)  # a folder, not a file
    assert code == 2 and "is a folder" in _one_error_line(err)


def test_check_writable_creates_the_folder_and_leaves_nothing(tmp_path):
    from norton_jax.evaluate.run import check_writable

    target = tmp_path / "new" / "deeper" / "m.json"
    assert check_writable(target) == target
    assert target.parent.is_dir() and list(target.parent.iterdir()) == []


# ---------------------------------------------------------------------------------------
# Export: which step; messages name existing flags
# ---------------------------------------------------------------------------------------


def test_export_prints_the_step_it_wrote_and_honours_step(workdir, tmp_path, capsys):
    from safetensors.numpy import load_file

    latest, third = tmp_path / "latest.safetensors", tmp_path / "three.safetensors"
    code, stdout, _ = _run(capsys, export_torch.main, "--checkpoint", workdir, "--out", latest)
    assert code == 0 and f"exported step 5 of {workdir / 'checkpoints'}" in stdout
    code, stdout, _ = _run(capsys, export_torch.main, "--checkpoint", workdir, "--out", third, "--step", 3)
    assert code == 0 and "exported step 3 of" in stdout
    key = "video_encoder.videomlp.linear1.weight"
    want = export_torch.export_state_dict(init_model(CFG, seed=0))[key]
    np.testing.assert_array_equal(load_file(str(third))[key], want)
    assert not np.array_equal(load_file(str(latest))[key], want)
    assert not list(tmp_path.glob("*.tmp"))
    code, _, err = _run(capsys, export_torch.main, "--checkpoint", workdir, "--out", tmp_path / "x.safetensors",
                        "--step", 4)
    assert code == 2 and "step 4" in _one_error_line(err)


def test_missing_model_config_messages_name_the_config_flag(tmp_path):
    bare = tmp_path / "bare"
    with Checkpointer(bare, enable_async=False) as ckpt:  # stores no model config
        ckpt.save(1, params=nnx.state(init_model(CFG, seed=0), nnx.Param), force=True)
    with pytest.raises(ValueError, match="--config CONFIG") as err:
        export_torch.export_checkpoint(bare, tmp_path / "x.safetensors")
    assert "CLI:" not in str(err.value)
    with pytest.raises(ValueError, match="--config CONFIG"):
        import_torch.build_pretrained(bare)


class _Opaque:
    """A pickled object (like an omegaconf config) that safe loading refuses."""


def test_refused_pickle_names_only_flags_that_exist(workdir, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    pt = tmp_path / "pickled.pt"
    torch.save({"model": {}, "cfg": _Opaque()}, pt)
    # commands without --trust-pickle point to the converter, which has it
    code, _, err = _run(capsys, evaluate_cli.main, "--checkpoint", pt, "--config", ROOT / "configs" / "tiny.py",
                        "--task", "msrvtt", "--data", tmp_path)
    line = _one_error_line(err)
    assert code == 2 and "python -m norton_jax.import_torch --checkpoint" in line and "--trust-pickle" in line
    assert "CLI: --trust-pickle" not in line
    video, caps = _video_and_captions(tmp_path)
    code, _, err = _run(capsys, A.main, "--checkpoint", pt, "--config", ROOT / "configs" / "tiny.py",
                        "--features", video, "--captions", caps, "--out", tmp_path / "a.json")
    assert code == 2 and "python -m norton_jax.import_torch" in _one_error_line(err)
    # the converter itself names its own flag
    code, _, err = _run(capsys, import_torch.main, "--checkpoint", pt, "--config", ROOT / "configs" / "tiny.py",
                        "--out", tmp_path / "conv")
    line = _one_error_line(err)
    assert code == 2 and "rerun with --trust-pickle" in line and "import_torch --checkpoint" not in line


# ---------------------------------------------------------------------------------------
# One line, exit 2, --debug
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["align", "evaluate", "export_torch", "import_torch", "models"])
def test_user_mistakes_print_one_line_and_debug_shows_the_traceback(name, tmp_path, capsys):
    missing = tmp_path / "missing"
    main, args = {
        "align": (A.main, ["--checkpoint", missing, "--store", missing, "--out", tmp_path / "o.jsonl"]),
        "evaluate": (evaluate_cli.main, ["--checkpoint", missing, "--task", "coin", "--data", tmp_path]),
        "export_torch": (export_torch.main, ["--checkpoint", missing, "--out", tmp_path / "o.safetensors"]),
        "import_torch": (import_torch.main, ["--checkpoint", missing, "--config", ROOT / "configs" / "tiny.py",
                                             "--out", tmp_path / "o"]),
        "models": (models_cli.main, ["--config", tmp_path / "nope.py", "--summary"]),
    }[name]
    code, _, err = _run(capsys, main, *args)
    line = _one_error_line(err)
    assert code == cli.EXIT_USER_ERROR and ("missing" in line or "nope.py" in line)
    code, _, err = _run(capsys, main, *args, "--debug")
    assert code == cli.EXIT_USER_ERROR and "Traceback (most recent call last)" in err


@pytest.mark.parametrize("module,args", [
    ("norton_jax.models", ["--config", "configs/nope.py", "--summary"]),
    ("norton_jax.export_torch", ["--checkpoint", "no/such/dir", "--out", "x.safetensors"]),
])
def test_real_commands_exit_2_with_one_line(module, args, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("NORTON_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"python -m {module}: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
