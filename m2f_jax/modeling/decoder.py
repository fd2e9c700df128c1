"""The masked-attention transformer decoder.

Learnable queries attend, layer by layer, to one scale of the pixel decoder's memories (cycling
stride 32 -> 16 -> 8), each only inside the mask that the previous prediction gave it
(sigmoid(logit) >= 0.5 after bilinear resizing; a query with an empty mask attends everywhere).
Order per layer: masked cross-attention -> self-attention -> FFN. A prediction (class logits and
mask logits) is made from the queries before the first layer and after every layer.
In a padded batch, keys outside an image's valid region are never attended to, and the mask
resizing and position embeddings use each image's own extent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from m2f_jax.config import Mask2FormerConfig
from m2f_jax.modeling import initializers as init
from m2f_jax.modeling.layers import UNROLLED, LayerExecution, run_units
from m2f_jax.modeling.pixel_decoder import NUM_LEVELS
from m2f_jax.modeling.position import sine_position_embedding
from m2f_jax.modeling.precision import widen
from m2f_jax.modeling.valid_region import FeatureMap, resize_valid, token_mask


def _layer_norm(dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=1e-5, use_fast_variance=False, rngs=rngs)


class MultiHeadAttention(nnx.Module):
    """Attention with position embeddings added to queries and keys (not values), as in DETR.

    `blocked` (B, heads or 1, Tq, Tk) marks query/key pairs that may not attend.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        # q, k and v as the thirds of nn.MultiheadAttention's fused in_proj_weight, as the original draws them.
        self.q_proj = nnx.Linear(dim, dim, kernel_init=init.fused_xavier_uniform(3), rngs=rngs)
        self.k_proj = nnx.Linear(dim, dim, kernel_init=init.fused_xavier_uniform(3), rngs=rngs)
        self.v_proj = nnx.Linear(dim, dim, kernel_init=init.fused_xavier_uniform(3), rngs=rngs)
        self.out_proj = nnx.Linear(dim, dim, kernel_init=init.xavier_uniform(), rngs=rngs)
        self.dropout = nnx.Dropout(dropout, deterministic=True, rngs=rngs)

    def __call__(self, query, query_pos, key, key_pos, blocked=None):
        b, tq, d = query.shape
        hd = d // self.num_heads
        q = self.q_proj(query + query_pos).reshape(b, tq, self.num_heads, hd) * hd**-0.5
        k = self.k_proj(key + key_pos).reshape(b, -1, self.num_heads, hd)
        v = self.v_proj(key).reshape(b, -1, self.num_heads, hd)
        logits = widen(jnp.einsum("bqhd,bkhd->bhqk", q, k))
        if blocked is not None:
            logits = jnp.where(blocked, -jnp.inf, logits)
        probs = self.dropout(jax.nn.softmax(logits, axis=-1)).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, tq, d)
        return self.out_proj(out)


class MaskedAttentionDecoderLayer(nnx.Module):
    def __init__(self, config: Mask2FormerConfig, *, rngs: nnx.Rngs):
        d, heads = config.hidden_dim, config.num_attention_heads
        self.pre_norm = config.pre_norm
        self.cross_attn = MultiHeadAttention(d, heads, config.dropout, rngs=rngs)
        self.cross_attn_layer_norm = _layer_norm(d, rngs)
        self.self_attn = MultiHeadAttention(d, heads, config.dropout, rngs=rngs)
        self.self_attn_layer_norm = _layer_norm(d, rngs)
        self.fc1 = init.feedforward_linear(d, config.dim_feedforward, rngs=rngs)
        self.fc2 = init.feedforward_linear(config.dim_feedforward, d, rngs=rngs)
        self.final_layer_norm = _layer_norm(d, rngs)
        self.dropout = nnx.Dropout(config.dropout, deterministic=True, rngs=rngs)

    def __call__(self, x, query_pos, memory: DecoderMemory, blocked):
        drop = self.dropout

        def ffn(y):
            return drop(self.fc2(drop(jax.nn.relu(self.fc1(y)))))

        if self.pre_norm:
            y = self.cross_attn_layer_norm(x)
            x = x + drop(self.cross_attn(y, query_pos, memory.values, memory.position, blocked))
            y = self.self_attn_layer_norm(x)
            x = x + drop(self.self_attn(y, query_pos, y, query_pos))
            return x + ffn(self.final_layer_norm(x))
        x = x + drop(self.cross_attn(x, query_pos, memory.values, memory.position, blocked))
        x = self.cross_attn_layer_norm(x)
        x = self.self_attn_layer_norm(x + drop(self.self_attn(x, query_pos, x, query_pos)))
        return self.final_layer_norm(x + ffn(x))


class MLP(nnx.Module):
    """`num_layers` Linear layers with ReLU between them (the mask embedding head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, *, rngs: nnx.Rngs):
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nnx.List(
            [
                nnx.Linear(
                    a, b, kernel_init=init.torch_default_kernel(), bias_init=init.torch_default_bias(a), rngs=rngs
                )
                for a, b in zip(dims[:-1], dims[1:], strict=True)
            ]
        )

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


class MaskPredictor(nnx.Module):
    def __init__(self, config: Mask2FormerConfig, *, rngs: nnx.Rngs):
        self.num_heads = config.num_attention_heads
        self.mask_embedder = MLP(config.hidden_dim, config.hidden_dim, config.mask_feature_size, 3, rngs=rngs)

    def __call__(self, queries, mask_features: FeatureMap, next_memory: DecoderMemory):
        """queries (B, Q, D) -> mask logits (B, Q, H, W) over `mask_features`, and the (B, 1, Q, h*w)
        blocked-key mask for the next layer's cross-attention over `next_memory`."""
        embed = self.mask_embedder(queries)
        logits = jnp.einsum("bqc,bhwc->bqhw", embed, mask_features.values)
        small = resize_valid(
            jax.lax.stop_gradient(logits), mask_features.sizes, next_memory.sizes, next_memory.shape, (2, 3)
        )
        exists = token_mask(next_memory.sizes, *next_memory.shape).reshape(small.shape[0], 1, -1)
        blocked = (jax.nn.sigmoid(widen(small)).reshape(*small.shape[:2], -1) < 0.5) | ~exists
        # A query whose mask is empty everywhere attends everywhere (in its image) instead.
        blocked = jnp.where(jnp.all(blocked, axis=-1, keepdims=True), ~exists, blocked)
        return logits, blocked[:, None]


