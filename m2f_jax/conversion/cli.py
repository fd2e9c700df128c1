"""`m2f-convert SRC DST` (or `python convert/hf_to_flax.py`): a HF Mask2Former checkpoint -> a folder m2f_jax
loads without torch; `m2f-convert --to-hf SRC DST`: the other way, our model -> a folder transformers loads."""

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
            "it may not be SRC, lie inside SRC, or hold SRC. With --to-hf, the other way: SRC is anything "
            "m2f_jax.from_pretrained reads (a converted folder, a HF folder or hub id, a train.py run folder) and "
            "DST becomes a Hugging Face folder (config.json, model.safetensors, preprocessor_config.json) that "
            "transformers' Mask2FormerForUniversalSegmentation.from_pretrained loads."
        ),
    )
    parser.add_argument("src", help="save_pretrained folder or hub id (with --to-hf: also a converted or run folder)")
    parser.add_argument("dst", help="output folder (config.json + flax_model.safetensors; with --to-hf, HF's files)")
    parser.add_argument(
        "--to-hf", action="store_true", help="export SRC to Hugging Face's format instead of importing it"
    )
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty DST whole (no old file stays)"
    )
    args = parser.parse_args(argv)

    from m2f_jax.weights import convert_hf, model_params  # imports jax; keep --help fast

    if args.to_hf:
        return _to_hf(args)
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
        print(f"ignored {len(ignored)} unused checkpoint keys: {', '.join(ignored)}")
    return 0


def _to_hf(args: argparse.Namespace) -> int:
    from m2f_jax.conversion.to_hf import export_hf

    try:
        export_hf(args.src, args.dst, overwrite=args.overwrite, revision=args.revision)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"exported {args.src} -> {args.dst} (Hugging Face format: config.json, model.safetensors, "
        "preprocessor_config.json)"
    )
    return 0
