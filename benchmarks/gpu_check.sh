#!/usr/bin/env bash
# Every check this project runs on a CUDA GPU, in one command (the accelerator is lent for minutes).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#
# Expects UTKFace as a .tar.gz of 128 px WebP faces in .device/ (or UTKFACE_TGZ=...); writes the
# results to $OUT (default benchmarks/results/gpu/): env.txt, pipeline.json, study.json, log.txt and
# summaries.tar.gz (summaries, run configs, partitions' hashes and training metrics; no images).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results/gpu}
TGZ=${UTKFACE_TGZ:-.device/UTKFace-128px-webp.tar.gz}
STUDY_DEADLINE=${STUDY_DEADLINE:-240}
mkdir -p "$OUT" data
exec > >(tee -a "$OUT/log.txt") 2>&1
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then   # packages the GPU image lacks (fairlearn)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
stamp "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch, PIL, pandas, sklearn, fairlearn; from PIL import features; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'PIL', PIL.__version__, 'webp', features.check('webp'), 'pandas', pandas.__version__, 'sklearn', sklearn.__version__, 'fairlearn', fairlearn.__version__)"
  nproc; } | tee "$OUT/env.txt"

stamp "unpacking $TGZ"
tar -xzf "$TGZ" -C data && ls data/utk128 | wc -l

stamp "CUDA sanity: augmentation determinism and both models"
python3 - <<'PY' | tee -a "$OUT/env.txt"
import torch
from sisa.augment import augment
from sisa.model import build_model
x = torch.randint(0, 255, (64, 128, 128, 3), dtype=torch.uint8, device="cuda")
a = augment(x, torch.Generator(device="cuda").manual_seed(1))
b = augment(x, torch.Generator(device="cuda").manual_seed(1))
print("cuda augment deterministic:", torch.equal(a, b), "finite:", bool(torch.isfinite(a).all()))
for name in ("resnet18", "cnn"):
    m, _ = build_model(name, "none", 0)
    m = m.cuda().to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        print(name, "forward on cuda:", tuple(m(a).shape))
PY

stamp "pipeline benchmark"
python3 benchmarks/pipeline.py --device cuda --data_dir data/utk128 --cache_dir data/cache --sizes ${PIPELINE_SIZES:-200 128} \
  --steps 30 --decode_sample 1000 --cache_sizes 128 --out "$OUT/pipeline.json"

stamp "study: one fold of each configuration at 128 px (starts no new configuration after ${STUDY_DEADLINE} s)"
python3 benchmarks/study.py --configs baseline uniform later-slices few-shards --image_size 128 --weights none --folds 1 --sample 2 --deadline "$STUDY_DEADLINE" \
  --data_dir data/utk128 --cache_dir data/cache --checkpoints_dir checkpoints-gpu --summaries_dir summaries-gpu \
  --out "$OUT/study.json" --no_progress

stamp "collecting results"
tar -czf "$OUT/summaries.tar.gz" $(ls -d summaries-gpu 2>/dev/null) \
  $(find checkpoints-gpu -name 'config.json' -o -name 'run.json' -o -name 'metrics.jsonl' -o -name 'composition.csv' \
    -o -name 'log.jsonl' -o -name 'slice-*.json' 2>/dev/null)
stamp "done"