@struct.dataclass
class DecoderMemory:
    """One scale of the pixel decoder's output as the decoder attends to it."""

    values: jnp.ndarray  # (B, h*w, D) tokens + level embedding
    position: jnp.ndarray  # (B, h*w, D) sine position embedding
    sizes: jnp.ndarray  # (B, 2) each image's valid (h, w)
    shape: tuple[int, int] = struct.field(pytree_node=False)  # (h, w)


@struct.dataclass
class DecoderOutput:
    intermediate_hidden_states: tuple[jnp.ndarray, ...]  # normalised queries, one per prediction
    masks_queries_logits: tuple[jnp.ndarray, ...]  # (B, Q, H/4, W/4), one per prediction


class MaskedAttentionDecoder(nnx.Module):
    """The decoder layers, their shared final norm and the prediction head. Layer i attends to
    memory i mod 3; the layers run in rounds of three (one per scale), the unit that repeats."""

    def __init__(self, config: Mask2FormerConfig, execution: LayerExecution, *, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [MaskedAttentionDecoderLayer(config, rngs=rngs) for _ in range(config.decoder_layers - 1)]
        )
        self.layernorm = _layer_norm(config.hidden_dim, rngs)
        self.mask_predictor = MaskPredictor(config, rngs=rngs)
        self.execution = execution

    def __call__(self, queries, query_pos, memories: tuple[DecoderMemory, ...], mask_features: FeatureMap):
        """queries, query_pos (B, Q, D) -> a prediction before the first layer and after each one."""
        normed = self.layernorm(queries)
        mask_logits, blocked = self.mask_predictor(normed, mask_features, memories[0])
        intermediate, masks = [normed], [mask_logits]

        def apply(unit, carry, _):
            x, blocked = carry
            outputs = []
            for level, layer in enumerate(unit):  # a round starts at the coarsest memory
                x = layer(x, query_pos, memories[level], blocked)
                normed = self.layernorm(x)
                mask_logits, blocked = self.mask_predictor(normed, mask_features, memories[(level + 1) % NUM_LEVELS])
                outputs.append((normed, mask_logits))
            return (x, blocked), outputs

        layers = list(self.layers)
        rounds = [tuple(layers[i : i + NUM_LEVELS]) for i in range(0, len(layers), NUM_LEVELS)]
        _, outputs = run_units(rounds, apply, (queries, blocked), self.execution)
        for round_outputs in outputs:
            for normed, mask_logits in round_outputs:
                intermediate.append(normed)
                masks.append(mask_logits)
        return DecoderOutput(tuple(intermediate), tuple(masks))


class TransformerModule(nnx.Module):
    """Queries, memories with their position and level embeddings, and the decoder."""

    def __init__(self, config: Mask2FormerConfig, execution: LayerExecution = UNROLLED, *, rngs: nnx.Rngs):
        d = config.hidden_dim
        self.hidden_dim = d
        self.queries_embedder = nnx.Embed(config.num_queries, d, embedding_init=init.normal(1.0), rngs=rngs)
        self.queries_features = nnx.Embed(config.num_queries, d, embedding_init=init.normal(1.0), rngs=rngs)
        self.level_embed = nnx.Embed(NUM_LEVELS, d, embedding_init=init.normal(1.0), rngs=rngs)
        needs_projection = config.feature_size != d or config.enforce_input_projection
        self.input_projections = nnx.List(
            [
                nnx.Conv(config.feature_size, d, (1, 1), kernel_init=init.c2_xavier_fill(), rngs=rngs)
                for _ in range(NUM_LEVELS)
            ]
            if needs_projection
            else []
        )
        self.decoder = MaskedAttentionDecoder(config, execution, rngs=rngs)

    def __call__(self, multi_scale_features: tuple[FeatureMap, ...], mask_features: FeatureMap) -> DecoderOutput:
        """multi_scale_features: the pixel decoder's maps, coarsest first; mask_features at stride 4."""
        b = mask_features.values.shape[0]
        memories = []
        for i, feature in enumerate(multi_scale_features[:NUM_LEVELS]):
            h, w = feature.shape
            values = feature.values
            if len(self.input_projections):
                values = self.input_projections[i](values)
            pos = sine_position_embedding(feature.sizes, h, w, self.hidden_dim // 2, values.dtype)
            memories.append(
                DecoderMemory(
                    values=(values.reshape(b, h * w, -1) + self.level_embed.embedding[...][i]).astype(values.dtype),
                    position=pos.reshape(b, h * w, -1).astype(values.dtype),
                    sizes=feature.sizes,
                    shape=(h, w),
                )
            )
        query_pos = jnp.broadcast_to(
            self.queries_embedder.embedding[...][None], (b,) + self.queries_embedder.embedding.shape
        )
        queries = jnp.broadcast_to(self.queries_features.embedding[...][None], query_pos.shape)
        return self.decoder(queries, query_pos, tuple(memories), mask_features)
