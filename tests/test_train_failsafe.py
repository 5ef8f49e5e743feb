"""Training fails safely: failed saves, signals, bad configs, store typos, damaged or foreign
checkpoints, duplicated metric rows, and the command's one-line errors and exit statuses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from norton_jax import cli, train
from norton_jax.checkpoint import Checkpointer
from norton_jax.cli import ConfigError
from norton_jax.models.config import load_config_file
from norton_jax.train import train_and_evaluate, truncate_metrics
from norton_jax.finetune.config import validate_finetune_config
from norton_jax.training.validate import validate_config
from test_train import read_metrics, small_config, store  # noqa: F401 - `store` is a fixture

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "train_worker.py"


def _fast(config):
    config.train.hard_negatives.enabled = False
    return config


def _cli_flags(store_dir: str, workdir: str, **train_overrides) -> list[str]:
    """``python -m norton_jax.train`` flags for :func:`test_train.small_config`'s run."""
    values = dict(steps=6, checkpoint_every=2, log_every=1, keep_checkpoints=10, progress=False)
    values.update(train_overrides)
    return [
        "--config", str(ROOT / "configs" / "tiny.py"), "--workdir", workdir,
        f"--config.data.store={store_dir}", "--config.data.build_if_missing=", "--config.data.videos_per_device=2",
        "--config.model.hidden_size=16", "--config.model.intermediate_size=32",
        "--config.model.num_hidden_video_layers=1", "--config.model.num_hidden_text_layers=1",
        "--config.train.hard_negatives.enabled=false",
        *(f"--config.train.{k}={v}" for k, v in values.items()),
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NORTON_DEBUG", None)
    return env


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def _unlock(path: str) -> None:
    """Undoes what the failsave worker did to the folder (chattr +i or chmod a-w)."""
    if os.path.isdir(path):
        if os.geteuid() == 0 and shutil.which("chattr"):
            subprocess.run(["chattr", "-i", path], capture_output=True, timeout=30)
        os.chmod(path, 0o755)


# -- 1. a failed save --------------------------------------------------------------------

@pytest.mark.slow
def test_a_failed_save_stops_the_run_with_one_error_and_the_process_exits(store, tmp_path):
    workdir = str(tmp_path / "w")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    try:
        proc = subprocess.run([sys.executable, str(WORKER), "failsave", "4", *_cli_flags(store, workdir)],
                              cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    finally:
        _unlock(ckpt_dir)
    assert "failsave-method:" in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == cli.EXIT_USER_ERROR, proc.stderr[-3000:]
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f"could not save checkpoint step 4 to {ckpt_dir}/4" in errors[0]
    assert "the last good checkpoint is step 2" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(os.path.join(workdir, "summary.json"))
    with Checkpointer(ckpt_dir) as ckpt:  # the last good checkpoint is intact and verified
        assert ckpt.all_steps() == [2]
        assert ckpt.damage(2) is None
    # Resuming once the folder is writable again continues from step 2, one row per step.
    config = _fast(small_config(store, steps=6, checkpoint_every=2))
    summary = train_and_evaluate(config, workdir)
    assert summary["step"] == 6
    assert sorted(read_metrics(workdir)) == list(range(1, 7))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, 7))


# -- 2. signals and exit statuses --------------------------------------------------------

