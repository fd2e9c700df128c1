"""COCO instance segmentation (80 thing classes) with the original Mask2Former recipe.

Data: the `coco_instances` source at data.options.root = data/coco: `train2017/`, `val2017/` and
`annotations/instances_{train,val}2017.json` (polygons and RLE masks). docs/data.md says where to get
it and how to lay it out.

Recipe (reference/FACTS.md): large-scale jitter (flip, resize 0.1-2.0 of 1024, 1024x1024 crop),
batch 16, 368,750 steps = 50 epochs (Swin-L: 737,500, 100 epochs), AdamW lr 1e-4 x0.1 at 88.9% and
96.3% of the run, the paper's loss and optimizer (`_base`); 100 queries (Swin-L 200), as many target
slots per image. Reproduces the published COCO instance mask AP: Swin-T 45.0, Swin-S 46.3, Swin-B
(IN21k) 48.1, Swin-L (IN21k) 50.1, and the ResNet baselines' R50 43.7, R101 44.2. Those runs start from
ImageNet-pretrained backbones, and so does this recipe (`model.backbone_init`: the ImageNet Swin or
torchvision ResNet the original used, a hub id; "" trains from random weights).

    python train.py --config configs/coco_instance.py:swin_t --workdir runs/coco_instance_swin_t
    python train.py --config configs/coco_instance.py:swin_b --workdir runs/coco_instance_swin_b \\
        --config.data.options.root=/datasets/coco
    python train.py --config configs/coco_instance.py:r50 --workdir runs/coco_instance_r50

The argument after ':' is swin_t (the default), swin_s, swin_b, swin_l, r50 or r101.
"""

import ml_collections

from m2f_jax.configs._base import augment, preset_name, recipe

# 50 epochs; Swin-L 100
STEPS = {"swin_t": 368_750, "swin_s": 368_750, "swin_b": 368_750, "swin_l": 737_500, "r50": 368_750, "r101": 368_750}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = preset_name(arg, "coco", "instance")
    return recipe(
        "instance", "coco_instances", {"root": "data/coco"}, augment("lsj", (1024, 1024)), name,
        steps=STEPS[arg or "swin_t"], schedule="multistep", test_size=(800, 1333),
    )  # fmt: skip
