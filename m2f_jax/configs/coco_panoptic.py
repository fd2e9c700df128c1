"""COCO panoptic segmentation (133 classes: 80 things, 53 stuff) with the original Mask2Former recipe.

Data: the `coco_panoptic` source at data.options.root = data/coco: `train2017/`, `val2017/`,
`annotations/panoptic_{train,val}2017.json` and the PNG folders `annotations/panoptic_{train,val}2017/`
unpacked from the zips inside the annotation zip. docs/data.md says where to get it and how to lay it out.

Recipe (reference/FACTS.md): large-scale jitter (flip, resize 0.1-2.0 of 1024, 1024x1024 crop),
batch 16, 368,750 steps = 50 epochs (Swin-L: 737,500, 100 epochs), AdamW lr 1e-4 x0.1 at 88.9% and
96.3% of the run, the paper's loss and optimizer (`_base`); 100 queries (Swin-L 200), as many target
slots per image. Reproduces the published COCO panoptic PQ: Swin-T 53.2, Swin-S 54.6, Swin-B (IN21k)
56.4, Swin-L (IN21k) 57.8, and the ResNet baselines' R50 51.9, R101 52.6. Those runs start from
ImageNet-pretrained backbones, and so does this recipe (`model.backbone_init`: the ImageNet Swin or
torchvision ResNet the original used, a hub id; "" trains from random weights).

    python train.py --config configs/coco_panoptic.py:swin_t --workdir runs/coco_panoptic_swin_t
    python train.py --config configs/coco_panoptic.py:swin_l --workdir runs/coco_panoptic_swin_l \\
        --config.data.options.root=/datasets/coco
    python train.py --config configs/coco_panoptic.py:r50 --workdir runs/coco_panoptic_r50

The argument after ':' is swin_t (the default), swin_s, swin_b, swin_l, r50 or r101.
"""

import ml_collections

from m2f_jax.configs._base import augment, preset_name, recipe

# 50 epochs; Swin-L 100
STEPS = {"swin_t": 368_750, "swin_s": 368_750, "swin_b": 368_750, "swin_l": 737_500, "r50": 368_750, "r101": 368_750}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = preset_name(arg, "coco", "panoptic")
    return recipe(
        "panoptic", "coco_panoptic", {"root": "data/coco"}, augment("lsj", (1024, 1024)), name,
        steps=STEPS[arg or "swin_t"], schedule="multistep", test_size=(800, 1333),
    )  # fmt: skip
