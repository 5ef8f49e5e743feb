"""Training data of the fine-tuning tasks (spec §5.5-5.7, files §5.9) and their batches.

=================================  ==========================================================
loader                             files (under the task's data folder)
=================================  ==========================================================
:func:`load_msrvtt_train`          ``MSRVTT_train.9k.csv`` (retrieval) / ``MSRVTT_train.7k.csv``
                                   (QA): column ``video_id``; ``MSRVTT_data.json``:
                                   ``sentences[] = {video_id, caption}`` (20 per video);
                                   ``msrvtt_feature_fps30_512/<video_id>.npy`` ``[T, 512]``
:func:`load_coin_train`            ``COIN.json`` ``database[vid]`` with ``subset == "training"``;
                                   ``coin_feature_fps30_512/<video_id>.npy``
=================================  ==========================================================

Batches are a pure function of the step (and the seed), so a resumed run continues with
exactly the batches an uninterrupted one would have seen, and every process of a
multi-host run computes the same global batch and keeps its own rows.

* :class:`CaptionBatches` (MSR-VTT retrieval and QA, ``MSRVTTMetaProcessor`` with ``dup``):
  each epoch repeats the training list ``dup`` times, shuffles it, and draws one caption
  uniformly from the video's captions for every item; batches of ``batch_size`` items
  (the incomplete last batch of an epoch is dropped: jit needs one shape).  Video = the
  first ``max_video_len`` seconds; text laid out as ``DSAligner`` (spec §3.2, §5.0).
* :class:`COINBatches` (``COINActionSegmentation*``): each epoch shuffles the training
  videos; a step gives each device ``videos_per_device`` whole videos as 32-frame windows
  with stride 8, ``[CLS]`` masked (spec §3.3 step 5), per-frame targets (``-100`` on padded
  frames); every device's windows are padded (all ``-100``) to the same power of two.

Features are read with :meth:`norton_jax.evaluate.loaders.FeatureDir.load`, which refuses
NaN/inf values with an error naming the file, the video and the first bad frame.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from norton_jax.evaluate import loaders as L
from norton_jax.evaluate.metrics import coin_video_targets, coin_windows
from norton_jax.inference import Layout, text_inputs, video_inputs

IGNORE_INDEX = -100

MSRVTT_FEATURES = "msrvtt_feature_fps30_512"
COIN_FEATURES = "coin_feature_fps30_512"


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


def resolve_in(data_dir: str | os.PathLike, name: str) -> Path:
    """``name`` itself when absolute, else ``data_dir/name``."""
    p = Path(name)
    return p if p.is_absolute() else Path(data_dir) / p


@dataclasses.dataclass
class MSRVTTTrainSet:
    """MSR-VTT training videos (list order) and every caption of each."""

    video_ids: list[str]
    captions: dict[str, list[str]]  # video id -> its captions, file order
    features: L.FeatureDir
    missing: L.MissingFeatures


def load_msrvtt_train(
    train_list: str | os.PathLike,
    captions_json: str | os.PathLike,
    feature_dir: str | os.PathLike | L.FeatureDir,
    *,
    missing: str = "drop",
) -> MSRVTTTrainSet:
    """MSR-VTT training split (spec §5.5/§5.6 fine-tuning; files §5.9).

    ``train_list``: ``MSRVTT_train.9k.csv`` / ``MSRVTT_train.7k.csv`` (column ``video_id``;
    other columns ignored).  ``captions_json``: ``MSRVTT_data.json`` whose ``sentences`` list
    holds ``{"video_id", "caption"}`` records.  Every listed video needs at least one
    caption (error naming the video otherwise); videos without a feature file are dropped
    and reported (``missing="error"`` raises).
    """
    rows = L._read_csv(train_list, delimiter=",", required=("video_id",))
    ids = []
    for line, row in enumerate(rows, start=2):
        vid = row["video_id"].strip()
        if not vid:
            raise L.EvalDataError(train_list, f"line {line}: empty field 'video_id'")
        ids.append(vid)
    if not ids:
        raise L.EvalDataError(train_list, "no rows")
    data = L._mapping(captions_json, "top level", L._read_json(captions_json))
    if "sentences" not in data or not isinstance(data["sentences"], list):
        raise L.EvalDataError(captions_json, "missing field 'sentences' (a list of {video_id, caption})")
    wanted = set(ids)
    captions: dict[str, list[str]] = {}
    for i, rec in enumerate(data["sentences"]):
        rec = L._mapping(captions_json, f"sentences[{i}]", rec)
        for key in ("video_id", "caption"):
            if key not in rec:
                raise L.EvalDataError(captions_json, f"sentences[{i}]: missing field {key!r}")
        vid = L._string(captions_json, f"sentences[{i}].video_id", rec["video_id"])
        if vid in wanted:
            captions.setdefault(vid, []).append(L._string(captions_json, f"sentences[{i}].caption", rec["caption"]))
    no_caption = [v for v in ids if v not in captions]
    if no_caption:
        raise L.EvalDataError(
            captions_json, f"{len(no_caption)} videos of {os.fspath(train_list)} have no caption in 'sentences' "
            f"(e.g. {no_caption[:5]})"
        )
    features = feature_dir if isinstance(feature_dir, L.FeatureDir) else L.FeatureDir(feature_dir)
    keep, report = L.check_features(ids, features, item_video_ids=ids, missing=missing, what="MSR-VTT training")
    ids = [v for v in ids if v in keep]
    if not ids:
        raise L.EvalDataError(features.root, f"no training video has features ({report.summary()})")
    return MSRVTTTrainSet(ids, {v: captions[v] for v in dict.fromkeys(ids)}, features, report)


def load_coin_train(
    coin_json: str | os.PathLike,
    feature_dir: str | os.PathLike | L.FeatureDir,
    *,
    num_labels: int,
    missing: str = "drop",
) -> L.COINData:
    """The ``training`` subset of ``COIN.json`` (spec §5.7) with features; label ids must be
    ``< num_labels`` (the classifier size, 779 = 778 steps + background)."""
    data = L.load_coin(coin_json, feature_dir, split="training", missing=missing)
    if not data.videos:
        raise L.EvalDataError(coin_json, "no 'training' video with features")
    top = max((lab for v in data.videos for _, _, lab in v.segments), default=0)
    if top >= num_labels:
        raise L.EvalDataError(
            coin_json, f"annotation id {top} does not fit the classifier: model.num_labels={num_labels} "
            "(ids 1..num_labels-1, 0 = background)"
        )
    return data


# ---------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------


def _process_rows(global_rows: int, process_index: int, process_count: int) -> slice:
    if global_rows % process_count:
        raise ValueError(f"global batch of {global_rows} rows does not split over {process_count} processes")
    local = global_rows // process_count
    return slice(process_index * local, (process_index + 1) * local)


class CaptionBatches:
    """MSR-VTT video-caption batches (``dup`` repetition, uniform caption draw), by step."""

    keys = ("caps", "cmasks", "vfeats", "vmasks")

    def __init__(
        self,
        train: MSRVTTTrainSet,
        *,
        batch_size: int,
        layout: Layout,
        dup: int = 20,
        seed: int = 0,
        num_devices: int = 1,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if batch_size < 2 or batch_size % num_devices:
            raise ValueError(
                f"train.batch_size={batch_size} must be >= 2 and a multiple of the {num_devices} devices"
            )
        if dup < 1:
            raise ValueError(f"data.dup must be >= 1, got {dup}")
        self.train, self.layout, self.dup, self.seed = train, layout, dup, seed
        self.batch_size = batch_size
        self.items_per_epoch = len(train.video_ids) * dup
        self.steps_per_epoch = self.items_per_epoch // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(train.video_ids)} training videos x dup {dup} = {self.items_per_epoch} items "
                f"do not fill one batch of {batch_size}"
            )
        self.rows = _process_rows(batch_size, process_index, process_count)
        # all captions tokenised once: caption c of video v is row offsets[v] + c
        flat = [c for v in train.video_ids for c in train.captions[v]]
        self.caps, self.cmasks = text_inputs(flat, layout)  # [captions, Lc]
        counts = np.asarray([len(train.captions[v]) for v in train.video_ids])
        self.offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.counts = counts
        self._epoch: tuple[int, np.ndarray, np.ndarray] | None = None

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(video index, caption row) of every item of ``epoch``, in batch order."""
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            videos = rng.permutation(np.tile(np.arange(len(self.train.video_ids)), self.dup))
            draw = np.floor(rng.random(len(videos)) * self.counts[videos]).astype(np.int64)
            self._epoch = (epoch, videos, self.offsets[videos] + draw)
        return self._epoch[1], self._epoch[2]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the global batch of (0-based) ``step``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        videos, rows = self._plan(epoch)
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        videos, rows = videos[sl][self.rows], rows[sl][self.rows]
        lv = self.layout.max_video_len
        segments = [np.asarray(self.train.features.load(self.train.video_ids[v])[:lv], np.float32) for v in videos]
        _, _, vfeats, vmasks = video_inputs(segments, lv)
        return {"caps": self.caps[rows], "cmasks": self.cmasks[rows], "vfeats": vfeats, "vmasks": vmasks}


