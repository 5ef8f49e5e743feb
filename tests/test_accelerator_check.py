"""``benchmarks/accelerator_check.py --smoke``: every section end to end at tiny sizes on CPU.

No timing claims: the device check's numbers come from a run on an accelerator.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    path = ROOT / "benchmarks" / "accelerator_check.py"
    spec = importlib.util.spec_from_file_location("accelerator_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_every_section(tmp_path):
    check = _load()
    try:
        out = tmp_path / "cpu.json"
        assert check.main(["--smoke", "--out", str(out)]) == 0
    finally:
        sys.modules.pop("accelerator_check", None)
    report = json.loads(out.read_text())
    assert report["smoke"] and report["skipped_sections"] == []
    variants = {(r["problem"], r["variant"]) for r in report["sinkhorn"]["rows"]}
    assert any(v == "norton_auto" for _, v in variants) and any(v == "ott_fixed" for _, v in variants)
    assert all(r["finite"] for r in report["sinkhorn"]["rows"])
    loss = report["paper_loss"]
    assert loss["loss_rel_diff"] < 1e-4  # ours == the PyTorch formulation on the same inputs
    step = report["full_step"]
    assert step["finite"] and step["dtype"] == "bfloat16" and step["sequences_per_s"] > 0
    assert step["model_flops"] > 0 and step["compiled_memory"]["peak_bytes"] > 0
    assert step["mfu"] is None  # no peak FLOP/s for a CPU


def test_peak_flops_table_matches_device_kinds():
    check = _load()
    sys.modules.pop("accelerator_check", None)
    assert check.peak_flops("TPU v5 lite") == pytest.approx(197e12)
    assert check.peak_flops("NVIDIA H100 80GB HBM3") == pytest.approx(989e12)
    assert check.peak_flops("NVIDIA A100-SXM4-80GB") == pytest.approx(312e12)
    assert check.peak_flops("TPU v4") == pytest.approx(275e12)
    assert check.peak_flops("cpu") is None
    assert check.device_name(type("D", (), {"platform": "gpu", "device_kind": "NVIDIA H100 80GB HBM3"})()) \
        == "gpu_nvidia_h100_80gb_hbm3"
