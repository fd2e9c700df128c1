"""Writes the original-format fixtures that tests/test_original.py reads (run by hand, never by CI).

It builds tiny random models from the ORIGINAL code, facebookresearch/Mask2Former (D2SwinTransformer,
MSDeformAttnPixelDecoder, MultiScaleMaskedTransformerDecoder) and facebookresearch/detectron2 (its
ResNet backbone), on CPU, and saves for each backbone:
  original_<backbone>.pkl         the weights as detectron2 model-zoo .pkl files are written:
                                  pickle of {"model": {name: numpy array}, "__author__": ...}
  original_<backbone>_outputs.npz the original model's outputs, `pred_logits` and `pred_masks`, on
                                  the normalised input `fixture_input()` (1, 3, H, W)

Usage (needs torch, timm, and the two repositories' Python sources; nothing here is installed):
  git clone https://github.com/facebookresearch/Mask2Former /tmp/orig/Mask2Former
  git clone https://github.com/facebookresearch/detectron2 /tmp/orig/detectron2
  python tests/data/make_original_fixture.py --mask2former /tmp/orig/Mask2Former \
      --detectron2 /tmp/orig/detectron2 --out tests/data
(the folders named are those holding the `mask2former/` and `detectron2/` packages).

Neither package is importable as installed code here: detectron2's compiled `_C`, torchvision and
fvcore are absent and Mask2Former's deformable-attention CUDA op is not built. So only the model
files are loaded from the sources, and the few names they import from elsewhere are stood in for
below: registries and `configurable` (the constructors are called with explicit arguments), fvcore's
weight initialisers (every weight is redrawn afterwards) and an empty CUDA-op module, which makes
MSDeformAttn take its own pure-PyTorch path (`ms_deform_attn_core_pytorch`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for torchvision_stub

# Shapes of the fixtures: every architectural feature (shifted and padded Swin windows, a stage
# with several blocks, more decoder layers than feature levels, ResNet shortcut and plain blocks)
# at a size that keeps the committed files small. The input's sides (128x160 at window 3) make the
# blocks shift and pad their windows; stages smaller than the window also match the original (checked
# at 64x64, 96x80 and 100x76 with windows 3 and 7: both pad and never shrink the window).
SWIN = dict(embed_dim=4, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=3, mlp_ratio=2.0)
RESNET = dict(stem=8, widths=(8, 16, 32, 64), depths=(2, 1, 1, 1))
HEAD = dict(hidden=32, heads=4, enc_layers=2, enc_ffn=32, dec_layers=3, ffn=48, queries=6, classes=5)
INPUT_HW = (128, 160)


def fixture_input() -> np.ndarray:
    """The (1, 3, H, W) normalised input the outputs were computed on; numpy's default generator is
    stable across versions, so the test draws the same values instead of reading them from a file."""
    return np.random.default_rng(0).standard_normal((1, 3, *INPUT_HW)).astype(np.float32)


# ------------------------------------------------------------------------ stand-ins for imports
class _Registry:
    """Stands in for fvcore's Registry: `register()` leaves the class as it is."""

    def __init__(self, name):
        self.name = name

    def register(self, obj=None):
        return obj if obj is not None else (lambda o: o)


