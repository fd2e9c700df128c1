"""Pre- and post-processing for panoptic, instance and semantic segmentation (HF's operations, NHWC)."""
