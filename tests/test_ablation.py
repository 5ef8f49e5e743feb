"""Smoke version of the Table 7 ablation benchmark (``benchmarks/ablation.py --smoke``)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os

import pytest

from norton_jax.models.config import load_config_file

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
    # Every row of the benchmark is a config row, and the config has no other row.
    for row in bench.ROW_ORDER:
        assert load_config_file(f"{bench.ABLATION_CONFIG}:{row.lower()}").ablation_row == row
    with pytest.raises(ValueError, match="unknown ablation row") as bad:
        load_config_file(f"{bench.ABLATION_CONFIG}:Z")
    assert set(ast.literal_eval(str(bad.value).split("choose one of ", 1)[1])) == set(bench.ROW_ORDER)


def test_row_config_starts_from_the_base():
    bench = _benchmark()
    scratch = bench.row_config("J", steps=7, seed=2, store="/x/store")
    assert scratch.train.init_checkpoint == "" and scratch.train.steps == 7
    assert scratch.train.seed == 2 and scratch.data.seed == 2
    post = bench.row_config("C", steps=7, seed=2, store="/x/store", init="/w/base")
    assert post.train.init_checkpoint == "/w/base"
    assert post.loss.clip_similarity_kind == "mean" and post.loss.prompt_ratio is None
    args = bench.parse_args(["--smoke"])
    assert args.base_steps == bench.SMOKE_BASE_STEPS
    assert bench.parse_args([]).base_steps == bench.BASE_STEPS
    with pytest.raises(SystemExit, match="--base-steps"):
        bench.parse_args(["--base-steps", "-1"])


def test_base_is_reused_only_with_the_same_settings(tmp_path, monkeypatch):
    bench = _benchmark()
    store = str(tmp_path / "store")
    args = bench.parse_args(["--base-steps", "5", "--store", store, "--workdir", str(tmp_path / "w")])
    trained = []

    def fake_train_and_eval(row, seed, *, steps, store, workdir, max_videos, init=""):
        trained.append((row, seed, steps, init))
        os.makedirs(workdir, exist_ok=True)  # as training does
        return {"row": row, "seed": seed, "steps": steps, "store": bench._rel(store), "max_videos": max_videos}

    monkeypatch.setattr(bench, "train_and_eval", fake_train_and_eval)
    first = bench.ensure_base(args)
    # The base is row A's clip-only loss from a random init with seed 0.
    assert trained == [(bench.BASE_ROW, 0, 5, "")] and bench.BASE_ROW == "A"
    assert first["row"] == "base" and first["workdir"].endswith("base_store_5steps")
    assert bench.ensure_base(args) == first and len(trained) == 1  # reused
    other = bench.parse_args(["--base-steps", "6", "--store", store, "--workdir", str(tmp_path / "w")])
    bench.ensure_base(other)
    assert len(trained) == 2  # different steps: a base of its own
    assert bench.ensure_base(bench.parse_args(["--base-steps", "0"])) is None and len(trained) == 2


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
        "--smoke", "--rows", "A,TempCLR", "--steps", "4", "--base-steps", "3", "--max-videos", "12",
        "--store", store, "--workdir", str(tmp_path / "work"), "--out", out, "--jax-cache", "",
    ])
    assert [r["row"] for r in result["runs"]] == ["A", "TempCLR"]
    base = result["base"]
    assert base["row"] == "base" and base["steps"] == 3 and base["init"] == "random"
    base_dir = str(tmp_path / "work" / os.path.basename(base["workdir"]))
    assert os.path.exists(os.path.join(base_dir, "base_run.json"))
    for run in result["runs"]:
        assert run["steps"] == 4
        assert run["init"] == base_dir  # post-trained from the base
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
    assert "| base |" in report and "post-trained from it" in report
    assert os.path.getsize(out + ".png") > 1000


@pytest.mark.slow
def test_noise_sweep_smoke(tmp_path, monkeypatch):
    """The sweep builds its corpora, post-trains from one base and writes md/json/png."""
    bench = _benchmark()
    from data_pipeline.youcook2_mnc import MNCConfig, build

    # Three corpora instead of eight keep this within the CI budget.
    monkeypatch.setattr(bench, "IRRELEVANT_LEVELS", (0.0, 0.5))
    monkeypatch.setattr(bench, "SHIFT_LEVELS", (8.0,))
    cache = str(tmp_path / "cache")
    store = str(tmp_path / "youcook2-mnc-16")
    build(store, MNCConfig(max_videos=16), cache_dir=cache, progress=False)
    out = str(tmp_path / "ablation_smoke")
    bench.main([
        "--noise-sweep", "--smoke", "--sweep-rows", "J", "--steps", "3", "--base-steps", "2",
        "--sweep-videos", "16", "--max-videos", "8", "--store", store,
        "--cache-dir", str(tmp_path / "noise"), "--workdir", str(tmp_path / "work"), "--out", out,
        "--jax-cache", "",
    ])
    with open(out + "_noise.json") as fh:
        saved = json.load(fh)
    runs = saved["runs"]
    assert [(r["axis"], r["level"], r["row"]) for r in runs] == [
        ("irrelevant_fraction", 0.0, "J"), ("irrelevant_fraction", 0.5, "J"), ("shift_std", 8.0, "J")]
    base_dir = str(tmp_path / "work" / os.path.basename(saved["base"]["workdir"]))
    for run in runs:
        assert run["steps"] == 3 and run["init"] == base_dir
        nan = sorted(k for k, v in run["metrics"].items() if v != v)
        # Without irrelevant captions the alignable-vs-irrelevant ROC-AUC is undefined.
        no_chatter = run["axis"] == "irrelevant_fraction" and run["level"] == 0.0
        assert nan == (["align.auc", "align.dense_auc"] if no_chatter else []), (run["axis"], run["level"], nan)
    # Each corpus carries the noise it was built with.
    for run in runs:
        with open(os.path.join(run["store"], "youcook2_mnc.json")) as fh:
            meta = json.load(fh)
        settings = meta["settings"]
        assert settings[run["axis"]] == run["level"]
        if run["axis"] == "shift_std":
            assert settings["max_shift"] == 3 * run["level"]
    report = open(out + "_noise.md").read()
    assert "## vs irrelevant fraction" in report and "| J |" in report and "post-trained from the base" in report
    assert os.path.getsize(out + "_noise.png") > 1000


def test_claim_verdicts_use_two_standard_errors():
    bench = _benchmark()
    report = importlib.import_module("benchmarks.ablation_report")  # the reports of the benchmark
    agg = {  # (mean, std, n) per metric
        "J": {"m": (0.30, 0.01, 3)}, "G": {"m": (0.20, 0.01, 3)},
        "H": {"m": (0.29, 0.05, 3)}, "I": {"m": (0.30, 0.01, 3)}, "A": {"m": (0.10, 0.0, 1)},
    }
    assert report.verdict(agg, "J", "G", "m", "t")[2].startswith("holds")
    assert report.verdict(agg, "G", "J", "m", "t")[2].startswith("reversed (")
    assert report.verdict(agg, "J", "H", "m", "t")[2] == "same sign, within noise"
    assert report.verdict(agg, "H", "J", "m", "t")[2] == "reversed sign, within noise"
    assert report.verdict(agg, "J", "I", "m", "t")[2] == "tie"
    assert report.verdict(agg, "J", "A", "m", "t")[2] == "same sign (one seed: no error bar)"
    assert report.verdict(agg, "J", "G", "m", "t")[1] == "`m` 30.0 vs 20.0"
    # Every claim names rows and metrics the benchmark produces.
    for better, worse, keys, _ in bench.CLAIMS:
        assert {better, worse} <= set(bench.ROW_ORDER) and keys


def test_compare_runs_against_an_earlier_table(tmp_path):
    bench = _benchmark()

    def run(row, seed, r1, mr=10.0):
        return {"row": row, "seed": seed, "metrics": {"clip.R1": r1, "clip.MR": mr, "align.auc": float("nan")}}

    reference = {"runs": [run("A", 0, 0.10), run("A", 1, 0.14), run("A", 2, 0.12), run("J", 0, 0.20)],
                 "base": run("base", 0, 0.05)}
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(reference))
    same = bench.compare_runs(str(path), [run("A", 0, 0.10), run("J", 0, 0.20)], run("base", 0, 0.05), "cmd")
    assert same["summary"] == {"pairs": 3, "identical": 3, "within_reference_std": 3, "max_abs_diff": 0.0}
    # Row A's std over seeds is 0.02: a 0.01 change is within it, 0.05 is not; J has one seed (std 0).
    moved = bench.compare_runs(str(path), [run("A", 0, 0.11), run("A", 1, 0.19), run("J", 0, 0.21)], None, "cmd")
    verdicts = [(p["row"], p["seed"], p["identical"], p["within_reference_std"]) for p in moved["pairs"]]
    assert verdicts == [("A", 0, False, True), ("A", 1, False, False), ("J", 0, False, False)]
    assert moved["pairs"][1]["max_abs_diff_metric"] == "clip.R1"
    assert abs(moved["summary"]["max_abs_diff"] - 0.05) < 1e-12
    with pytest.raises(SystemExit, match="no run of row B seed 0"):
        bench.compare_runs(str(path), [run("B", 0, 0.1)], None, "cmd")
