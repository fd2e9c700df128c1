"""The synthetic data set (`m2f_jax.data.synthetic`) as a data source: no files, samples drawn on demand.

Its classes get ids 1..7 (as COCO's ids start at 1) and its segments ids instance + 1 (0 means no
segment in the contract; the synthetic set labels every pixel), which is also how
`write_coco_panoptic` stores it, so the written folder read back with `CocoPanoptic` gives the same
samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from m2f_jax.data.synthetic import SyntheticDataset

VAL_SEED_OFFSET = 10_000  # the val split draws from seed + this, so held-out images are never trained on


class SyntheticSource:
    """`num_images` synthetic images of `image_size` (H, W) drawn from `seed` (train) or
    `seed + VAL_SEED_OFFSET` (val); sample i is named like the COCO file it is written to, `%012d.png`."""

    def __init__(self, split: str, num_images: int, image_size: tuple[int, int] = (64, 64), seed: int = 0):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.split = split
        self.dataset = SyntheticDataset(
            num_images, image_size=image_size, seed=seed if split == "train" else seed + VAL_SEED_OFFSET
        )
        self.classes = [{"id": c["id"] + 1, "name": c["name"], "isthing": c["isthing"]} for c in self.dataset.classes]

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self, index: int) -> str:
        return f"synthetic {self.split} image {index} (seed {self.dataset.seed}, size {self.dataset.image_size})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        segments_info = [
            {"id": s["id"] + 1, "category_id": s["category_id"], "iscrowd": False, "isthing": bool(s["isthing"])}
            for s in sample["segments_info"]
        ]
        segments = (sample["instances"] + 1).astype(np.int32)
        name = f"{index:012d}.png"
        return {"image": sample["image"], "segments": segments, "segments_info": segments_info, "name": name}
