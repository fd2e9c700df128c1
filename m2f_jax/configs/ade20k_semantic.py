"""ADE20K semantic segmentation (SceneParsing, 150 classes) with the original Mask2Former recipe.

Data: the `ade20k` source at data.options.root = data/ADEChallengeData2016, the unzipped
ADEChallengeData2016 release: `images/{training,validation}/*.jpg` and
`annotations/{training,validation}/*.png`. docs/data.md says where to get it.

Recipe (reference/FACTS.md): short side 0.5-2.0 x 512 (long side at most 2048), 512x512 crop with the
category-area constraint (max 1.0), photometric distortion, flip; Swin-B and Swin-L (pretrained at
384) use 640 (long side at most 2560, 640x640 crop). Batch 16, 160,000 steps, poly (power 0.9),
the paper's loss and optimizer (`_base`), 100 queries. Evaluated at short side 512 (640), with the
original's multi-scale + flip test-time augmentation available as eval.tta. Target slots: 100,
the queries (an image holds one target per class present; the original has no such limit).
Reproduces the published single-scale ADE20K mIoU: Swin-T 47.7, Swin-S 51.3, Swin-B (IN21k) 53.9,
Swin-L (IN21k) 56.1, and the ResNet baselines' R50 47.2, R101 47.8 (the original's R101 config trains
its BatchNorms as SyncBN; here they stay frozen, as in its R50 config). Those runs start from
ImageNet-pretrained backbones, and so does this recipe (`model.backbone_init`: the ImageNet Swin or
torchvision ResNet the original used, a hub id; "" trains from random weights).

    python train.py --config configs/ade20k_semantic.py:swin_t --workdir runs/ade20k_swin_t
    python train.py --config configs/ade20k_semantic.py:swin_l --workdir runs/ade20k_swin_l \\
        --config.data.options.root=/datasets/ADEChallengeData2016
    python train.py --config configs/ade20k_semantic.py:r50 --workdir runs/ade20k_r50

The argument after ':' is swin_t (the default), swin_s, swin_b, swin_l, r50 or r101.
"""

import ml_collections

from m2f_jax.configs._base import augment, preset_name, recipe

CROP = {"swin_t": 512, "swin_s": 512, "swin_b": 640, "swin_l": 640, "r50": 512, "r101": 512}  # 640: pretrained at 384


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = preset_name(arg, "ade", "semantic")
    crop = CROP[arg or "swin_t"]
    augmentation = augment("semantic", (crop, crop), base_size=crop, max_size=4 * crop)
    return recipe(
        "semantic", "ade20k", {"root": "data/ADEChallengeData2016"}, augmentation, name, steps=160_000,
        schedule="poly", test_size=(crop, 4 * crop),
        tta=(tuple(crop * k // 4 for k in (2, 3, 4, 5, 6, 7)), 7 * crop),  # the original's: 256..896, 3584 at 512
    )  # fmt: skip
