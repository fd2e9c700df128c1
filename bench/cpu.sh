#!/usr/bin/env bash
# The CPU tables of docs/benchmarks.md in one command (about an hour on 2 cores): inference, the
# training step, its memory at 1024 and the micro-benchmarks, ours against HF in the same runs.
#
#   bash bench/cpu.sh [OUT]        # JSON records in OUT (default bench-cpu/), one file per table
#
# Run it on an otherwise idle machine: every ratio is interleaved, but a loaded machine adds noise.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh test  # torch and transformers: HF is measured beside ours
out="${1:-bench-cpu}"
mkdir -p "$out"
stamp=$(date +%Y%m%d-%H%M%S)
tiny=swin-tiny-coco-panoptic
python bench/inference.py --preset $tiny --sizes 384 512 --batches 1 4 --runs 5 --json "$out/inference-t-$stamp.json"
python bench/inference.py --preset $tiny --sizes 1024 --batches 1 4 --runs 3 --json "$out/inference-t-1024-$stamp.json"
python bench/inference.py --preset swin-large-coco-panoptic --sizes 384 --runs 3 --json "$out/inference-l-$stamp.json"
# bfloat16: torch's bf16 kernels are 20-30x slower than float32 on CPUs without bf16 arithmetic
python bench/inference.py --preset $tiny --sizes 384 --dtypes bfloat16 --runs 3 --json "$out/inference-t-bf16-$stamp.json"
python bench/inference.py --preset swin-large-coco-panoptic --sizes 384 --dtypes bfloat16 --post without --runs 1 \
  --json "$out/inference-l-bf16-$stamp.json"
python bench/hlo_profile.py --what forward --parts --size 384 --batch 1 --json "$out/profile-b1-$stamp.json"
python bench/hlo_profile.py --what forward --parts --size 384 --batch 4 --json "$out/profile-b4-$stamp.json"
python bench/train_step.py --preset tiny --size 128 --batch 2 --runs 5 --json "$out/train-small-$stamp.json"
python bench/train_step.py --preset $tiny --size 384 --batch 2 --runs 5 --breakdown --json "$out/train-t-$stamp.json"
python bench/train_step.py --preset $tiny --memory 1024 --batch 2 --runs 0 --json "$out/memory-$stamp.json"
python bench/micro.py --only deform points matcher loss update --json "$out/micro-$stamp.json"
