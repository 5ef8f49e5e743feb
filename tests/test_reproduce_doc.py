"""Every ```sh reproduce``` block of docs/reproduce.md runs, command by command, on generated
stand-ins: MSR-VTT / COIN (``norton_jax.finetune.standins``), small YouCookII and HTM-Align
folders (``reproduce_standins``), a random tiny model as the authors' checkpoint, the tiny
geometry as ``$CONFIG`` and the ``:tiny`` fine-tuning preset as ``$PRESET``."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from norton_jax.finetune import standins
from reproduce_standins import write_htm_align, write_youcook

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reproduce.md"
BLOCK = re.compile(r"^```sh reproduce\n(.*?)^```", re.MULTILINE | re.DOTALL)


def doc_commands() -> list[str]:
    """The commands of the ``sh reproduce`` blocks, continuation lines joined, in order."""
    commands = []
    for block in BLOCK.findall(DOC.read_text()):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip() and not command.lstrip().startswith("#"):
                commands.append(" ".join(command.split()))
    return commands


def test_the_doc_has_a_command_for_every_downstream_table():
    commands = doc_commands()
    joined = "\n".join(commands)
    for needle in ("data_pipeline.check", "norton_jax.import_torch", "youcook2_paragraph_bg", "--task coin",
                   "--task msrvtt ", "--task msrvtt_qa", "--task htm_align", "finetune_coin.py",
                   "finetune_msrvtt.py", "finetune_msrvtt_qa.py"):
        assert needle in joined, needle
    assert all(c.startswith("python -m ") for c in commands), commands


@pytest.mark.slow
def test_every_reproduce_command_runs_on_the_standins(tmp_path):
    data = tmp_path / "data"
    standins.write_msrvtt(data / "msrvtt", seed=0)
    standins.write_coin(data / "coin", seed=0)
    write_youcook(data / "youcook")
    write_htm_align(data / "how2-align")
    ckpt = standins.write_init_checkpoint(tmp_path / "checkpoint_best.safetensors", seed=0)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", CKPT=ckpt,
               CONFIG=str(ROOT / "configs" / "tiny.py"), DATA=str(data), W=str(tmp_path / "w"), PRESET=":tiny")
    outputs = []
    for command in doc_commands():
        argv = [re.sub(r"\$(\w+)", lambda m: env[m.group(1)], a) for a in shlex.split(command)]
        assert argv[:2] == ["python", "-m"]
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{command}\nexit {proc.returncode}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
        if "--out" in argv and argv[argv.index("--out") + 1].endswith(".json"):
            outputs.append(argv[argv.index("--out") + 1])
    assert len(outputs) == 7, outputs  # Tables 2+3, 4, 5 (zero-shot, fine-tuned), 6 (both), 9
    for out in outputs:  # every evaluation wrote its metrics
        result = json.loads(Path(out).read_text())
        assert result, out
