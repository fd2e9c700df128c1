"""`python convert/hf_to_flax.py SRC DST`: a HF Mask2Former checkpoint -> a folder m2f_jax loads without torch."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Convert a Hugging Face Mask2FormerForUniversalSegmentation checkpoint to m2f_jax's format. "
            "SRC is a folder written by save_pretrained (config.json + model.safetensors, or "
            "pytorch_model.bin, which needs torch) or a hub id such as "
            "facebook/mask2former-swin-tiny-coco-panoptic (needs internet, unless already in the local "
            "Hugging Face cache; HF_HUB_OFFLINE=1 reads only the cache). DST is written whole or not at all; "
            "it may not be SRC, lie inside SRC, or hold SRC."
        ),
    )
    parser.add_argument("src", help="save_pretrained folder or hub id")
    parser.add_argument("dst", help="output folder (config.json + flax_model.safetensors)")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty DST whole (no old file stays)"
    )
    args = parser.parse_args(argv)

    from m2f_jax.weights import convert_hf, model_params  # imports jax; keep --help fast

    try:
        model, ignored = convert_hf(args.src, args.dst, revision=args.revision, overwrite=args.overwrite)
    except (ValueError, OSError) as e:  # bad input (CheckpointMismatch is a ValueError), missing or unwritable paths
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(p.size for p in model_params(model).values())
    config = model.config
    print(
        f"converted {args.src} -> {args.dst}: {n / 1e6:.1f}M parameters, "
        f"{config.num_labels} labels, {config.num_queries} queries"
    )
    if ignored:
        counters = [key for key in ignored if key.endswith(".num_batches_tracked")]  # one per BatchNorm: counted
        named = [key for key in ignored if key not in counters]
        counted = f" and {len(counters)} BatchNorm num_batches_tracked counters" if counters else ""
        print(f"ignored {len(ignored)} unused checkpoint keys: {', '.join(named)}{counted}")
    return 0
