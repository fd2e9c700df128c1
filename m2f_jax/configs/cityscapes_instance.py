"""Cityscapes instance segmentation (targets: the 8 thing classes) with the original Mask2Former recipe.

The source has the 19 evaluation classes and the model predicts all 19 (the original's instance model
has 8); only thing segments become targets, so the 11 stuff classes are never matched.

Data: the `cityscapes` source at data.options.root = data/cityscapes, gtFine_trainvaltest.zip and
leftImg8bit_trainvaltest.zip (a manual download) unzipped there: `leftImg8bit/{train,val}/CITY/`
and `gtFine/{train,val}/CITY/`. docs/data.md says where to get them.

Recipe (reference/FACTS.md and detectron2's Cityscapes settings, `_base.cityscapes`): short side
0.5-2.0 x 1024 (long side at most 4096), 512x1024 crop, photometric distortion, flip; batch 16,
90,000 steps, poly (power 0.9), the paper's loss and optimizer. It aims at the original's published
Cityscapes mask AP, which reference/FACTS.md does not list yet. The published runs start from ImageNet-pretrained
backbones, and so does this recipe (`model.backbone_init`: the ImageNet Swin or torchvision ResNet the
original used, a hub id; "" trains from random weights). r50 / r101: the original's Cityscapes ResNet
configs train the BatchNorms (SyncBN); here they stay frozen, as in its COCO and ADE20K R50 configs.

    python train.py --config configs/cityscapes_instance.py:swin_t --workdir runs/cityscapes_instance_swin_t
    python train.py --config configs/cityscapes_instance.py:swin_l --workdir runs/cityscapes_instance_swin_l \\
        --config.data.options.root=/datasets/cityscapes
    python train.py --config configs/cityscapes_instance.py:r50 --workdir runs/cityscapes_instance_r50

The argument after ':' is swin_t (the default), swin_s, swin_b, swin_l, r50 or r101.
"""

import ml_collections

from m2f_jax.configs._base import cityscapes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return cityscapes("instance", arg)