@pytest.mark.slow
def test_sigterm_saves_and_the_command_exits_143(store, tmp_path):
    workdir = tmp_path / "term"
    proc = subprocess.Popen(
        [sys.executable, "-m", "norton_jax.train", *_cli_flags(store, str(workdir), steps=500, checkpoint_every=1000)],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = workdir / "metrics.jsonl"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "training ended before it could be signalled"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM == 143, err[-3000:]
    summary = json.loads(out)
    assert summary["interrupted"] is True and summary["signal"] == signal.SIGTERM
    assert 2 <= summary["step"] < 500
    assert summary["checkpoint"] == str(workdir / "checkpoints" / str(summary["step"]))
    assert os.path.isdir(summary["checkpoint"])
    with Checkpointer(workdir / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [summary["step"]]
    assert json.loads((workdir / "summary.json").read_text()) == summary


def test_exit_status_of_a_summary():
    assert train.exit_status({"interrupted": False}) == 0
    assert train.exit_status({"interrupted": True, "signal": signal.SIGTERM}) == 143
    assert train.exit_status({"interrupted": True, "signal": signal.SIGINT}) == 130


# -- 3. config validation ----------------------------------------------------------------

@pytest.mark.parametrize("field,value,expected", [
    ("train.steps", 0, "config.train.steps=0 (must be an integer >= 1)"),
    ("train.steps", -5, "config.train.steps=-5"),
    ("optim.lr", -1.0, "config.optim.lr=-1.0 (must be a finite number > 0)"),
    ("optim.lr", float("nan"), "config.optim.lr=nan"),
    ("data.videos_per_device", 0, "config.data.videos_per_device=0 (must be an integer >= 1)"),
    ("train.checkpoint_every", 0, "config.train.checkpoint_every=0"),
    ("train.log_every", 0, "config.train.log_every=0"),
    ("train.keep_checkpoints", 0, "config.train.keep_checkpoints=0"),
    ("loss.epsilon", 0.0, "config.loss.epsilon=0.0 (must be a finite number > 0)"),
    ("loss.prompt_ratio", 1.5, "config.loss.prompt_ratio=1.5 (must be a finite number in (0, 1] or None)"),
    ("loss.seq_len", 3, "config.loss.seq_len=3 (must be a divisor of the 16 clips per video"),
    ("loss.num_iters", 0, "config.loss.num_iters=0"),
    ("loss.beta", 2.0, "config.loss.beta=2.0 (must be a finite number in [0, 1])"),
    ("loss.clip_similarity_kind", "median", "config.loss.clip_similarity_kind='median' (must be one of"),
    ("train.trainable", "some", "config.train.trainable='some'"),
    ("train.negatives", "remote", "config.train.negatives='remote'"),
])
def test_each_bad_value_is_named(field, value, expected):
    config = load_config_file(str(ROOT / "configs" / "tiny.py"))
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert expected in str(info.value)


def test_all_bad_values_come_in_one_error_before_any_work(store, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("expensive work started before the config was checked")

    for name in ("resolve_store", "build_model", "Checkpointer"):
        monkeypatch.setattr(train, name, never)
    config = small_config(store, steps=0)
    config.optim.lr = -1.0
    config.loss.epsilon = 0.0
    config.loss.prompt_ratio = 1.5
    with pytest.raises(ConfigError, match=r"^4 invalid config values: ") as info:
        train_and_evaluate(config, str(tmp_path / "w"))
    for field in ("train.steps=0", "optim.lr=-1.0", "loss.epsilon=0.0", "loss.prompt_ratio=1.5"):
        assert f"config.{field}" in str(info.value)
    assert not os.path.exists(tmp_path / "w")
    for name in ("tiny", "pretrain", "ablation"):
        config = load_config_file(str(ROOT / "configs" / f"{name}.py") + (":J" if name == "ablation" else ""))
        config.data.store = config.data.store or "somewhere"
        validate_config(config)  # the shipped configs pass


def test_finetune_config_values_are_checked_together():
    for name in ("finetune_coin", "finetune_msrvtt", "finetune_msrvtt_qa"):
        config = load_config_file(str(ROOT / "configs" / f"{name}.py") + ":tiny")
        config.data.dir = "DATA"
        validate_finetune_config(config)
    config = load_config_file(str(ROOT / "configs" / "finetune_msrvtt.py") + ":tiny")
    config.data.dir = "DATA"
    config.train.log_every = 0
    config.train.batch_size = 1
    config.optim.lr = 0.0
    with pytest.raises(ConfigError, match="3 invalid fine-tuning config values") as info:
        validate_finetune_config(config)
    for field in ("train.log_every=0", "train.batch_size=1", "optim.lr=0.0"):
        assert f"config.{field}" in str(info.value)


# -- 4. the feature store ----------------------------------------------------------------

def test_a_mistyped_store_is_an_error_not_a_demo_build(tmp_path, monkeypatch):
    from data_pipeline import youcook2_mnc

    built = []
    monkeypatch.setattr(youcook2_mnc, "build", lambda out, *a, **k: built.append(out))
    config = load_config_file(str(ROOT / "configs" / "tiny.py"))  # build_if_missing='youcook2-mnc'
    typo = str(tmp_path / "data" / "biuld" / "youcook2-mnc")
    config.data.store = typo
    with pytest.raises(FileNotFoundError) as info:
        train.resolve_store(config)
    msg = str(info.value)
    assert f"config.data.store={typo!r}" in msg
    assert f"`python -m data_pipeline.build youcook2-mnc --out {typo}`" in msg
    assert built == [] and not os.path.exists(typo)
    # The config's default folder (relative to the working directory) is still built on demand ...
    monkeypatch.chdir(tmp_path)
    config.data.store = "data/build/youcook2-mnc"
    assert train.resolve_store(config) == "data/build/youcook2-mnc" and built == ["data/build/youcook2-mnc"]
    # ... and any folder when asked explicitly.
    config.data.store = typo
    config.data.build_anywhere = True
    train.resolve_store(config)
    assert built[-1] == typo


# -- 5. damaged checkpoints on resume ------------------------------------------------------

def test_training_resumes_from_the_newest_intact_step(store, tmp_path, capfd):
    workdir = str(tmp_path / "w")
    train_and_evaluate(_fast(small_config(store, steps=4, checkpoint_every=2)), workdir)
    data = sorted(Path(workdir, "checkpoints", "4", "params").rglob("d/*"), key=lambda p: p.stat().st_size)
    with open(data[-1], "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    capfd.readouterr()
    summary = train_and_evaluate(_fast(small_config(store, steps=6, checkpoint_every=2)), workdir)
    err = capfd.readouterr().err
    assert "checkpoint step 4 in" in err and "is damaged" in err
    assert "resuming from step 2, the newest intact checkpoint" in err
    assert summary["step"] == 6
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [2, 4, 6] and ckpt.damage(4) is None  # step 4 written again
    assert os.path.isdir(os.path.join(workdir, "checkpoints.damaged", "4"))
    assert sorted(read_metrics(workdir)) == list(range(1, 7))


# -- 6. another geometry -------------------------------------------------------------------

def test_resuming_with_another_geometry_names_both_and_keeps_config_json(store, tmp_path):
    workdir = str(tmp_path / "w")
    train_and_evaluate(_fast(small_config(store, steps=2, checkpoint_every=2)), workdir)
    config_json = Path(workdir, "config.json").read_bytes()
    other = _fast(small_config(store, steps=4))
    other.model.hidden_size = 32
    other.model.intermediate_size = 64
    with pytest.raises(ConfigError) as info:
        train_and_evaluate(other, workdir)
    msg = str(info.value)
    assert "another model geometry" in msg
    assert "hidden_size: checkpoint 16 vs config 32" in msg and "intermediate_size: checkpoint 32 vs config 64" in msg
    assert Path(workdir, "config.json").read_bytes() == config_json


# -- 7. metrics.jsonl ----------------------------------------------------------------------

def test_truncate_metrics_keeps_each_step_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": s / 10} for s in (1, 2, 3, 4, 3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo')  # a torn last row
    assert truncate_metrics(str(path), 2) == 5
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert truncate_metrics(str(path), 2) == 0


@pytest.mark.slow
def test_a_resume_after_a_lost_save_logs_each_step_once(store, tmp_path):
    workdir = str(tmp_path / "w")
    train_and_evaluate(_fast(small_config(store, steps=4, checkpoint_every=2)), workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))  # killed while step 4 was being saved
    train_and_evaluate(_fast(small_config(store, steps=4, checkpoint_every=2)), workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]


# -- 8. the command line -------------------------------------------------------------------

def test_the_command_reports_user_errors_in_one_line(store, tmp_path):
    workdir = str(tmp_path / "w")
    flags = _cli_flags(store, workdir, steps=0) + ["--config.optim.lr=-1"]
    proc = subprocess.run([sys.executable, "-m", "norton_jax.train", *flags], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == cli.EXIT_USER_ERROR, proc.stderr[-3000:]
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert errors[0].startswith("python -m norton_jax.train: error: 2 invalid config values:")
    assert "config.train.steps=0" in errors[0] and "config.optim.lr=-1.0" in errors[0]
    assert not os.path.exists(os.path.join(workdir, "summary.json"))

    proc = subprocess.run([sys.executable, "-m", "norton_jax.train", *flags, "--debug"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == cli.EXIT_USER_ERROR and "Traceback" in proc.stderr and "ConfigError" in proc.stderr

    proc = subprocess.run([sys.executable, "-m", "norton_jax.train", "--workdir", workdir, "--no_such_flag=1"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == cli.EXIT_USER_ERROR and len(_error_lines(proc.stderr)) == 1, proc.stderr
    assert "no_such_flag" in proc.stderr

    proc = subprocess.run([sys.executable, "-m", "norton_jax.finetune", "--config",
                           str(ROOT / "configs" / "finetune_coin.py") + ":tiny", "--workdir", workdir],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == cli.EXIT_USER_ERROR, proc.stderr[-3000:]
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and "no data folder: pass --data DIR" in errors[0], proc.stderr[-3000:]


def test_finetune_stops_on_sigterm_with_the_signal_in_its_summary(tmp_path, monkeypatch):
    from norton_jax.finetune import data as ft_data
    from norton_jax.finetune import standins
    from norton_jax.finetune.trainer import finetune

    root = tmp_path / "msrvtt"
    standins.write_msrvtt(root, num_train=8, num_qa_train=8, num_test=6, seconds=(4, 8))
    config = load_config_file(str(ROOT / "configs" / "finetune_msrvtt.py") + ":tiny")
    config.model.update(dict(hidden_size=16, intermediate_size=32, num_hidden_video_layers=1,
                             num_hidden_text_layers=1))
    config.data.dir = str(root)
    config.train.update(dict(progress=False, log_every=1, batch_size=4, steps=6, checkpoint_every=100))
    config.eval.update(dict(at_start=False, at_end=False))
    original = ft_data.CaptionBatches.__call__

    def terminate_at_step_2(self, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step)

    monkeypatch.setattr(ft_data.CaptionBatches, "__call__", terminate_at_step_2)
    summary = finetune(config, str(tmp_path / "w"))
    assert summary["interrupted"] and summary["signal"] == signal.SIGTERM and summary["step"] == 2
    assert summary["checkpoint"] == str(tmp_path / "w" / "checkpoints" / "2") and os.path.isdir(summary["checkpoint"])
    assert train.exit_status(summary) == 143
