#!/usr/bin/env bash
# The main job on a fresh machine: sets up .venv, trains a small Mask2Former from scratch on the
# synthetic data set, written once to data/synthetic as a COCO panoptic folder (CPU is enough), then
# evaluates it on held-out images (PQ, AP, mIoU; overlays) and segments a few of them with predict.py.
# Usage: bash scripts/demo.sh [WORKDIR] [--config.key=value ...]   (default WORKDIR runs/synthetic)
# Rerunning with the same WORKDIR resumes the training from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh ""  # no extras (and not this script's arguments)
workdir="${1:-runs/synthetic}"
shift $(( $# > 0 ? 1 : 0 ))
if [ ! -f data/synthetic/annotations/panoptic_val2017.json ]; then  # written once, read by the COCO panoptic loader
  python -m m2f_jax.data.synthetic data/synthetic --train-images 4000 --val-images 64 --image-size 64
fi
python train.py --config configs/synthetic.py --workdir "$workdir" "$@"
python eval.py --config configs/synthetic.py --workdir "$workdir" --overwrite "$@"
mkdir -p "$workdir/photos"  # a few held-out images, segmented by the trained run as a user's photos would be
cp data/synthetic/val2017/00000000000[0-3].png "$workdir/photos/"
python predict.py --model "$workdir" --task panoptic --input "$workdir/photos" --output "$workdir/predictions" --overwrite
