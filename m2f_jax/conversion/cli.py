"""`m2f-convert SRC DST`: a HF Mask2Former checkpoint, or an original model-zoo file (.pkl / .pth), -> a
folder m2f_jax loads without torch."""

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
            "DST is written whole or not at all; it may not be SRC, lie inside SRC, or hold SRC."
        ),
    )
    parser.add_argument("src", help="save_pretrained folder, hub id, or original .pkl / .pth file")
    parser.add_argument("dst", help="output folder (config.json + flax_model.safetensors)")
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

    from m2f_jax.conversion import original  # light: jax is imported by the conversion below
    from m2f_jax.weights import convert_hf, model_params  # imports jax; keep --help fast

    from_original = original.is_original_checkpoint(args.src)
    if not from_original and (args.labels or args.preset):
        print("error: --labels and --preset apply to original .pkl / .pth files only", file=sys.stderr)
        return 2
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
        print(f"ignored {len(ignored)} unused checkpoint keys: {', '.join(ignored)}")
    if from_original and all(name == f"LABEL_{i}" for i, name in config.id2label.items()):
        print("label names are placeholders (LABEL_i): pass --labels or --preset to name the classes")
    return 0
