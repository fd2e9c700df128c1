"""A small Mask2Former trained from scratch on the shipped synthetic dataset, on a CPU.

python -m m2f_jax.data.synthetic data/synthetic --train-images 4000 --val-images 64   # the data set
python train.py --config configs/synthetic.py --workdir runs/synthetic
python train.py --config configs/synthetic.py --workdir runs/quick --config.steps=50
"""

import ml_collections

from m2f_jax.configs._base import augment, data, evaluation


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "panoptic"  # targets: "panoptic" (things + stuff), "instance" or "semantic"

    # The synthetic shapes written as a COCO panoptic folder (scripts/demo.sh writes it with
    # `python -m m2f_jax.data.synthetic data/synthetic ...`), read by the loader a COCO user's data goes through.
    c.data = data(
        "coco_panoptic", {"root": "data/synthetic"}, max_instances=16, augmentation=augment("flip", (64, 64)),
        eval_images=64, workers=0, max_skipped=10,  # 64x64 PNGs: reading threads keep up; both cores train
    )  # fmt: skip

    # Model: Swin with every feature of the real one, scaled down to train in minutes.
    c.model = ml_collections.ConfigDict()
    c.model.preset = ""  # a name from m2f_jax.preset_names() overrides the fields below
    c.model.init_from = ""  # a converted or HF folder to fine-tune from (its config is used)
    c.model.keep_matching_labels = True  # init_from with other labels: keep the class outputs of shared names
    c.model.backbone_init = ""  # an ImageNet Swin checkpoint (file, folder or hub id) to start the backbone from
    c.model.embed_dim = 32
    c.model.depths = (2, 2, 2, 2)
    c.model.num_heads = (1, 2, 4, 8)
    c.model.window_size = 4
    c.model.num_queries = 16
    c.model.hidden_dim = 64
    c.model.feature_size = 64
    c.model.mask_feature_size = 64
    c.model.encoder_feedforward_dim = 128
    c.model.dim_feedforward = 128
    c.model.encoder_layers = 2
    c.model.decoder_layers = 4
    c.model.drop_path_rate = 0.0

    c.loss = ml_collections.ConfigDict()
    c.loss.class_weight = 2.0
    c.loss.mask_weight = 5.0
    c.loss.dice_weight = 5.0
    c.loss.no_object_weight = 0.1
    c.loss.num_points = 1024  # the masks are 16x16 here; 12544 for full-size images
    c.loss.oversample_ratio = 3.0
    c.loss.importance_sample_ratio = 0.75
    c.loss.matcher = "hungarian"
    c.loss.auxiliary = True  # the loss of every decoder layer's prediction, not only the last

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.05
    c.optimizer.backbone_multiplier = 1.0  # trained from scratch: no pretrained backbone to protect
    c.optimizer.clip_norm = 1.0
    c.optimizer.schedule = "poly"
    c.optimizer.warmup_steps = 50
    c.optimizer.warmup_factor = 0.01
    c.optimizer.accumulation_steps = 1

    c.steps = 450  # the demo's 10 minutes on 2 cores, installs included (README)
    c.batch_size = 16  # global, over all processes and devices
    c.fsdp = 1
    c.remat = "none"  # "full", "dots", ...: recompute activations in the backward pass (large images or batches)
    c.scan_layers = False  # True: one lax.scan over identical layers (compiles faster for deep models)
    c.compute_dtype = "float32"  # "bfloat16" on GPUs and TPUs (parameters and optimizer stay float32)
    c.log_every = 25
    c.checkpoint_every = 250
    c.keep_checkpoints = 2
    c.eval = evaluation(
        64, 64, every=0, batch_size=16, tta_scales=(48, 64, 80), tta_max_size=80
    )  # images at model size
    return c
