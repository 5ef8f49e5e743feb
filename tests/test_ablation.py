"""Smoke version of the Table 7 ablation benchmark (``benchmarks/ablation.py --smoke``)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _benchmark():
    path = os.path.join(REPO, "benchmarks", "ablation.py")
    spec = importlib.util.spec_from_file_location("benchmarks_ablation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_rows_and_defaults():
    bench = _benchmark()
    args = bench.parse_args(["--smoke", "--rows", "a,tempclr,ot"])
    assert args.rows == ["A", "TempCLR", "OT"]
    assert (args.seeds, args.steps, args.max_videos) == (1, bench.SMOKE_STEPS, bench.SMOKE_VIDEOS)
    full = bench.parse_args([])
    assert full.rows == list(bench.ROW_ORDER) and full.seeds == 3 and full.steps == bench.FULL_STEPS
    with pytest.raises(SystemExit, match="unknown row"):
        bench.parse_args(["--rows", "A,Z"])
    # Every row of the benchmark is a config row.
    module = bench._ablation_module()
    assert set(bench.ROW_ORDER) == set(module.ROWS)


@pytest.mark.slow
def test_ablation_smoke_two_rows(tmp_path):
    """Trains rows A and TempCLR for a few steps, evaluates, writes md/json/png."""
    bench = _benchmark()
    store = os.path.join(REPO, "data", "build", "youcook2-mnc")
    if not os.path.exists(os.path.join(store, "train.index.json")):
        # A fresh clone (CI): build a 24 + 24-video youcook2-mnc subset for the smoke run.
        from data_pipeline.youcook2_mnc import MNCConfig, build

        store = str(tmp_path / "youcook2-mnc-24")
        build(store, MNCConfig(max_videos=24), cache_dir=str(tmp_path / "cache"), progress=False)
    out = str(tmp_path / "ablation_smoke")
    result = bench.main([
        "--smoke", "--rows", "A,TempCLR", "--steps", "4", "--max-videos", "12", "--store", store,
        "--workdir", str(tmp_path / "work"), "--out", out, "--jax-cache", "",
    ])
    assert [r["row"] for r in result["runs"]] == ["A", "TempCLR"]
    for run in result["runs"]:
        assert run["steps"] == 4
        for key, value in run["metrics"].items():
            assert value == value, key  # not NaN
        assert 0.0 <= run["metrics"]["clip.R1"] <= 1.0
        assert 0.0 <= run["metrics"]["align.recall"] <= 1.0
        assert run["counts"]["youcook2_clip"]["videos"] == 12
    with open(out + ".json") as fh:
        saved = json.load(fh)
    assert len(saved["runs"]) == 2 and "cost_model" in saved
    report = open(out + ".md").read()
    assert "--smoke" in report and "| TempCLR |" in report and "Estimated full protocol" in report
    assert os.path.getsize(out + ".png") > 1000
