"""Table 7 ablation rows A-J of the paper as variants of the tiny config (spec 5.10).

    python -m norton_jax.train --config configs/ablation.py:J --workdir DIR

| row | loss |
|---|---|
| A | clip-caption InfoNCE only (no FNE, no video-paragraph loss) |
| B | + faulty-negative exploitation (beta 0.3) |
| C | + OT video-paragraph loss on the mean-pooled similarity, no bucket |
| D | max-token fine-grained similarity, no bucket |
| E, F, G | log-sum-exp similarity, alpha 0.1 / 0.2 / 1, no bucket |
| H, I, J | alpha 1 + alignable prompt bucket at 10% / 50% / 30% (J = Norton) |
| OT | vanilla OT video-paragraph loss without the bucket (log-sum-exp, alpha 1; as G) |
| TempCLR | soft-DTW sequence distance instead of OT (no bucket; TempCLR-style baseline) |

Row names are case-insensitive (``configs/ablation.py:tempclr`` works).  The full study
is ``python benchmarks/ablation.py`` (``results/ablation.md``).
"""

import os

from ml_collections import ConfigDict

from norton_jax.models.config import load_config_file

ROWS = {
    "A": dict(beta=0.0, weight=0.0),
    "B": dict(beta=0.3, weight=0.0),
    "C": dict(clip_similarity_kind="mean", prompt_ratio=None),
    "D": dict(clip_similarity_kind="max", prompt_ratio=None),
    "E": dict(alpha=0.1, prompt_ratio=None),
    "F": dict(alpha=0.2, prompt_ratio=None),
    "G": dict(alpha=1.0, prompt_ratio=None),
    "H": dict(alpha=1.0, prompt_ratio=0.1),
    "I": dict(alpha=1.0, prompt_ratio=0.5),
    "J": dict(alpha=1.0, prompt_ratio=0.3),
    "OT": dict(alpha=1.0, prompt_ratio=None),
    "TempCLR": dict(alpha=1.0, prompt_ratio=None, sequence_distance="soft_dtw"),
}
_BY_UPPER = {name.upper(): name for name in ROWS}


def _tiny():
    return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py"))


def get_config(row: str = "J") -> ConfigDict:
    name = _BY_UPPER.get(str(row).upper())
    if name is None:
        raise ValueError(f"unknown ablation row {row!r}; choose one of {list(ROWS)}")
    row = name
    config = _tiny()
    with config.unlocked():
        for key, value in ROWS[row].items():
            config.loss[key] = value
    config.ablation_row = row
    return config
