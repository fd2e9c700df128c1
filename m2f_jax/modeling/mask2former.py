"""Mask2Former for universal segmentation: backbone -> pixel decoder -> masked-attention decoder."""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
from flax import nnx, struct

from m2f_jax.config import Mask2FormerConfig, ResNetConfig
from m2f_jax.modeling import initializers as init
from m2f_jax.modeling.decoder import DecoderOutput, TransformerModule
from m2f_jax.modeling.layers import UNROLLED, LayerExecution
from m2f_jax.modeling.pixel_decoder import PixelDecoder, PixelDecoderOutput
from m2f_jax.modeling.precision import widen
from m2f_jax.modeling.resnet import ResNetBackbone
from m2f_jax.modeling.swin import SwinBackbone
from m2f_jax.modeling.valid_region import FeatureMap, image_sizes, token_mask


@struct.dataclass
class Mask2FormerOutput:
    """Predictions of the last decoder layer, the earlier ones, and (on request) the features.

    class_queries_logits: (B, Q, K+1), the last class is "no object".
    masks_queries_logits: (B, Q, H/4, W/4).
    auxiliary_logits: one dict per earlier prediction (the query init and layers 1..L-1), in order,
        with the same two keys.
    The rest is None unless `output_hidden_states=True`: the four backbone stage outputs
    (NHWC, stride 4 first), the pixel decoder's three refined maps (stride 32 first) and its
    stride-4 `mask_features`.
    """

    class_queries_logits: jnp.ndarray
    masks_queries_logits: jnp.ndarray
    auxiliary_logits: tuple[dict[str, jnp.ndarray], ...]
    encoder_hidden_states: tuple[jnp.ndarray, ...] | None = None
    pixel_decoder_hidden_states: tuple[jnp.ndarray, ...] | None = None
    mask_features: jnp.ndarray | None = None

    # HF's ModelOutput is also read as a mapping of its non-None fields: outputs["class_queries_logits"].
    def __getitem__(self, key: str):
        if not isinstance(key, str):
            raise TypeError(
                f"Mask2FormerOutput is indexed by field name, e.g. outputs['class_queries_logits']; got {key!r}"
            )
        if key not in self.keys():
            raise KeyError(f"{key!r} is not among this output's fields {self.keys()}")
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def items(self) -> list[tuple[str, object]]:
        return [(k, getattr(self, k)) for k in self.keys()]


_PROCESSOR_METADATA = ("image_sizes", "original_sizes")
_TARGETS = ("mask_labels", "class_labels", "mask_valid")


def _check_processor_outputs(extra: dict) -> None:
    """Keyword arguments beyond the model's own: the processor's metadata passes; targets and anything
    else are refused (HF's model computes a loss from targets; ours leaves that to m2f_jax.losses)."""
    targets = sorted(k for k in extra if k in _TARGETS)
    if targets:
        raise ValueError(
            f"the model takes no targets ({', '.join(targets)}): compute the loss with "
            "m2f_jax.losses.mask2former_loss(outputs, targets, key, config), or train with train.py"
        )
    unknown = sorted(k for k in extra if k not in _PROCESSOR_METADATA)
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}")


