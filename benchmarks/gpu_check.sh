#!/usr/bin/env bash
# Every check this project runs on a CUDA GPU, in two commands on one warm machine (the accelerator
# is lent for minutes, and at most 64 MiB of files travel per command).
#
#   here:        python3 benchmarks/pack_faces.py --size 200 --out .device        # 2 parts of <= 44 MiB
#   command 1:   bash benchmarks/gpu_check.sh unpack .device/utk200-1of2.tar        (carry .device/utk200-1of2.tar)
#   command 2:   bash benchmarks/gpu_check.sh all .device/utk200-2of2.tar           (carry .device/utk200-2of2.tar)
#
# `all` checks, in order, writing to $OUT (default benchmarks/results/gpu/): env.txt; engine-check.json
# (graphs versus eager on one short stage, isolation; benchmarks/engine_check.py); pipeline.json
# (original-style pipeline vs ours, eager / graphs / graphs over a fold / torch.compile, at 200 and
# 128 px; benchmarks/pipeline.py); the GPU study (study.py --preset gpu --engine graphs, all
# configurations, 5 folds at 128 px; stopped by STUDY_LIMIT seconds) with its report in
# $OUT/reports/; log.txt. 128 px faces come from the 200 px files (the image cache resizes).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results/gpu}
STUDY_LIMIT=${STUDY_LIMIT:-420}
what=${1:-all}
part=${2:-}
mkdir -p "$OUT" data
exec > >(tee -a "$OUT/log.txt") 2>&1
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

if [ -n "$part" ]; then
  stamp "unpacking $part into data/"
  tar -xf "$part" -C data && ls data/utk200 | wc -l
fi
[ "$what" = "unpack" ] && exit 0

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then   # packages the GPU image lacks (fairlearn, xxhash)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
stamp "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch, PIL, pandas, sklearn, fairlearn; from PIL import features; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'PIL', PIL.__version__, 'webp', features.check('webp'), 'pandas', pandas.__version__, 'sklearn', sklearn.__version__, 'fairlearn', fairlearn.__version__)"
  nproc; } | tee "$OUT/env.txt"

stamp "graphs engine versus eager (correctness, isolation)"
python3 benchmarks/engine_check.py --data_dir data/utk200 --cache_dir data/cache --size 128 --out "$OUT/engine-check.json"

stamp "pipeline benchmark at 200 and 128 px (eager, graphs, graphs over a fold, compiled, ceiling)"
python3 benchmarks/pipeline.py --device cuda --data_dir data/utk200 --cache_dir data/cache --sizes 200 128 \
  --steps 30 --decode_sample 1000 --cache_sizes 128 --out "$OUT/pipeline.json"

stamp "the GPU study: study.py --preset gpu --engine graphs (stopped after ${STUDY_LIMIT} s; rerunning resumes)"
timeout "$STUDY_LIMIT" python3 study.py --preset gpu --engine graphs --data_dir data/utk200 --cache_dir data/cache \
  --checkpoints_dir checkpoints-gpu --summaries_dir summaries-gpu --reports_dir "$OUT/reports" --no_progress
echo "study exit status $? (124: stopped by the limit)"

stamp "collecting results (no images)"
tar -czf "$OUT/runs.tar.gz" $(find checkpoints-gpu -name 'config.json' -o -name 'run.json' -o -name 'metrics.jsonl' \
  -o -name 'composition.csv' -o -name 'log.jsonl' -o -name 'slice-*.json' 2>/dev/null)
stamp "done"
