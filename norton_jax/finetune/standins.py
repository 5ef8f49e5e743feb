"""Generated stand-ins for the fine-tuning datasets, in exactly the official file formats.

The real MSR-VTT and COIN S3D features are not distributable here, so tests and the
README commands run on small generated datasets that a learnable model can fit:

* **MSR-VTT** (``--task msrvtt``): every video has a colour, an object and an action;
  its per-second features are the sum of three fixed random directions plus noise
  (L2-normalised rows, like S3D features), and its 20 captions are template sentences
  naming the three attributes.  Files (spec §5.5, §5.6, §5.9)::

      MSRVTT_data.json            {"info", "videos": [...], "sentences": [{"caption", "video_id", "sen_id"}]}
      MSRVTT_train.9k.csv         video_id           (retrieval fine-tuning list)
      MSRVTT_train.7k.csv         video_id           (QA fine-tuning list, a subset of the 9k)
      MSRVTT_JSFUSION_test.csv    key,vid_key,video_id,sentence  (one caption per test video)
      MSR_MC_test.csv             tab-separated key, vid_key, a1..a5, answer (0-based)
      msrvtt_feature_fps30_512/<video_id>.npy   float32 [T, 512]

* **COIN** (``--task coin``): each video has a few step segments whose seconds carry that
  step's feature direction (plus noise), background elsewhere.  Files (spec §5.7)::

      COIN.json                   {"version", "database": {vid: {"subset", "annotation": [{"segment", "id", "label"}], ...}}}
      coin_feature_fps30_512/<video_id>.npy     float32 [T, 512]

Command line::

    python -m norton_jax.finetune.standins --task all --out /tmp/ft-data \\
        [--init_out /tmp/ft-data/tiny_init.safetensors]

``--init_out`` also writes a randomly initialised tiny dual encoder (``configs/tiny.py``
geometry) as a ``.safetensors`` export, a stand-in for a pre-trained Norton checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np

from norton_jax.finetune.data import COIN_FEATURES, MSRVTT_FEATURES

COLOURS = ("red", "blue", "green", "yellow", "black", "white")
OBJECTS = ("dog", "car", "man", "woman", "cat", "ball")
ACTIONS = ("running", "jumping", "singing", "cooking", "dancing", "swimming")
TEMPLATES = (
    "a {c} {o} is {a}",
    "the {o} in {c} is {a}",
    "{a} {c} {o}",
    "someone films a {c} {o} {a}",
    "a video of a {o} that is {c} and {a}",
)
STEP_NAMES = (
    "add flour", "stir the soup", "cut the wood", "paint the wall", "pour water",
    "tighten the screw", "fold the paper", "wash the dishes", "plant the seed", "remove the tire",
    "mix the paint", "glue the pieces",
)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _directions(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return _unit_rows(rng.standard_normal((n, dim)))


def write_msrvtt(
    out: str | os.PathLike,
    *,
    num_train: int = 96,
    num_qa_train: int = 64,
    num_test: int = 24,
    captions_per_video: int = 20,
    seconds: tuple[int, int] = (10, 40),
    noise: float = 1.5,
    dim: int = 512,
    seed: int = 0,
) -> dict[str, int]:
    """Writes the MSR-VTT stand-in (see the module docstring) into ``out``; returns counts.

    Test videos have attribute combinations never seen in training.  ``noise`` is the
    expected norm of each second's Gaussian noise (each attribute direction has norm 1).
    """
    if num_test < 5:
        raise ValueError("the multiple-choice test needs at least 5 test videos (5 options)")
    if num_qa_train > num_train:
        raise ValueError("the 7k (QA) list is a subset of the 9k list: num_qa_train <= num_train")
    rng = np.random.default_rng(seed)
    out = Path(out)
    feat_dir = out / MSRVTT_FEATURES
    feat_dir.mkdir(parents=True, exist_ok=True)
    dirs = _directions(rng, len(COLOURS) + len(OBJECTS) + len(ACTIONS), dim)
    combos = [(c, o, a) for c in range(len(COLOURS)) for o in range(len(OBJECTS)) for a in range(len(ACTIONS))]
    order = rng.permutation(len(combos))
    if num_train + num_test > len(combos):
        raise ValueError(f"at most {len(combos)} videos (distinct attribute combinations)")
    chosen = [combos[i] for i in order[: num_train + num_test]]
    videos, sentences = [], []
    test_rows, test_ids = [], []
    sen_id = 0
    for n, (c, o, a) in enumerate(chosen):
        train = n < num_train
        vid = f"video{n}" if train else f"video{7010 + n}"
        t = int(rng.integers(seconds[0], seconds[1] + 1))
        base = dirs[c] + dirs[len(COLOURS) + o] + dirs[len(COLOURS) + len(OBJECTS) + a]
        feats = _unit_rows(base[None] + noise * rng.standard_normal((t, dim)) / np.sqrt(dim))
        np.save(feat_dir / f"{vid}.npy", feats)
        words = dict(c=COLOURS[c], o=OBJECTS[o], a=ACTIONS[a])
        caps = [TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(**words) for _ in range(captions_per_video)]
        videos.append({"category": int(o), "url": f"https://example.invalid/{vid}", "video_id": vid,
                       "start time": 0.0, "end time": float(t), "split": "train" if train else "test", "id": n})
        for cap in caps:
            sentences.append({"caption": cap, "video_id": vid, "sen_id": sen_id})
            sen_id += 1
        if not train:
            test_ids.append(vid)
            test_rows.append((f"ret{len(test_rows)}", vid.replace("video", "msr"), vid, caps[0]))
    with open(out / "MSRVTT_data.json", "w") as f:
        json.dump({"info": {"description": "norton-jax generated stand-in for MSR-VTT"},
                   "videos": videos, "sentences": sentences}, f)
    train_ids = [v["video_id"] for v in videos[:num_train]]
    for name, ids in (("MSRVTT_train.9k.csv", train_ids), ("MSRVTT_train.7k.csv", train_ids[:num_qa_train])):
        with open(out / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["video_id"])
            w.writerows([[v] for v in ids])
    with open(out / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "vid_key", "video_id", "sentence"])
        w.writerows(test_rows)
    # multiple choice: the true caption among 4 captions of other test videos
    first_caption = {r[2]: r[3] for r in test_rows}
    with open(out / "MSR_MC_test.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["key", "vid_key", "a1", "a2", "a3", "a4", "a5", "answer"])
        for q, vid in enumerate(test_ids):
            others = [v for v in test_ids if v != vid]
            picks = [first_caption[others[i]] for i in rng.choice(len(others), 4, replace=False)]
            answer = int(rng.integers(5))
            picks.insert(answer, first_caption[vid])
            w.writerow([f"mc{q}", vid.replace("video", "msr"), *picks, answer])
    return {"train_9k": num_train, "train_7k": num_qa_train, "test": num_test}


def write_coin(
    out: str | os.PathLike,
    *,
    num_train: int = 24,
    num_test: int = 8,
    num_steps: int = 8,
    seconds: tuple[int, int] = (40, 80),
    noise: float = 1.0,
    dim: int = 512,
    seed: int = 0,
) -> dict[str, int]:
    """Writes the COIN stand-in (see the module docstring) into ``out``; returns counts.

    ``noise`` is the expected norm of each second's Gaussian noise (the step and background
    directions have norm 1).  Step ids are ``1..num_steps`` (the reference's ids are 1..778); every id of the training
    videos also occurs in the testing subset (the label set comes from the testing subset).
    """
    if num_steps > len(STEP_NAMES):
        raise ValueError(f"at most {len(STEP_NAMES)} steps")
    rng = np.random.default_rng(seed + 1)
    out = Path(out)
    feat_dir = out / COIN_FEATURES
    feat_dir.mkdir(parents=True, exist_ok=True)
    ids = list(range(1, num_steps + 1))
    dirs = _directions(rng, num_steps + 1, dim)  # [0] = background
    database = {}
    for n in range(num_train + num_test):
        vid = f"coin{n:04d}"
        subset = "training" if n < num_train else "testing"
        t = int(rng.integers(seconds[0], seconds[1] + 1))
        # the test subset cycles through all steps so that it holds every label id
        k = int(rng.integers(2, 5))
        steps = [(n * 3 + j) % num_steps for j in range(k)] if subset == "testing" else list(rng.choice(num_steps, k))
        cuts = np.sort(rng.choice(np.arange(2, t - 2), 2 * k, replace=False)).astype(float)
        labels = np.zeros(t, np.int64)  # index into dirs
        annotation = []
        for j, s in enumerate(steps):
            start, end = cuts[2 * j] + 0.3, cuts[2 * j + 1] + 0.6  # fractional times, as COIN.json
            labels[int(np.floor(start)) : int(np.ceil(end))] = s + 1
            annotation.append({"id": str(ids[s]), "segment": [round(start, 2), round(end, 2)],
                               "label": STEP_NAMES[s]})
        feats = _unit_rows(dirs[labels] + noise * rng.standard_normal((t, dim)) / np.sqrt(dim))
        np.save(feat_dir / f"{vid}.npy", feats)
        database[vid] = {"recipe_type": 0, "class": "generated", "subset": subset, "start": 0.0,
                         "end": float(t), "duration": float(t), "video_url": f"https://example.invalid/{vid}",
                         "annotation": annotation}
    with open(out / "COIN.json", "w") as f:
        json.dump({"version": "norton-jax generated stand-in for COIN", "database": database}, f)
    return {"training": num_train, "testing": num_test, "steps": num_steps}


def write_init_checkpoint(path: str | os.PathLike, *, seed: int = 0) -> str:
    """A randomly initialised tiny dual encoder (``configs/tiny.py`` geometry) as ``.safetensors``."""
    from norton_jax.export_torch import export_state_dict, save_safetensors  # noqa: PLC0415
    from norton_jax.models.config import tiny_model_config  # noqa: PLC0415
    from norton_jax.models.dual_encoder import init_model  # noqa: PLC0415

    model = init_model(tiny_model_config(), seed=seed)
    save_safetensors(export_state_dict(model), path, model.config)
    return os.fspath(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m norton_jax.finetune.standins",
        description="Write generated MSR-VTT / COIN stand-ins in the official file formats.",
    )
    parser.add_argument("--task", choices=("msrvtt", "coin", "all"), default="all")
    parser.add_argument("--out", required=True, help="folder to write into (the fine-tune --data folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init_out", default=None, help="also write a random tiny model .safetensors here")
    args = parser.parse_args(argv)
    if args.task in ("msrvtt", "all"):
        print(f"MSR-VTT stand-in in {args.out}: {write_msrvtt(args.out, seed=args.seed)}")
    if args.task in ("coin", "all"):
        print(f"COIN stand-in in {args.out}: {write_coin(args.out, seed=args.seed)}")
    if args.init_out:
        print(f"random tiny init: {write_init_checkpoint(args.init_out, seed=args.seed)}")


if __name__ == "__main__":
    main()