def _from_torch(x):
    """torch tensors (from `processor(..., return_tensors="pt")`) as numpy arrays; anything else as is."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x


def class_predictor(config: Mask2FormerConfig, rngs: nnx.Rngs) -> nnx.Linear:
    """The class head: a query's logits over the labels and the no-object class (the last), initialised
    as torch's nn.Linear (the original's)."""
    return nnx.Linear(
        config.hidden_dim,
        config.num_labels + 1,
        kernel_init=init.torch_default_kernel(),
        bias_init=init.torch_default_bias(config.hidden_dim),
        rngs=rngs,
    )


class PixelLevelModule(nnx.Module):
    """The backbone (Swin or ResNet, by the backbone config's type) and the pixel decoder."""

    def __init__(self, config: Mask2FormerConfig, execution: LayerExecution, *, rngs: nnx.Rngs):
        backbone = ResNetBackbone if isinstance(config.backbone_config, ResNetConfig) else SwinBackbone
        self.encoder = backbone(config.backbone_config, execution, rngs=rngs)
        self.decoder = PixelDecoder(config, config.backbone_config.stage_channels, execution, rngs=rngs)

    def __call__(self, pixels: FeatureMap) -> tuple[tuple[FeatureMap, ...], PixelDecoderOutput]:
        features = self.encoder(pixels)
        return features, self.decoder(features)


class Mask2FormerModel(nnx.Module):
    def __init__(self, config: Mask2FormerConfig, execution: LayerExecution, *, rngs: nnx.Rngs):
        self.pixel_level_module = PixelLevelModule(config, execution, rngs=rngs)
        self.transformer_module = TransformerModule(config, execution, rngs=rngs)

    def __call__(self, pixels: FeatureMap) -> tuple[tuple[FeatureMap, ...], PixelDecoderOutput, DecoderOutput]:
        features, pixel_decoded = self.pixel_level_module(pixels)
        decoded = self.transformer_module(pixel_decoded.multi_scale_features, pixel_decoded.mask_features)
        return features, pixel_decoded, decoded


class Mask2FormerForUniversalSegmentation(nnx.Module):
    """The full model. Call it eagerly or under `jax.jit`; inputs are NHWC.

    >>> model = Mask2FormerForUniversalSegmentation(preset("swin-tiny-coco-panoptic"), rngs=nnx.Rngs(0))
    >>> out = model(pixel_values)  # pixel_values (B, H, W, 3) float32, normalised
    """

    # Where `from_pretrained` found the model (the hub id or path as given), as HF records it; None for a
    # model built from a config. A plain str: static in NNX's graph, so jit and split/merge carry it.
    name_or_path: str | None = None

    def __init__(
        self,
        config: Mask2FormerConfig,
        *,
        rngs: nnx.Rngs,
        execution: LayerExecution = UNROLLED,
        dtype: jnp.dtype | None = None,
    ):
        """execution: how repeated layers run (remat policy, scan); dtype: see `set_dtype`."""
        self.config = config
        self.model = Mask2FormerModel(config, execution, rngs=rngs)
        self.class_predictor = class_predictor(config, rngs)
        self.set_dtype(dtype)

    def set_dtype(self, dtype: jnp.dtype | str | None) -> None:
        """The compute dtype from now on: bfloat16 on accelerators, float32, or None to follow the
        inputs. Parameters keep their own dtype (float32: cast where used, so gradients and optimizer
        state stay float32). Softmax, norm statistics, sampling locations, bilinear weights and
        interpolation stay in float32 whatever it is, and the outputs are float32."""
        self.dtype = None if dtype is None else jnp.dtype(dtype)
        self.set_attributes(dtype=self.dtype)  # every layer with a dtype: Linear, Conv, norms, Embed

    def set_execution(self, execution: LayerExecution) -> None:
        """How the repeated layers run from now on (remat policy, scan); the values do not change."""
        self.set_attributes(execution=execution)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, revision: str | None = None, seed: int = 0
    ) -> Mask2FormerForUniversalSegmentation:
        """HF's spelling of `m2f_jax.from_pretrained`: a converted folder, a raw HF folder, or a hub id."""
        from m2f_jax.weights import from_pretrained  # lazily: weights imports this module

        return from_pretrained(name_or_path, revision=revision, seed=seed)

    def save_pretrained(self, folder: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Writes config.json + flax_model.safetensors (what `from_pretrained` reads), atomically; an
        existing non-empty folder is replaced, whole, only with `overwrite=True`."""
        from m2f_jax.weights import save_model

        save_model(self, folder, overwrite=overwrite)

    def __call__(
        self,
        pixel_values: jnp.ndarray,
        pixel_mask: jnp.ndarray | None = None,
        *,
        output_hidden_states: bool = False,
        **processor_outputs,
    ) -> Mask2FormerOutput:
        """pixel_values (B, H, W, C) float; pixel_mask (B, H, W), True on real pixels, which must form
        a top-left rectangle of each image (as the image processor pads). Each image's predictions
        on its valid region then equal those for the image alone; outside it they mean nothing.
        Dropout and drop-path are on after `model.train()` (drawing from the model's 'dropout' RNG
        streams) and off after `model.eval()`, the state a new or loaded model starts in.
        The processor's other outputs (`image_sizes`, `original_sizes`) are accepted and not needed, so
        `model(**processor(images))` works as with HF."""
        _check_processor_outputs(processor_outputs)
        pixel_values, pixel_mask = _from_torch(pixel_values), _from_torch(pixel_mask)
        self._check_inputs(pixel_values, pixel_mask)
        b, height, width, _ = pixel_values.shape
        sizes = image_sizes(pixel_mask, b, height, width)
        if self.dtype is not None:
            pixel_values = pixel_values.astype(self.dtype)
        if pixel_mask is not None:
            pixel_values = jnp.where(token_mask(sizes, height, width)[..., None], pixel_values, 0.0)
        features, pixel_decoder, decoded = self.model(FeatureMap(pixel_values, sizes))
        class_logits = [widen(self.class_predictor(h)) for h in decoded.intermediate_hidden_states]
        mask_logits = [widen(m) for m in decoded.masks_queries_logits]
        auxiliary = tuple(
            {"class_queries_logits": c, "masks_queries_logits": m}
            for c, m in zip(class_logits[:-1], mask_logits[:-1], strict=True)
        )
        return Mask2FormerOutput(
            class_queries_logits=class_logits[-1],
            masks_queries_logits=mask_logits[-1],
            auxiliary_logits=auxiliary,
            encoder_hidden_states=tuple(f.values for f in features) if output_hidden_states else None,
            pixel_decoder_hidden_states=(
                tuple(f.values for f in pixel_decoder.multi_scale_features) if output_hidden_states else None
            ),
            mask_features=pixel_decoder.mask_features.values if output_hidden_states else None,
        )

    def _check_inputs(self, pixel_values, pixel_mask) -> None:
        channels = self.config.backbone_config.num_channels
        if pixel_values.ndim != 4 or pixel_values.shape[-1] != channels:
            raise ValueError(
                f"pixel_values must be (batch, height, width, {channels}) (NHWC), got shape {tuple(pixel_values.shape)}"
            )
        if any(isinstance(d, int) and d == 0 for d in pixel_values.shape[:3]):  # a symbolic batch (jax.export) is >= 1
            raise ValueError(f"pixel_values has an empty dimension: {tuple(pixel_values.shape)}")
        if not jnp.issubdtype(pixel_values.dtype, jnp.floating):
            raise ValueError(f"pixel_values must be floating point (normalised), got {pixel_values.dtype}")
        if pixel_mask is not None and tuple(pixel_mask.shape) != tuple(pixel_values.shape[:3]):
            raise ValueError(
                f"pixel_mask must be (batch, height, width) = {tuple(pixel_values.shape[:3])}, "
                f"got {tuple(pixel_mask.shape)}"
            )
