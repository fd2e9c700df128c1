"""ImageNet ResNet weights (torchvision's or timm's state dict) -> our ResNet backbone's weights.

Both libraries name a ResNet's tensors alike: the stem `conv1` / `bn1`, the stages `layer1`..`layer4`,
in each block `conv1..3` / `bn1..3` and, on a stage's first block, the projection `downsample.0`
(conv) / `downsample.1` (BatchNorm); `fc` is the ImageNet classifier, which the backbone has no use
for. The map goes from our names to theirs (every weight of ours has exactly one source), so every
missing, unexpected and mis-shaped tensor is reported under the name the state dict uses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from flax import nnx

from m2f_jax.config import ResNetConfig
from m2f_jax.conversion.hf import CheckpointMismatch, check_finite
from m2f_jax.modeling.frozen_batchnorm import Frozen
from m2f_jax.modeling.resnet import ResNetBackbone

# State-dict entries the backbone does not use: the classifier and BatchNorm's update counter.
IGNORED = (r"^fc\.", r"num_batches_tracked$")
_NORM_LEAVES = {"scale": "weight", "bias": "bias", "running_mean": "running_mean", "running_var": "running_var"}


def backbone_shapes(config: ResNetConfig) -> dict[str, tuple[int, ...]]:
    """Our backbone's weights (trained and frozen) by dotted name, relative to the backbone module."""
    backbone = nnx.eval_shape(lambda: ResNetBackbone(config, rngs=nnx.Rngs(0)))
    flat = nnx.to_flat_state(nnx.state(backbone, nnx.Any(nnx.Param, Frozen)))
    return {".".join(str(p) for p in path): tuple(v.shape) for path, v in flat}


def torchvision_name(name: str) -> str:
    """The torchvision / timm key of one of our backbone weights."""
    module, leaf = name.rsplit(".", 1)
    if m := re.fullmatch(r"embedder\.embedder\.(convolution|normalization)", module):
        conv, norm = "conv1", "bn1"
    elif m := re.fullmatch(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.(convolution|normalization)", module):
        block = f"layer{int(m[1]) + 1}.{m[2]}"
        conv, norm = f"{block}.conv{int(m[3]) + 1}", f"{block}.bn{int(m[3]) + 1}"
    elif m := re.fullmatch(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.(convolution|normalization)", module):
        block = f"layer{int(m[1]) + 1}.{m[2]}"
        conv, norm = f"{block}.downsample.0", f"{block}.downsample.1"
    else:
        raise ValueError(f"no torchvision name for backbone weight {name!r}")
    if m.groups()[-1] == "convolution":
        return f"{conv}.weight"
    return f"{norm}.{_NORM_LEAVES[leaf]}"


def resnet_backbone_params(
    state_dict: Mapping[str, np.ndarray], config: ResNetConfig
) -> tuple[dict[str, np.ndarray], list[str]]:
    """(our backbone's weights by dotted name relative to the backbone module, e.g.
    `encoder.stages.0.layers.0.layer.1.convolution.kernel`, the state-dict keys ignored: fc.*,
    num_batches_tracked). Conv weights go from OIHW to HWIO. Raises CheckpointMismatch listing
    every missing, unexpected and mis-shaped key (state-dict names), ValueError on non-finite values."""
    state = {key: np.asarray(value) for key, value in state_dict.items()}
    ignored = sorted(key for key in state if any(re.search(p, key) for p in IGNORED))
    shapes = backbone_shapes(config)
    sources = {torchvision_name(name): name for name in shapes}
    params, missing, misshaped = {}, [], []
    for source, name in sorted(sources.items()):
        if source not in state:
            missing.append(source)
            continue
        array = state[source]
        if name.endswith(".kernel") and array.ndim == 4:
            array = array.transpose(2, 3, 1, 0)
        if array.shape != shapes[name]:
            shape = tuple(state[source].shape)
            misshaped.append(f"{source}: state dict {shape}, backbone needs {shapes[name]} ({name})")
            continue
        params[name] = array
    unexpected = sorted(set(state) - set(sources) - set(ignored))
    if missing or unexpected or misshaped:
        lines = [f"the state dict does not match the ResNet backbone (depths {config.depths}):"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(f"    {item}" for item in items)
        raise CheckpointMismatch("\n".join(lines))
    check_finite({source: state[source] for source in sources}, "the ResNet state dict")
    return params, ignored
