"""Loaders for the official evaluation files (spec §5.9).

Each loader reads one benchmark's annotation file(s), checks every field it uses (errors
name the file and the field), and optionally pairs every item with the per-video feature
file ``<feature_dir>/<video_id>.npy``.  Submodules: :mod:`.files` (features, missing-feature
reports, field parsers), :mod:`.youcook` (§5.1-5.3), :mod:`.benchmarks` (MSR-VTT §5.5-5.6,
COIN §5.7, HTM-Align §5.8).  Every public name is importable from here.
"""

from norton_jax.evaluate.loaders.benchmarks import (
    COINData,
    COINVideo,
    HTMAlignData,
    HTMAlignVideo,
    MSRVTTMultipleChoice,
    MSRVTTRetrieval,
    load_coin,
    load_htm_align,
    load_msrvtt,
    load_msrvtt_mc,
)
from norton_jax.evaluate.loaders.files import (EvalDataError, FeatureDir, MissingFeatures, as_feature_dir,
                                               check_features, check_finite_features, parse_mapping, parse_number,
                                               parse_segment, parse_string, read_csv_rows, read_json_file)
from norton_jax.evaluate.loaders.youcook import (
    YouCookClip,
    YouCookData,
    load_youcook,
    youcook_background_windows,
)

# The old private names, still used by norton_jax.finetune.data (to be switched to the public ones).
_read_csv, _read_json, _mapping, _string = read_csv_rows, read_json_file, parse_mapping, parse_string
