"""`m2f-convert SRC DST` (or `python convert/hf_to_flax.py`): a HF Mask2Former checkpoint, or an original
model-zoo file (.pkl / .pth), -> a folder m2f_jax loads without torch; `m2f-convert --to-hf SRC DST`: the
other way, our model -> a folder transformers loads; `--to-serving`: a jax.export serving folder."""

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
            "Hugging Face cache; HF_HUB_OFFLINE=1 reads only the cache), or an original Mask2Former model-zoo "
            "file (facebookresearch/Mask2Former, detectron2: model_final_*.pkl, or a .pth, which needs torch), "
            "whose architecture is read off its tensors and whose label names come from --labels or --preset. "
            "DST is written whole or not at all; it may not be SRC, lie inside SRC, or hold SRC. With --to-hf, "
            "the other way: SRC is anything m2f_jax.from_pretrained reads (a converted folder, a HF folder or hub "
            "id, a train.py run folder) and DST becomes a Hugging Face folder (config.json, model.safetensors, "
            "preprocessor_config.json) that transformers' Mask2FormerForUniversalSegmentation.from_pretrained "
            "loads. With --to-serving, DST becomes a serving folder: the jitted forward pass for padded HxW inputs "
            "serialized with jax.export (StableHLO), its weights, and serving.json, which m2f_jax.serving runs "
            "without the model's code."
        ),
    )
    parser.add_argument(
        "src",
        help="save_pretrained folder, hub id, or original .pkl / .pth file (with --to-hf: also a converted "
        "or run folder)",
    )
    parser.add_argument("dst", help="output folder (config.json + flax_model.safetensors; with --to-hf, HF's files)")
    parser.add_argument(
        "--to-hf", action="store_true", help="export SRC to Hugging Face's format instead of importing it"
    )
    parser.add_argument(
        "--to-serving", action="store_true", help="export SRC as a StableHLO serving folder (needs --size)"
    )
    parser.add_argument("--size", default=None, help="--to-serving: the padded input size HxW, e.g. 512x512")
    parser.add_argument("--batch", type=int, default=None, help="--to-serving: a fixed batch (default: any)")
    parser.add_argument(
        "--platforms", default=None, help="--to-serving: comma-separated, e.g. cpu,cuda (default: this machine's)"
    )
    parser.add_argument("--dtype", default=None, help="--to-serving: compute dtype, e.g. bfloat16 (default float32)")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty DST whole (no old file stays)"
    )
    parser.add_argument(
        "--labels",
        default=None,
        help="original files only: label names, as a data set and task (coco-panoptic, coco-instance, "
        "ade-semantic, ade-panoptic, ade-instance, cityscapes-semantic, cityscapes-panoptic, cityscapes-instance) "
        "or a JSON file (a list of names, or {id: name}); default: the preset's, else LABEL_i placeholders",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="original files only: a preset (e.g. swin-tiny-coco-panoptic) the checkpoint must match; "
        "it supplies the label names and the Swin image_size that the tensors do not show",
    )
    args = parser.parse_args(argv)
    if args.to_hf and args.to_serving:
        parser.error("choose one of --to-hf and --to-serving")
    if args.to_serving and not args.size:
        parser.error("--to-serving needs --size HxW (the padded input size)")

    from m2f_jax.conversion import original  # light: jax is imported by the conversion below
    from m2f_jax.weights import convert_hf, model_params  # imports jax; keep --help fast

    from_original = original.is_original_checkpoint(args.src)
    if (args.labels or args.preset) and (args.to_hf or args.to_serving or not from_original):
        print("error: --labels and --preset apply to original .pkl / .pth files only", file=sys.stderr)
        return 2
    if args.to_hf:
        return _to_hf(args)
    if args.to_serving:
        return _to_serving(args)
    try:
        if from_original:
            model, ignored = original.convert_original(
                args.src, args.dst, labels=args.labels, preset_name=args.preset, overwrite=args.overwrite
            )
        else:
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
    if from_original and all(name == f"LABEL_{i}" for i, name in config.id2label.items()):
        print("label names are placeholders (LABEL_i): pass --labels or --preset to name the classes")
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


def _to_serving(args: argparse.Namespace) -> int:
    from m2f_jax.conversion.stablehlo import export_serving

    try:
        height, width = (int(side) for side in args.size.lower().split("x"))
    except ValueError:
        print(f"error: --size must be HxW, e.g. 512x512, got {args.size!r}", file=sys.stderr)
        return 1
    platforms = args.platforms.split(",") if args.platforms else None
    try:
        export_serving(
            args.src,
            args.dst,
            (height, width),
            batch=args.batch,
            platforms=platforms,
            dtype=args.dtype,
            overwrite=args.overwrite,
            revision=args.revision,
        )
    except (ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    batch = "any batch" if args.batch is None else f"batch {args.batch}"
    print(
        f"exported {args.src} -> {args.dst} (StableHLO for {batch} of {height}x{width} inputs; run it with "
        "m2f_jax.serving.ServedModel.load)"
    )
    return 0
