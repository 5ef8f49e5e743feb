"""Small YouCookII and HTM-Align folders in the authors' layout (for the data check and docs tests)."""

import json
from pathlib import Path

import numpy as np


def write_youcook(root: Path, *, seed: int = 0) -> Path:
    """``root/youcookii_annotations_trainval.json`` + ``youcook_validation_feature_fps30_512/``: 4 val videos."""
    rng = np.random.default_rng(seed)
    feats = root / "youcook_validation_feature_fps30_512"
    feats.mkdir(parents=True)
    db = {}
    for i, t in enumerate((40, 25, 33, 48)):
        vid = f"v{i + 1}"
        np.save(feats / f"{vid}.npy", rng.normal(size=(t, 512)).astype(np.float16))
        db[vid] = {"subset": "validation", "annotations": [
            {"id": 0, "segment": [2, 9], "sentence": f"cut the onion {i}"},
            {"id": 1, "segment": [10, t], "sentence": f"fry the egg {i}"}]}
    db["t1"] = {"subset": "training", "annotations": [{"id": 0, "segment": [0, 5], "sentence": "x"}]}
    (root / "youcookii_annotations_trainval.json").write_text(json.dumps({"database": db}))
    return root


def write_htm_align(root: Path, *, seed: int = 0) -> Path:
    """``root/htm_align.json`` and ``root/<vid>.npy`` (the reference's layout): 2 videos."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    db = {}
    for vid, t in (("h1", 30), ("h2", 50)):
        np.save(root / f"{vid}.npy", rng.normal(size=(t, 512)).astype(np.float32))
        db[vid] = [[1, 3.5, 8.0, "add oil"], [0, 20.0, 25.0, "hi all"], [1, 12.0, 18.0, "stir well"]]
    (root / "htm_align.json").write_text(json.dumps(db))
    return root