def _module(name, path=None, **attrs):
    """A module object put in sys.modules; with `path`, a package whose __init__ is not run, so its
    submodules import from the sources without pulling in the rest of the package."""
    module = types.ModuleType(name)
    if path is not None:
        module.__path__ = [path]
    module.__dict__.update(attrs)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def load_sources(mask2former_root: str, detectron2_root: str):
    """Imports the original model modules from source folders; returns (swin, msdeformattn, decoder, resnet)."""
    from torchvision_stub import import_timm

    import_timm()
    noop = lambda *args, **kwargs: None  # noqa: E731  (initialisers: every weight is redrawn)
    _module("fvcore")
    _module("fvcore.nn")
    _module("fvcore.nn.weight_init", c2_xavier_fill=noop, c2_msra_fill=noop)
    _module("fvcore.nn.distributed", differentiable_all_reduce=noop)
    _module("fvcore.common")
    _module("fvcore.common.registry", Registry=_Registry)
    _module("MultiScaleDeformableAttention")  # no CUDA op: MSDeformAttn falls back to PyTorch

    d2 = os.path.join(detectron2_root, "detectron2")
    _module("detectron2", d2)
    _module("detectron2.utils", os.path.join(d2, "utils"))
    _module("detectron2.config", configurable=lambda f: f)
    layers = _module("detectron2.layers", os.path.join(d2, "layers"))
    for name in ("wrappers", "shape_spec", "batch_norm", "blocks"):
        submodule = importlib.import_module(f"detectron2.layers.{name}")
        layers.__dict__.update({k: v for k, v in vars(submodule).items() if not k.startswith("_")})
    layers.DeformConv = layers.ModulatedDeformConv = None  # only for deformable ResNets
    modeling = _module("detectron2.modeling", os.path.join(d2, "modeling"))
    _module("detectron2.modeling.backbone", os.path.join(d2, "modeling", "backbone"))
    backbone = importlib.import_module("detectron2.modeling.backbone.backbone")
    modeling.Backbone, modeling.ShapeSpec = backbone.Backbone, layers.ShapeSpec
    modeling.BACKBONE_REGISTRY = modeling.SEM_SEG_HEADS_REGISTRY = _Registry("stand-in")

    m2f = os.path.join(mask2former_root, "mask2former")
    _module("mask2former", m2f)
    _module("mask2former.modeling", os.path.join(m2f, "modeling"))
    for sub in ("backbone", "pixel_decoder", "transformer_decoder"):
        _module(f"mask2former.modeling.{sub}", os.path.join(m2f, "modeling", sub))
    return (
        importlib.import_module("mask2former.modeling.backbone.swin"),
        importlib.import_module("mask2former.modeling.pixel_decoder.msdeformattn"),
        importlib.import_module("mask2former.modeling.transformer_decoder.mask2former_transformer_decoder"),
        importlib.import_module("detectron2.modeling.backbone.resnet"),
    )


# ----------------------------------------------------------------------------- building models
def _cfg(**swin):
    """The attribute tree D2SwinTransformer reads its settings from (cfg.MODEL.SWIN.*)."""
    fields = dict(
        PRETRAIN_IMG_SIZE=224, PATCH_SIZE=4, MLP_RATIO=4.0, QKV_BIAS=True, QK_SCALE=None, DROP_RATE=0.0,
        ATTN_DROP_RATE=0.0, DROP_PATH_RATE=0.0, APE=False, PATCH_NORM=True, USE_CHECKPOINT=False,
        OUT_FEATURES=["res2", "res3", "res4", "res5"],
    )  # fmt: skip
    fields.update(swin)
    return types.SimpleNamespace(MODEL=types.SimpleNamespace(SWIN=types.SimpleNamespace(**fields)))


def build_swin(swin_module):
    cfg = _cfg(
        EMBED_DIM=SWIN["embed_dim"], DEPTHS=list(SWIN["depths"]), NUM_HEADS=list(SWIN["num_heads"]),
        WINDOW_SIZE=SWIN["window_size"], MLP_RATIO=SWIN["mlp_ratio"],
    )  # fmt: skip
    return swin_module.D2SwinTransformer(cfg, None)


def build_resnet(resnet_module):
    """detectron2's ResNet as Mask2Former's R50 configs build it (basic stem, bottlenecks, stride in
    the 3x3 conv, FrozenBN), at tiny widths."""
    stem = resnet_module.BasicStem(3, RESNET["stem"], norm="FrozenBN")
    stages, in_channels = [], RESNET["stem"]
    for i, (width, depth) in enumerate(zip(RESNET["widths"], RESNET["depths"], strict=True)):
        stages.append(
            resnet_module.ResNet.make_stage(
                resnet_module.BottleneckBlock,
                depth,
                stride_per_block=[1 if i == 0 else 2] + [1] * (depth - 1),
                in_channels=in_channels,
                out_channels=width,
                bottleneck_channels=width // 4,
                norm="FrozenBN",
                stride_in_1x1=False,
            )  # fmt: skip
        )
        in_channels = width
    return resnet_module.ResNet(stem, stages, out_features=["res2", "res3", "res4", "res5"])


