"""Every command of the project answers ``--help`` with a usage line and a description (the CLI
convention of the README: absl + ml-collections for the trainers, argparse for the tools)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

MODULES = [
    "norton_jax.train", "norton_jax.finetune", "norton_jax.evaluate", "norton_jax.align",
    "norton_jax.extract", "norton_jax.encode", "norton_jax.export_torch", "norton_jax.import_torch",
    "norton_jax.demo", "norton_jax.demo_align", "norton_jax.models", "data_pipeline.build",
    "data_pipeline.check",
]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")
                 if "__main__" in p.read_text() and not p.name.startswith("_"))


def _help(args: list[str]) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, *args, "--help"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    return proc.stdout + proc.stderr


def _described(text: str) -> bool:
    """A usage line plus at least one sentence of description (not only the flag list)."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    prose = [l for l in lines if not l.startswith(("-", "usage", "USAGE", "flags:", "options:"))
             and len(l.split()) >= 6]
    usage = any(l.lower().startswith("usage") or l.startswith("USAGE") for l in lines)
    return (usage or "flags:" in text) and bool(prose)


@pytest.mark.parametrize("module", MODULES)
def test_every_command_has_a_described_help(module):
    text = _help(["-m", module])
    assert _described(text), f"python -m {module} --help does not describe the command:\n{text[:1500]}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_has_a_described_help(script):
    text = _help([f"benchmarks/{script}"])
    assert _described(text), f"benchmarks/{script} --help does not describe it:\n{text[:1500]}"


def test_a_user_error_is_one_line_with_exit_status_2(tmp_path):
    missing = tmp_path / "nope.npy"
    proc = subprocess.run([sys.executable, "-m", "norton_jax.encode", "--checkpoint", str(tmp_path),
                           "--features", str(missing), "--out", str(tmp_path / "x.npy")],
                          cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 2, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if "error:" in l]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(tmp_path) in errors[0]  # names what is wrong
