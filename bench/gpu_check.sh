#!/usr/bin/env bash
# One short call on a machine with an NVIDIA GPU: install what is missing, fetch the
# weights, run the GPU tests, benchmark. Results also go to $OUT (default bench/results/gpu).
#   bash bench/gpu_check.sh
# SHARED: a folder with pretrained/tflite/ and images/ (default .shared, else ../shared).
# Offline GPU images: wheels for packages the image lacks may wait in .whl/.
# SKIP_TESTS=1 skips the GPU tests; GPU_BENCH_ARGS passes options to bench.gpu_bench
# (e.g. '--http-only --workers 8,13').
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SHARED=${SHARED:-$([ -d .shared ] && echo .shared || echo ../shared)}
export MOBILENET_SHARED_DIR
MOBILENET_SHARED_DIR=$(cd "$SHARED" && pwd)
export PYTHONUNBUFFERED=1

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  $PY -m pip install -q -e '.[dev]' || exit 1
  export PYTHONPATH=$PWD
fi

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'cuda', torch.cuda.is_available())"
  nproc
} 2>&1 | tee "$OUT/env.txt"

W=/tmp/gpu-weights
$PY -m app.cli weights fetch v3-small-1.0-224 v2-1.0-224 v1-1.0-224 v1-0.25-128 \
  --mirror "$MOBILENET_SHARED_DIR/pretrained/tflite" --dir $W 2>&1 | tail -5

echo "== GPU tests"
[ -n "${SKIP_TESTS:-}" ] || timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_gpu_path.py 2>&1 \
  | tee "$OUT/pytest.txt" | tail -25

echo "== GPU benchmark"
timeout 300 $PY -m bench.gpu_bench --weights-dir $W --images "$MOBILENET_SHARED_DIR/images" \
  ${GPU_BENCH_ARGS:-} \
  2>&1 | grep -v -E "INFO|Warning" | tee "$OUT/bench.txt"
