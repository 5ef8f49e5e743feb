#!/usr/bin/env bash
# The README's "From a raw video and its subtitles" example, end to end, on made-up inputs:
# an 8 s test video, random S3D-G weights in the public key layout (tests/s3d_testing.py),
# the subtitles of tests/test_align_video.py, and a Norton checkpoint given as $1
# (for example workdir/demo/train after `make demo`).  Usage:
#   bash tests/readme_video_example.sh workdir/demo/train [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
CKPT=$(realpath "${1:?usage: $0 CHECKPOINT [OUT_DIR]}")
OUT=${2:-$(mktemp -d)}
mkdir -p "$OUT/videos"
"$PY" - "$OUT" <<'PYEOF'
import pathlib, sys
sys.path.insert(0, "tests")
from s3d_testing import write_random_s3d_weights, write_test_video
out = pathlib.Path(sys.argv[1])
write_random_s3d_weights(out / "s3d_howto100m.pth", seed=0)
write_test_video(out / "videos" / "talk.mp4", seconds=8, fps=25, size=(96, 128))
vtt = pathlib.Path("tests/test_align_video.py").read_text().split('VTT = """')[1].split('"""')[0]
(out / "talk.vtt").write_text(vtt)
(out / "queries.txt").write_text("crack the eggs\npour into the pan\n")
PYEOF
cd "$OUT"
set -x
"$PY" -m norton_jax.extract --video videos/ --weights s3d_howto100m.pth --out features/ --no-progress
"$PY" -m norton_jax.align --checkpoint "$CKPT" --video videos/talk.mp4 --subtitles talk.vtt \
    --s3d-weights s3d_howto100m.pth --out aligned.vtt
"$PY" -m norton_jax.encode --checkpoint "$CKPT" --features features/ --out clips.npy --clip-len 4
"$PY" -m norton_jax.encode --checkpoint "$CKPT" --texts queries.txt --out queries.npy