def coin_window_targets(
    num_frames: int, segments: Sequence[tuple[float, float, int]], *, stride: int, size: int
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Windows of one video and their targets ``[W, size]`` (spec §5.7).

    Window targets = the video-level targets (:func:`coin_video_targets`: 0 = background,
    ``[floor(start), ceil(end))`` = label id) on the window's real frames, ``-100`` on
    its padding.
    """
    windows = coin_windows(num_frames, stride=stride, size=size)
    video = coin_video_targets(num_frames, segments)  # [T]
    targets = np.full((len(windows), size), IGNORE_INDEX, np.int32)
    for w, (a, b) in enumerate(windows):
        targets[w, : b - a] = video[a:b]
    return windows, targets


def window_bucket(n: int, minimum: int = 8) -> int:
    """Windows per device padded to the next power of two, at least ``minimum`` (few jit shapes)."""
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


class COINBatches:
    """COIN training windows (stride 8, size 32), ``videos_per_device`` videos per device, by step."""

    keys = ("caps", "cmasks", "vfeats", "vmasks", "targets")

    def __init__(
        self,
        train: L.COINData,
        *,
        videos_per_device: int = 1,
        stride: int = 8,
        size: int = 32,
        seed: int = 0,
        num_devices: int = 1,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if num_devices % process_count:
            raise ValueError(f"{num_devices} devices do not split over {process_count} processes")
        self.train, self.stride, self.size, self.seed = train, stride, size, seed
        self.videos_per_device, self.num_devices = videos_per_device, num_devices
        self.videos_per_step = videos_per_device * num_devices
        self.steps_per_epoch = len(train.videos) // self.videos_per_step
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(train.videos)} COIN training videos do not fill one step of {self.videos_per_step}")
        local = num_devices // process_count
        self.devices = range(process_index * local, (process_index + 1) * local)
        self.num_frames = [train.features.num_frames(v.video_id) for v in train.videos]

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.train.videos))

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows: for each of its devices, ``bucket`` windows (its videos' windows,
        then padding windows whose targets are all ``-100``)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        chosen = self._order(epoch)[i * self.videos_per_step : (i + 1) * self.videos_per_step]
        per_device = chosen.reshape(self.num_devices, self.videos_per_device)
        counts = [
            sum(len(coin_windows(self.num_frames[v], stride=self.stride, size=self.size)) for v in vids)
            for vids in per_device
        ]
        bucket = window_bucket(max(counts))
        segments: list[np.ndarray] = []
        targets: list[np.ndarray] = []
        for d in self.devices:
            n = 0
            for v in per_device[d]:
                video = self.train.videos[v]
                feat = self.train.features.load(video.video_id)
                windows, tgt = coin_window_targets(
                    self.num_frames[v], video.segments, stride=self.stride, size=self.size
                )
                segments += [np.asarray(feat[a:b], np.float32) for a, b in windows]
                targets.append(tgt)
                n += len(windows)
            pad = bucket - n
            segments += [np.zeros((1, feat.shape[1]), np.float32)] * pad
            targets.append(np.full((pad, self.size), IGNORE_INDEX, np.int32))
        caps, cmasks, vfeats, vmasks = video_inputs(segments, self.size, mask_cls=True)
        return {"caps": caps, "cmasks": cmasks, "vfeats": vfeats, "vmasks": vmasks,
                "targets": np.concatenate(targets)}
