"""Model configuration: frozen dataclasses that read and write Hugging Face `config.json` files.

The field names are those of HF's `SwinConfig`, `ResNetConfig` and `Mask2FormerConfig`, so a folder written by
`save_pretrained` (or downloaded from the hub) describes the same model here. Fields of those
classes that do not change the architecture or the weights (torch dtype, problem type, ...) are
ignored on reading and not written back.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4")


@dataclasses.dataclass(frozen=True)
class SwinConfig:
    """The Swin Transformer backbone (HF `SwinConfig` fields that shape the model)."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    num_channels: int = 3
    image_size: int = 224
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.3
    layer_norm_eps: float = 1e-5
    use_absolute_embeddings: bool = False
    out_features: tuple[str, ...] = STAGE_NAMES

    def __post_init__(self):
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "num_heads", tuple(self.num_heads))
        object.__setattr__(self, "out_features", tuple(self.out_features))
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
        if self.use_absolute_embeddings:
            raise ValueError("use_absolute_embeddings=True is not supported (no Mask2Former checkpoint uses it)")
        if self.hidden_act != "gelu":
            raise ValueError(f"hidden_act must be 'gelu', got {self.hidden_act!r}")
        if self.out_features != STAGE_NAMES:
            raise ValueError(f"Mask2Former needs all four Swin stages as out_features, got {self.out_features}")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(f"stage {i + 1}: width {self.embed_dim * 2**i} is not divisible by {heads} heads")

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """The ResNet backbone (HF `ResNetConfig` fields that shape the model), as Mask2Former's R50 / R101
    baselines use it: bottleneck blocks with the stride on the 3x3 conv (detectron2's STRIDE_IN_1X1=False,
    torchvision's and timm's layout), strides 4 to 32, all four stages out."""

    embedding_size: int = 64
    hidden_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    num_channels: int = 3
    layer_type: str = "bottleneck"
    hidden_act: str = "relu"
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False
    out_features: tuple[str, ...] = STAGE_NAMES

    def __post_init__(self):
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        object.__setattr__(self, "out_features", tuple(self.out_features))
        if self.layer_type != "bottleneck":
            raise ValueError(f"layer_type must be 'bottleneck' (ResNet-50 and deeper), got {self.layer_type!r}")
        if len(self.depths) != 4 or len(self.hidden_sizes) != 4:
            raise ValueError(
                f"Mask2Former needs four ResNet stages, got depths {self.depths}, hidden_sizes {self.hidden_sizes}"
            )
        if min(self.depths) < 1:
            raise ValueError(f"every stage needs at least one block, got depths {self.depths}")
        if any(size % 4 for size in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be multiples of 4 (the bottleneck width), got {self.hidden_sizes}")
        if self.hidden_act != "relu":
            raise ValueError(f"hidden_act must be 'relu', got {self.hidden_act!r}")
        if self.downsample_in_first_stage:
            raise ValueError("downsample_in_first_stage=True is not supported (Mask2Former's strides are 4 to 32)")
        if self.downsample_in_bottleneck:
            raise ValueError(
                "downsample_in_bottleneck=True (the stride on the first 1x1 conv) is not supported: Mask2Former's "
                "ResNets put it on the 3x3 conv (STRIDE_IN_1X1=False), as torchvision and timm do"
            )
        if self.out_features != STAGE_NAMES:
            raise ValueError(f"Mask2Former needs all four ResNet stages as out_features, got {self.out_features}")

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return self.hidden_sizes


BackboneConfig = SwinConfig | ResNetConfig
_BACKBONE_TYPES = {"swin": SwinConfig, "resnet": ResNetConfig}


@dataclasses.dataclass(frozen=True)
class Mask2FormerConfig:
    """The whole model (HF `Mask2FormerConfig` fields), with the Swin or ResNet backbone in `backbone_config`."""

    backbone_config: BackboneConfig = dataclasses.field(default_factory=SwinConfig)
    id2label: dict[int, str] = dataclasses.field(default_factory=lambda: {i: f"LABEL_{i}" for i in range(133)})
    feature_size: int = 256
    mask_feature_size: int = 256
    hidden_dim: int = 256
    encoder_feedforward_dim: int = 1024
    activation_function: str = "relu"
    encoder_layers: int = 6
    decoder_layers: int = 10
    num_attention_heads: int = 8
    dropout: float = 0.0
    dim_feedforward: int = 2048
    pre_norm: bool = False
    enforce_input_projection: bool = False
    common_stride: int = 4
    ignore_value: int = 255
    num_queries: int = 100
    no_object_weight: float = 0.1
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    train_num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    # The loss settings above and use_auxiliary_loss are what `LossConfig.from_model_config` reads.
    use_auxiliary_loss: bool = True
    # HF's initialisation scales: read by no code here (each module initialises as the original code
    # does), so only HF's defaults are accepted.
    init_std: float = 0.02
    init_xavier_std: float = 1.0
    feature_strides: tuple[int, ...] = (4, 8, 16, 32)

    def __post_init__(self):
        object.__setattr__(self, "id2label", {int(k): str(v) for k, v in self.id2label.items()})
        object.__setattr__(self, "feature_strides", tuple(self.feature_strides))
        if not isinstance(self.backbone_config, SwinConfig | ResNetConfig):
            raise TypeError(f"backbone_config must be a SwinConfig or ResNetConfig, got {type(self.backbone_config)}")
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise ValueError("id2label must map the ids 0..num_labels-1")
        if self.activation_function != "relu":
            raise ValueError(f"activation_function must be 'relu', got {self.activation_function!r}")
        if self.feature_strides != (4, 8, 16, 32) or self.common_stride != 4:
            raise ValueError("only feature_strides (4, 8, 16, 32) with common_stride 4 are supported")
        for name, default in (("init_std", 0.02), ("init_xavier_std", 1.0)):
            if getattr(self, name) != default:
                raise ValueError(
                    f"{name}={getattr(self, name)} is not honoured: m2f_jax initialises each module as the "
                    f"original code does and reads no initialisation scale; use {default} (HF's default)"
                )
        if self.decoder_layers < 1:
            raise ValueError(f"decoder_layers must be >= 1, got {self.decoder_layers}")
        for name in ("feature_size", "hidden_dim"):
            width = getattr(self, name)
            if width % self.num_attention_heads:
                raise ValueError(f"{name}={width} is not divisible by num_attention_heads={self.num_attention_heads}")
            if width % 32:
                raise ValueError(f"{name}={width} must be a multiple of 32 (GroupNorm with 32 groups)")

    def __hash__(self) -> int:  # id2label is a dict; hash the JSON form so modules can be static
        return hash(json.dumps(self.to_hf_dict(), sort_keys=True))

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def replace(self, **changes: Any) -> Mask2FormerConfig:
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- HF config.json round trip
    def to_hf_dict(self) -> dict[str, Any]:
        """The dict HF's `Mask2FormerConfig.from_dict` accepts (and `config.json` holds)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        backbone = dataclasses.asdict(self.backbone_config)
        backbone["model_type"] = next(k for k, v in _BACKBONE_TYPES.items() if isinstance(self.backbone_config, v))
        backbone["out_features"] = list(self.backbone_config.out_features)
        out["backbone_config"] = backbone
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = {v: k for k, v in self.id2label.items()}
        out["model_type"] = "mask2former"
        out["architectures"] = ["Mask2FormerForUniversalSegmentation"]
        return json.loads(json.dumps(out))  # tuples -> lists

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any]) -> Mask2FormerConfig:
        model_type = data.get("model_type", "mask2former")
        if model_type != "mask2former":
            raise ValueError(f"expected a mask2former config, got model_type={model_type!r}")
        backbone = dict(data.get("backbone_config") or {})
        backbone_type = backbone.get("model_type", "swin")
        if backbone_type not in _BACKBONE_TYPES:
            raise ValueError(
                f"only Swin and ResNet backbones are supported (backbone model_type 'swin' or 'resnet'), "
                f"got backbone model_type={backbone_type!r}"
            )
        backbone_cls = _BACKBONE_TYPES[backbone_type]
        backbone_fields = _pick(backbone_cls, backbone)
        if "out_features" not in backbone:
            backbone_fields.pop("out_features", None)
        fields = _pick(cls, data)
        fields.pop("backbone_config", None)
        if "id2label" not in data and "num_labels" in data:
            fields["id2label"] = {i: f"LABEL_{i}" for i in range(int(data["num_labels"]))}
        return cls(backbone_config=backbone_cls(**backbone_fields), **fields)

    def save(self, folder: str | os.PathLike) -> None:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(self.to_hf_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, folder_or_file: str | os.PathLike) -> Mask2FormerConfig:
        path = os.fspath(folder_or_file)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no config.json at {path}")
        with open(path) as f:
            return cls.from_hf_dict(json.load(f))


def _pick(cls, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names and v is not None}


# -------------------------------------------------------------------------------------- presets
# Backbone shapes of the published Mask2Former checkpoints (tiny/small at 224 pretraining with
# window 7, base/large at 384 with window 12), and the label and query counts of each dataset/task.
SWIN_VARIANTS = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12, image_size=384),
    "base-IN21k": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12, image_size=384),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12, image_size=384),
}
DATASET_LABELS = {
    ("coco", "panoptic"): 133,
    ("coco", "instance"): 80,
    ("ade", "semantic"): 150,
    ("ade", "panoptic"): 150,
    ("ade", "instance"): 100,
    ("cityscapes", "semantic"): 19,
    ("cityscapes", "panoptic"): 19,
    ("cityscapes", "instance"): 8,
    ("mapillary-vistas", "semantic"): 65,
    ("mapillary-vistas", "panoptic"): 65,
    ("mapillary-vistas", "instance"): 37,
}


# Mask2Former's ResNet baselines (R50, R101): torchvision's ImageNet ResNets, 100 queries on every task.
RESNET_VARIANTS = {"50": dict(depths=(3, 4, 6, 3)), "101": dict(depths=(3, 4, 23, 3))}


def preset(name: str) -> Mask2FormerConfig:
    """The config of a published checkpoint, e.g. `preset("swin-tiny-coco-panoptic")`, or of a ResNet
    baseline of the paper, e.g. `preset("resnet-50-coco-panoptic")`.

    Accepts the hub id too ("facebook/mask2former-swin-tiny-coco-panoptic"). Label names are
    placeholders (LABEL_i): the real names come with the checkpoint's own config.json.
    """
    short = name.split("/")[-1].removeprefix("mask2former-")
    family, variants = ("resnet", RESNET_VARIANTS) if short.startswith("resnet-") else ("swin", SWIN_VARIANTS)
    short = short.removeprefix(family + "-")
    for variant in sorted(variants, key=len, reverse=True):
        if short.startswith(variant + "-"):
            dataset_task = short[len(variant) + 1 :]
            dataset, _, task = dataset_task.rpartition("-")
            if (dataset, task) in DATASET_LABELS:
                break
    else:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(preset_names())}")
    if family == "resnet":
        backbone, queries = ResNetConfig(**RESNET_VARIANTS[variant]), 100
    else:
        # Swin-L runs 200 queries except for semantic segmentation (the original configs).
        backbone = SwinConfig(**SWIN_VARIANTS[variant])
        queries = 200 if variant == "large" and task != "semantic" else 100
    return Mask2FormerConfig(
        backbone_config=backbone,
        id2label={i: f"LABEL_{i}" for i in range(DATASET_LABELS[(dataset, task)])},
        num_queries=queries,
    )


def preset_names() -> list[str]:
    swin = [f"swin-{v}-{d}-{t}" for v in SWIN_VARIANTS for (d, t) in DATASET_LABELS]
    return swin + [f"resnet-{v}-{d}-{t}" for v in RESNET_VARIANTS for (d, t) in DATASET_LABELS]
