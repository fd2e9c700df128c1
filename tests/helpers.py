"""Shared helpers: random-weight HF models saved with save_pretrained, and NCHW <-> NHWC."""

from __future__ import annotations

import numpy as np
import pytest

from m2f_jax.config import Mask2FormerConfig, ResNetConfig, SwinConfig


def tiny_config(window_size: int = 4, num_labels: int = 5, **changes) -> Mask2FormerConfig:
    """A few-hundred-thousand-parameter model with every architectural feature of the real one."""
    backbone = SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=window_size)
    fields = dict(
        backbone_config=backbone,
        id2label={i: f"class_{i}" for i in range(num_labels)},
        num_queries=12,
        hidden_dim=64,
        feature_size=64,
        mask_feature_size=64,
        encoder_feedforward_dim=128,
        dim_feedforward=128,
        encoder_layers=2,
        decoder_layers=5,
    )
    fields.update(changes)
    return Mask2FormerConfig(**fields)


def tiny_resnet_config(depths=(1, 2, 1, 1), **changes) -> Mask2FormerConfig:
    """tiny_config's heads on a tiny bottleneck ResNet (stem 16 channels, stages 32..256)."""
    backbone = ResNetConfig(embedding_size=16, hidden_sizes=(32, 64, 128, 256), depths=depths)
    return tiny_config(backbone_config=backbone, **changes)


def save_random_hf_model(config: Mask2FormerConfig, folder, seed: int = 0):
    """Builds HF's model for `config`, moves every parameter (and BatchNorm statistic) off its (often
    zero) initial value, saves it with save_pretrained (the hub's key names) and returns the model in eval mode."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    hf_config = transformers.Mask2FormerConfig.from_dict(config.to_hf_dict())
    model = transformers.Mask2FormerForUniversalSegmentation(hf_config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.ndim == 1 and ("norm" in name or name.endswith(".1.weight")):
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                p.add_(0.05 * noise)
        for name, buffer in model.named_buffers():  # BatchNorm statistics (ResNet backbones)
            if name.endswith("running_mean"):
                buffer.copy_(0.2 * torch.randn(buffer.shape, generator=generator))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
    model.save_pretrained(str(folder))
    return model


def nhwc(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 2, 3, 1)


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# XLA options for steps the tests compile only to compare them: optimisation level 0 compiles in about
# half the time and computes the same values (the suite must fit 15 minutes on 2 cores).
FAST_COMPILE = {"xla_backend_optimization_level": 0}