def build_head(pixel_decoder_module, decoder_module, backbone):
    shapes = backbone.output_shape()
    pixel_decoder = pixel_decoder_module.MSDeformAttnPixelDecoder(
        shapes, transformer_dropout=0.0, transformer_nheads=HEAD["heads"],
        transformer_dim_feedforward=HEAD["enc_ffn"], transformer_enc_layers=HEAD["enc_layers"],
        conv_dim=HEAD["hidden"], mask_dim=HEAD["hidden"], norm="GN",
        transformer_in_features=["res3", "res4", "res5"], common_stride=4,
    )  # fmt: skip
    predictor = decoder_module.MultiScaleMaskedTransformerDecoder(
        HEAD["hidden"], num_classes=HEAD["classes"], hidden_dim=HEAD["hidden"], num_queries=HEAD["queries"],
        nheads=HEAD["heads"], dim_feedforward=HEAD["ffn"], dec_layers=HEAD["dec_layers"], pre_norm=False,
        mask_dim=HEAD["hidden"], enforce_input_project=False,
    )  # fmt: skip
    return pixel_decoder, predictor


def randomise(named_tensors, generator):
    """Moves every weight off its initial value (many start at 0 or 1): norm scales near 1, the rest
    small noise; BN running variances stay positive."""
    import torch

    with torch.no_grad():
        for name, t in named_tensors:
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=generator)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=generator))
            elif t.ndim == 1 and ("norm" in name or name.endswith("running_mean")):
                t.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                t.add_(0.05 * noise)


def make(name, backbone, pixel_decoder, predictor, out_dir, seed):
    import torch

    modules = {"backbone": backbone, "sem_seg_head.pixel_decoder": pixel_decoder, "sem_seg_head.predictor": predictor}
    generator = torch.Generator().manual_seed(seed)
    for module in modules.values():
        module.eval()
        randomise(list(module.named_parameters()) + list(module.named_buffers()), generator)
    state = {f"{prefix}.{k}": v.numpy().copy() for prefix, m in modules.items() for k, v in m.state_dict().items()}
    empty_weight = np.ones(HEAD["classes"] + 1, np.float32)  # the criterion's buffer, as saved with the model
    empty_weight[-1] = 0.1
    state["criterion.empty_weight"] = empty_weight

    pixel_values = torch.from_numpy(fixture_input())
    with torch.no_grad():
        features = backbone(pixel_values)
        mask_features, _, multi_scale = pixel_decoder.forward_features(features)
        out = predictor(multi_scale, mask_features, None)
    with open(os.path.join(out_dir, f"original_{name}.pkl"), "wb") as f:
        pickle.dump({"model": state, "__author__": "m2f_jax tests/data/make_original_fixture.py"}, f)
    np.savez_compressed(
        os.path.join(out_dir, f"original_{name}_outputs.npz"),
        pred_logits=out["pred_logits"].numpy(),
        pred_masks=out["pred_masks"].numpy(),
    )
    print(f"{name}: {len(state)} tensors, {sum(v.size for v in state.values())} values")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mask2former", required=True, help="folder holding the mask2former/ package")
    parser.add_argument("--detectron2", required=True, help="folder holding the detectron2/ package")
    parser.add_argument("--out", default=HERE)
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    swin, msdeformattn, decoder, resnet = load_sources(args.mask2former, args.detectron2)
    for name, build, seed in (("swin", lambda: build_swin(swin), 1), ("resnet", lambda: build_resnet(resnet), 2)):
        backbone = build()
        make(name, backbone, *build_head(msdeformattn, decoder, backbone), args.out, seed)


if __name__ == "__main__":
    main()
