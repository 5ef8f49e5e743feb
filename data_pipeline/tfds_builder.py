"""TFDS builder for a converted feature store (no download: ``manual_dir`` = the store folder).

Usage::

    import tensorflow_datasets as tfds
    import data_pipeline.tfds_builder  # registers "norton_feature_store"

    ds = tfds.load("norton_feature_store", split="train", data_dir="/tmp/tfds",
                   download_and_prepare_kwargs={"download_config":
                       tfds.download.DownloadConfig(manual_dir="/data/store")})

or ``NortonFeatureStore(data_dir=...).download_and_prepare(download_config=...)``. Every split
that has a ``<split>.index.json`` in ``manual_dir`` becomes a TFDS split. Example fields:
``video_id`` (text), ``features`` float16 [T, 512], ``caption_start``/``caption_end`` float32 [n],
``caption_tokens`` int32 [n, 32] (bert-base-uncased ids, padded with -1 as in the reference
``caps_ids`` shards), ``caption_num_tokens`` int32 [n].

TFDS re-encodes the data into its own TFRecord files under ``data_dir``; for training, the
:mod:`data_pipeline.input_pipeline` reads the feature store directly (random access by video).
"""
from __future__ import annotations

import os

import numpy as np

from data_pipeline import fileio
from data_pipeline.feature_store import FEATURE_DIM, FeatureStore
from data_pipeline.tf_utils import import_tensorflow
from data_pipeline.tokenization import MAX_STORED_TOKENS

import_tensorflow()
import tensorflow_datasets as tfds  # noqa: E402
from etils import epath  # noqa: E402


class NortonFeatureStore(tfds.core.GeneratorBasedBuilder):
    """Per-video S3D-style features + timed, tokenised captions from a norton-jax feature store."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS derives this from the module by default, which needs the optional package
    # importlib_resources (not installed here); the builder keeps no checksums next to its code.
    code_path = epath.Path(__file__)
    RELEASE_NOTES = {"1.0.0": "First release (feature store index version 1)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Convert your corpus first (python -m data_pipeline.build howto100m|per-video|youcook2-mnc "
        "--out DIR) and pass DIR as manual_dir; nothing is downloaded.")

    def _info(self) -> tfds.core.DatasetInfo:
        enc = tfds.features.Encoding.ZLIB
        return tfds.core.DatasetInfo(
            builder=self,
            description="Video features (one 512-d vector per second) with timed captions, "
                        "converted to the norton-jax feature store.",
            features=tfds.features.FeaturesDict({
                "video_id": tfds.features.Text(),
                "features": tfds.features.Tensor(shape=(None, FEATURE_DIM), dtype=np.float16, encoding=enc),
                "caption_start": tfds.features.Tensor(shape=(None,), dtype=np.float32),
                "caption_end": tfds.features.Tensor(shape=(None,), dtype=np.float32),
                "caption_tokens": tfds.features.Tensor(shape=(None, MAX_STORED_TOKENS), dtype=np.int32,
                                                       encoding=enc),
                "caption_num_tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            }),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = os.fspath(dl_manager.manual_dir)
        # <split>.index.json; not the partial indexes (<split>.task-I-of-N.index.json) of a conversion in tasks
        splits = sorted(f[:-len(".index.json")] for f in fileio.listdir(root)
                        if f.endswith(".index.json") and ".task-" not in f)
        if not splits:
            raise FileNotFoundError(f"manual_dir {root} holds no <split>.index.json; "
                                    f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        return {s: self._generate_examples(root, s) for s in splits}

    def _generate_examples(self, root: str, split: str):
        store = FeatureStore(root, split)  # a local folder or a URL (gs://...)
        for i in range(len(store)):
            rec = store[i]
            toks = np.full((rec.num_captions, MAX_STORED_TOKENS), -1, np.int32)
            for k, t in enumerate(rec.tokens):
                toks[k, :len(t)] = t
            yield rec.video_id, {
                "video_id": rec.video_id,
                "features": np.asarray(rec.features, np.float16),
                "caption_start": rec.starts.astype(np.float32),
                "caption_end": rec.ends.astype(np.float32),
                "caption_tokens": toks,
                "caption_num_tokens": np.asarray([len(t) for t in rec.tokens], np.int32),
            }
