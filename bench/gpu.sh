#!/usr/bin/env bash
# The GPU benchmarks in one command (< 8 minutes on one H200, installation included when the wheels
# are cached): inference and the training step, ours against HF eager and HF under torch.compile, on
# the same random weights, images/s and model FLOPs utilisation (XLA's FLOP count / time / peak).
#
#   bash bench/gpu.sh                        # sets up .venv-gpu, runs everything, writes bench-gpu/*.json
#   bash bench/gpu.sh --peak-tflops 989      # the GPU's dense bf16 peak (default 989: H200 / H100 SXM)
#   bash bench/gpu.sh --quick                # tiny settings: every piece once (on a CPU too)
#   VENV=.venv bash bench/gpu.sh --no-install   # an existing environment as it is
#
# Installs what scripts/setup_env.sh installs (the project at the versions in constraints.txt) plus the
# CUDA builds it needs there: jax's CUDA plugin at the pinned jax version, and PyPI's torch (its Linux
# wheels are CUDA builds), in its own virtual environment (.venv-gpu unless VENV is set).
set -euo pipefail
cd "$(dirname "$0")/.."

peak=989
quick=0
install=1
out=bench-gpu
while [ $# -gt 0 ]; do
  case "$1" in
    --peak-tflops) peak="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --no-install) install=0; shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unknown argument $1 (see the comments at the top of $0)" >&2; exit 2 ;;
  esac
done

venv="${VENV:-.venv-gpu}"
if [ "$install" = 1 ]; then
  jax_version=$(sed -n 's/^jax==//p' constraints.txt)
  transformers_version=$(sed -n 's/^transformers==//p' constraints.txt)
  [ -n "$jax_version" ] || { echo "no jax pin in constraints.txt" >&2; exit 1; }
  [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
  # constraints.txt without torch: its pin names the CPU build the tests use.
  constraints=$(mktemp)
  trap 'rm -f "$constraints"' EXIT
  grep -v '^torch==' constraints.txt > "$constraints"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet --constraint "$constraints" -e . \
    "jax[cuda12]==$jax_version" torch "transformers==$transformers_version"
fi
py="$venv/bin/python"
mkdir -p "$out"
stamp=$(date +%Y%m%d-%H%M%S)
"$py" -c 'import jax, torch; print("jax devices:", jax.devices(), "| torch cuda:", torch.cuda.is_available())'
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || true

if [ "$quick" = 1 ]; then  # every piece once, tiny: what tests/test_bench.py runs on the CPU
  "$py" bench/inference.py --quick --torch-compile --torch-compile-backend eager --peak-tflops "$peak" \
    --json "$out/inference-quick-$stamp.json"
  "$py" bench/train_step.py --preset tiny --size 64 --batch 2 --points 64 --slots 4 --runs 1 --warmup 0 \
    --dtype bfloat16 --torch-compile --torch-compile-backend eager --peak-tflops "$peak" \
    --json "$out/train-quick-$stamp.json"
  exit 0
fi

# Everything below within a budget of 470 s from here (the installation came before): each step gets
# at most its own cap and what is left.
start=$(date +%s)
run() {  # run CAP_SECONDS NAME COMMAND...: the command under the smaller of its cap and the time left
  local cap=$1 name=$2 left
  shift 2
  left=$((470 - ($(date +%s) - start)))
  if [ "$left" -lt 30 ]; then echo "$name: skipped (time budget spent)"; return 0; fi
  timeout "$((cap < left ? cap : left))" "$@" || echo "$name: failed or over its time"
}
# The targets first: inference of Swin-L at 1024 in bf16 (HF eager and torch.compile beside ours) ...
run 240 "inference Swin-L 1024" "$py" bench/inference.py --preset swin-large-coco-panoptic --sizes 1024 \
  --batches 4 --dtypes bfloat16 --post without --torch-compile --runs 10 --warmup 2 --peak-tflops "$peak" \
  --json "$out/inference-swin-l-$stamp.json"
# ... the training step at the recipe's crop (1024, bf16, remat), 2 images per GPU, HF eager with autocast ...
run 180 "training step Swin-T 1024" "$py" bench/train_step.py --preset swin-tiny-coco-panoptic --size 1024 \
  --batch 2 --dtype bfloat16 --remat full --runs 5 --warmup 1 --peak-tflops "$peak" \
  --json "$out/train-swin-t-1024-$stamp.json"
# ... then Swin-T inference, with and without post-processing, as long as time is left.
run 150 "inference Swin-T" "$py" bench/inference.py --preset swin-tiny-coco-panoptic --sizes 1024 384 \
  --batches 4 --dtypes bfloat16 float32 --post both --runs 10 --warmup 2 --peak-tflops "$peak" \
  --json "$out/inference-swin-t-$stamp.json"
echo "results in $out/"
