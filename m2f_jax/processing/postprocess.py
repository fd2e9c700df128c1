"""Model outputs -> semantic maps, instances and panoptic segments, by the original Mask2Former's rules.

Two families:
- `post_process_*_segmentation`: host-side numpy, HF's signatures plus `image_sizes`, one result per
  image at any target size. Masks follow the original's path: mask logits are upsampled bilinearly
  to the padded input (4x the mask grid), cropped to the image's own size inside the padding, then
  resized bilinearly to the target size. The work runs in bands of target rows so that large targets
  stay within a fixed working-memory budget (`_BAND_BYTES`); see docs/postprocessing.md.
- `semantic_inference`, `panoptic_inference`, `instance_inference`: jitted, batched, fixed shapes, for
  evaluation on device; at the mask resolution or a static `size`, without per-image cropping.

Differences from HF's post-processing, and why, are listed in docs/postprocessing.md.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from m2f_jax.modeling.resize import resize_bilinear

# Working memory (float32 intermediates) of one band of target rows on the host. The peak memory of a
# host post-processing call is about this plus its outputs (and the model outputs it was given).
_BAND_BYTES = 32 * 2**20

Size = tuple[int, int]


# ----------------------------------------------------------------------------------------------------
# Inputs


def _as_float32(x: Any) -> np.ndarray:
    """numpy / jax / torch array -> float32 numpy array on the host."""
    if hasattr(x, "detach"):  # torch.Tensor, possibly on an accelerator or in bfloat16
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _sizes(name: str, sizes: Sequence[Sequence[int]] | None, batch: int) -> list[Size] | None:
    """Checks a per-image list of (height, width) pairs."""
    if sizes is None:
        return None
    sizes = np.asarray(sizes)
    if sizes.ndim == 1:
        raise ValueError(
            f"{name} must hold one (height, width) per image, e.g. [(480, 640)] for one image; got the flat "
            f"{tuple(sizes.tolist())}"
        )
    if sizes.ndim != 2 or sizes.shape[1] != 2 or not np.issubdtype(sizes.dtype, np.integer):
        raise ValueError(f"{name} must be (height, width) integer pairs, one per image; got {sizes.tolist()}")
    if len(sizes) != batch:
        raise ValueError(f"{name} must have one (height, width) per image ({batch}), got {len(sizes)}")
    for s in sizes:
        if min(s) < 1:
            raise ValueError(f"{name} entries must be (height, width) with positive sides, got {tuple(s.tolist())}")
    return [(int(h), int(w)) for h, w in sizes]


def _check_fractions(**values: float) -> None:
    """Thresholds are probabilities or fractions: numbers in [0, 1] (NaN compares false everywhere and
    would silently keep or drop everything)."""
    for name, value in values.items():
        if isinstance(value, jax.core.Tracer):
            continue
        number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        if not number or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def _check_top_k(top_k: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")


def _label_set(label_ids_to_fuse: Any) -> set[int]:
    """`label_ids_to_fuse` as a set of ints: a collection of label ids, or None."""
    if label_ids_to_fuse is None:
        return set()
    if isinstance(label_ids_to_fuse, (str, bytes, Mapping)) or not isinstance(label_ids_to_fuse, Iterable):
        raise ValueError(
            f"label_ids_to_fuse must be a collection of label ids, e.g. {{0, 3}}; got {label_ids_to_fuse!r}"
        )
    labels = set()
    for label in label_ids_to_fuse:
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise ValueError(f"label_ids_to_fuse must hold integer label ids, got {label!r}")
        labels.add(int(label))
    return labels


def _read_outputs(
    outputs: Any, target_sizes: Sequence[Sequence[int]] | None, image_sizes: Sequence[Sequence[int]] | None
) -> tuple[np.ndarray, np.ndarray, list[Size], list[Size]]:
    """Class logits (B,Q,K+1), mask logits (B,Q,h,w), each image's size in the padded input, target sizes."""
    for attribute in ("class_queries_logits", "masks_queries_logits"):
        if not hasattr(outputs, attribute):
            raise TypeError(f"outputs must have `{attribute}`, got {type(outputs).__name__}")
    class_logits = _as_float32(outputs.class_queries_logits)
    mask_logits = _as_float32(outputs.masks_queries_logits)
    if class_logits.ndim != 3 or mask_logits.ndim != 4 or class_logits.shape[:2] != mask_logits.shape[:2]:
        raise ValueError(
            "expected class_queries_logits (B, Q, K+1) and masks_queries_logits (B, Q, h, w), got "
            f"{class_logits.shape} and {mask_logits.shape}"
        )
    for name, logits in (("class_queries_logits", class_logits), ("masks_queries_logits", mask_logits)):
        finite = np.isfinite(logits).reshape(len(logits), -1).all(-1)
        if not finite.all():
            raise ValueError(
                f"{name} of image(s) {np.flatnonzero(~finite).tolist()} contain NaN or infinite values: the "
                "model's output is not usable (non-finite weights or inputs?)"
            )
    batch, _, h, w = mask_logits.shape
    padded = (4 * h, 4 * w)
    images = _sizes("image_sizes", image_sizes, batch) or [padded] * batch
    for size in images:
        if size[0] > padded[0] or size[1] > padded[1]:
            raise ValueError(f"image_sizes entry {size} is larger than the padded input {padded}")
    targets = _sizes("target_sizes", target_sizes, batch) or images
    return class_logits, mask_logits, images, targets


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -x, dtype=np.float32), dtype=np.float32)


def _logit(p: float) -> float:
    """The mask logit whose sigmoid is `p`: thresholds compare logits, exactly (logit > 0 <=> prob > 0.5)."""
    with np.errstate(divide="ignore"):
        return float(np.log(p) - np.log1p(-p))


# ----------------------------------------------------------------------------------------------------
# Host-side resizing: mask grid -> padded input -> crop -> target, in bands of target rows


class _Taps(NamedTuple):
    """Per output index along one axis: the two source indices and the weight of the second."""

    lo: np.ndarray
    hi: np.ndarray
    frac: np.ndarray

    def select(self, index: slice | np.ndarray) -> _Taps:
        return _Taps(self.lo[index], self.hi[index], self.frac[index])


def _taps(in_size: int, out_size: int) -> _Taps:
    """torch's bilinear (align_corners=False) weights, as `resize.interpolation_matrix`, in gather form."""
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return _Taps(lo, hi, (src - lo).astype(np.float32))


def _interp(x: np.ndarray, taps: _Taps, axis: int) -> np.ndarray:
    """Linear interpolation of `x` along `axis` (two gathers, O(output) work)."""
    shape = [1] * x.ndim
    shape[axis] = -1
    frac = taps.frac.reshape(shape)
    out = np.take(x, taps.lo, axis=axis)
    out *= 1.0 - frac
    upper = np.take(x, taps.hi, axis=axis)
    upper *= frac
    out += upper
    return out


class _Geometry(NamedTuple):
    """Where one image's target pixels come from in the mask grid."""

    rows_up: _Taps  # the image's rows of the padded input, from mask rows
    cols_up: _Taps
    rows_out: _Taps | None  # target rows from image rows; None when no resize is needed
    cols_out: _Taps | None
    target: Size


def _geometry(mask_size: Size, image_size: Size, target: Size) -> _Geometry:
    """Upsampling x4 reads only the image's own mask cells (the first ceil(size / 4)), clamping at
    their edge as if the image were alone, so its segments do not depend on the batch's padding."""
    (ih, iw), (th, tw) = image_size, target
    h, w = min(mask_size[0], -(-ih // 4)), min(mask_size[1], -(-iw // 4))
    return _Geometry(
        rows_up=_taps(h, 4 * h).select(slice(ih)),
        cols_up=_taps(w, 4 * w).select(slice(iw)),
        rows_out=None if th == ih else _taps(ih, th),
        cols_out=None if tw == iw else _taps(iw, tw),
        target=target,
    )


def _band_rows(geo: _Geometry, r0: int, r1: int) -> tuple[_Taps, _Taps | None]:
    """For target rows r0:r1, the image rows needed (as taps from mask rows) and the taps from those rows."""
    if geo.rows_out is None:
        return geo.rows_up.select(slice(r0, r1)), None
    band = geo.rows_out.select(slice(r0, r1))
    needed = np.unique(np.concatenate([band.lo, band.hi]))
    local = _Taps(np.searchsorted(needed, band.lo), np.searchsorted(needed, band.hi), band.frac)
    return geo.rows_up.select(needed), local


def _bands(geo: _Geometry, floats_per_row: int) -> Iterator[tuple[int, int]]:
    """Target-row bands whose float32 working set stays within `_BAND_BYTES`."""
    step = max(1, _BAND_BYTES // (4 * max(1, floats_per_row)))
    for r0 in range(0, geo.target[0], step):
        yield r0, min(r0 + step, geo.target[0])


def _logits_band(masks: np.ndarray, geo: _Geometry, r0: int, r1: int) -> np.ndarray:
    """Mask logits (n, h, w) -> their values on target rows r0:r1, (n, r1 - r0, target width)."""
    up, local = _band_rows(geo, r0, r1)
    x = _interp(masks, up, axis=1)
    if local is not None:
        x = _interp(x, local, axis=1)
    x = _interp(x, geo.cols_up, axis=2)
    return x if geo.cols_out is None else _interp(x, geo.cols_out, axis=2)


def _logits_floats_per_row(n: int, mask_width: int, geo: _Geometry) -> int:
    iw, tw = len(geo.cols_up.lo), geo.target[1]
    return 2 * n * (4 * mask_width + 2 * iw + 2 * tw)


def _logit_bands(masks: np.ndarray, geo: _Geometry) -> Iterator[tuple[int, int, np.ndarray]]:
    """(r0, r1, logits of rows r0:r1) over the whole target, band by band."""
    for r0, r1 in _bands(geo, _logits_floats_per_row(masks.shape[0], masks.shape[2], geo)):
        yield r0, r1, _logits_band(masks, geo, r0, r1)


# ----------------------------------------------------------------------------------------------------
# Host-side post-processing


def post_process_semantic_segmentation(
    outputs: Any,
    target_sizes: Sequence[Sequence[int]] | None = None,
    return_segmentation_scores: bool = False,
    image_sizes: Sequence[Sequence[int]] | None = None,
) -> list[np.ndarray] | list[dict[str, np.ndarray]]:
    """One (H, W) int32 class-id map per image, or with `return_segmentation_scores` a dict with it
    ("segmentation") and the (K, H, W) float32 class scores ("segmentation_scores").

    Class probabilities (no-object dropped) times sigmoid masks, summed over queries, at the padded
    input resolution; cropped to `image_sizes[b]` (default: the whole padded input) and resized
    bilinearly to `target_sizes[b]` (default: the cropped size) before the argmax. Peak memory: the
    outputs (4 bytes per target pixel, and 4 x K more with the scores) plus about `_BAND_BYTES` of
    working memory, whatever the target size.
    """
    class_logits, mask_logits, images, targets = _read_outputs(outputs, target_sizes, image_sizes)
    class_probs = _softmax(class_logits)[..., :-1]  # (B, Q, K)
    _, q, h, w = mask_logits.shape
    k = class_probs.shape[-1]
    results = []
    for b in range(len(images)):
        geo = _geometry((h, w), images[b], targets[b])
        iw, tw = len(geo.cols_up.lo), geo.target[1]
        semantic = np.empty(geo.target, np.int32)
        scores = np.empty((k, *geo.target), np.float32) if return_segmentation_scores else None
        # Per target row: up to two source rows of (Q, w) and (Q, iw) floats, (K, iw) and (K, tw) ones,
        # each with its interpolation temporaries.
        for r0, r1 in _bands(geo, 4 * (q * (w + iw) + k * (2 * iw + tw))):
            up, local = _band_rows(geo, r0, r1)
            probs = _sigmoid(_interp(_interp(mask_logits[b], up, axis=1), geo.cols_up, axis=2))
            rows = (class_probs[b].T @ probs.reshape(q, -1)).reshape(k, -1, iw)  # (K, rows, iw)
            if local is not None:
                rows = _interp(rows, local, axis=1)
            if geo.cols_out is not None:
                rows = _interp(rows, geo.cols_out, axis=2)
            semantic[r0:r1] = rows.argmax(0)
            if scores is not None:
                scores[:, r0:r1] = rows
        results.append(semantic if scores is None else {"segmentation": semantic, "segmentation_scores": scores})
    return results


def _rle(mask: np.ndarray) -> dict[str, list[int]]:
    """COCO's uncompressed RLE: column-major run lengths starting with a run of zeros (empty masks too)."""
    flat = mask.T.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]]))
    if flat.size and flat[0]:
        counts = np.concatenate([[0], counts])
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts.tolist()}


def _segment(segment_id: int, label: int, fused: bool, score: float) -> dict[str, Any]:
    return {"id": int(segment_id), "label_id": int(label), "was_fused": bool(fused), "score": round(float(score), 6)}


def post_process_instance_segmentation(
    outputs: Any,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    target_sizes: Sequence[Sequence[int]] | None = None,
    return_coco_annotation: bool = False,
    return_binary_maps: bool = False,
    image_sizes: Sequence[Sequence[int]] | None = None,
    top_k: int = 100,
) -> list[dict[str, Any]]:
    """Instances per image: {"segmentation", "segments_info": [{"id", "label_id", "was_fused", "score"}]}.

    As the original: the `top_k` best (query, class) pairs over all queries x classes; a mask is the
    query's sigmoid mask > `mask_threshold` at the target size; score = class prob x mean mask prob
    inside the mask. Segments with score >= `threshold` are then taken best first; one whose pixels
    not yet taken by a better segment are fewer than `overlap_mask_area_threshold` of its area is
    dropped (0 keeps all; 0 for both thresholds gives the original's top_k detections for COCO AP).
    Ids count from 0 in that order. "segmentation" is an (H, W) int32 map (-1 where no segment), or
    with `return_binary_maps` the (N, H, W) bool stack of whole masks, or with
    `return_coco_annotation` one COCO RLE dict ({"size", "counts"}) per segment.
    Peak memory: the outputs (the map: 4 bytes per target pixel; binary maps: 1 byte per pixel and
    instance), 3 bytes per target pixel more and about `_BAND_BYTES` of working memory.
    """
    if return_coco_annotation and return_binary_maps:
        raise ValueError("return_coco_annotation and return_binary_maps can not both be True")
    _check_fractions(
        threshold=threshold, mask_threshold=mask_threshold, overlap_mask_area_threshold=overlap_mask_area_threshold
    )
    _check_top_k(top_k)
    class_logits, mask_logits, images, targets = _read_outputs(outputs, target_sizes, image_sizes)
    _, q, h, w = mask_logits.shape
    k = class_logits.shape[-1] - 1
    cut = _logit(mask_threshold)
    results = []
    for b in range(len(images)):
        geo = _geometry((h, w), images[b], targets[b])
        flat = _softmax(class_logits[b])[:, :-1].ravel()
        best = np.argsort(-flat, kind="stable")[: min(top_k, flat.size)]
        queries, labels, class_scores = best // k, best % k, flat[best]
        # Pass 1: each selected query's mask area and summed probability inside the mask.
        unique, which = np.unique(queries, return_inverse=True)
        area, prob_sum = np.zeros(len(unique)), np.zeros(len(unique))
        for _, _, logits in _logit_bands(mask_logits[b, unique], geo):
            inside = logits > cut
            area += inside.sum((1, 2))
            prob_sum += np.where(inside, _sigmoid(logits), 0).sum((1, 2), dtype=np.float64)
        scores = class_scores * (prob_sum / (area + 1e-6))[which]
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] >= threshold]
        # Pass 2: best first, keep a segment unless better ones already cover too much of it.
        segmentation = np.full(geo.target, -1, np.int32)
        segments, masks = [], []
        for i in order:
            mask = np.zeros(geo.target, bool)
            for r0, r1, logits in _logit_bands(mask_logits[b, queries[i] : queries[i] + 1], geo):
                mask[r0:r1] = logits[0] > cut
            free = mask & (segmentation < 0)
            if free.sum() < overlap_mask_area_threshold * mask.sum():
                continue
            segmentation[free] = len(segments)
            segments.append(_segment(len(segments), labels[i], False, scores[i]))
            if return_binary_maps:
                masks.append(mask)
            elif return_coco_annotation:
                masks.append(_rle(mask))
        if return_binary_maps:
            segmentation = np.stack(masks) if masks else np.zeros((0, *geo.target), bool)
        elif return_coco_annotation:
            segmentation = masks
        results.append({"segmentation": segmentation, "segments_info": segments})
    return results


def _assign_segment_ids(valid, labels, fused, xp=np):
    """Segment id per query (0: none). Ids count up in query order; a valid query of a fused class
    joins the first valid query of its class. Shared by the host (numpy) and device (jnp) versions."""
    q = valid.shape[-1]
    earlier = xp.arange(q)[None, :] < xp.arange(q)[:, None]  # [i, j]: query j comes before query i
    fusable = valid & fused
    same = (labels[:, None] == labels[None, :]) & fusable[:, None] & fusable[None, :] & earlier
    joins = same.any(-1)
    new = valid & ~joins
    new_ids = xp.cumsum(new) * new
    return xp.where(new, new_ids, xp.where(joins, new_ids[xp.argmax(same, -1)], 0)).astype(xp.int32)


def _segment_validity(kept, visible, original, painted, overlap_mask_area_threshold):
    """The original's test: the query wins pixels, its mask is not empty, it paints at least one pixel,
    and it wins at least `overlap_mask_area_threshold` of its own mask area."""
    return kept & (visible > 0) & (original > 0) & (painted > 0) & (visible >= overlap_mask_area_threshold * original)


def post_process_panoptic_segmentation(
    outputs: Any,
    threshold: float = 0.8,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    label_ids_to_fuse: set[int] | None = None,
    target_sizes: Sequence[Sequence[int]] | None = None,
    image_sizes: Sequence[Sequence[int]] | None = None,
) -> list[dict[str, Any]]:
    """Panoptic segments per image: {"segmentation", "segments_info": [{"id", "label_id", "was_fused", "score"}]}.

    As the original: queries whose best class is an object with prob > `threshold` compete; each
    pixel goes to the query with the largest score x mask prob, and stays void (0) unless that
    query's mask prob is >= `mask_threshold` there. A query becomes a segment if it wins at least
    `overlap_mask_area_threshold` of its own mask area (mask prob >= `mask_threshold`). Ids count from
    1 in query order; all segments of a class in `label_ids_to_fuse` share one id and one
    segments_info entry (score: the best of them). "segmentation" is an (H, W) int32 map, all -1
    when no query passes `threshold` (as HF). Peak memory: the output map (4 bytes per target pixel),
    5 bytes per target pixel more and about `_BAND_BYTES` of working memory.
    """
    _check_fractions(
        threshold=threshold, mask_threshold=mask_threshold, overlap_mask_area_threshold=overlap_mask_area_threshold
    )
    fuse = _label_set(label_ids_to_fuse)
    class_logits, mask_logits, images, targets = _read_outputs(outputs, target_sizes, image_sizes)
    _, _, h, w = mask_logits.shape
    num_labels = class_logits.shape[-1] - 1
    cut = _logit(mask_threshold)
    probs = _softmax(class_logits)
    results = []
    for b in range(len(images)):
        geo = _geometry((h, w), images[b], targets[b])
        scores, labels = probs[b].max(-1), probs[b].argmax(-1)
        queries = np.flatnonzero((labels != num_labels) & (scores > threshold))
        if not len(queries):
            results.append({"segmentation": np.full(geo.target, -1, np.int32), "segments_info": []})
            continue
        scores, labels, n = scores[queries], labels[queries], len(queries)
        winner = np.empty(geo.target, np.int32)
        strong = np.empty(geo.target, bool)  # the winner's mask prob >= mask_threshold
        visible, original, painted = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
        for r0, r1, logits in _logit_bands(mask_logits[b, queries], geo):
            band_winner = (_sigmoid(logits) * scores[:, None, None]).argmax(0)
            above = logits >= cut
            band_strong = np.take_along_axis(above, band_winner[None], 0)[0]
            visible += np.bincount(band_winner.ravel(), minlength=n)
            original += above.sum((1, 2))
            painted += np.bincount(band_winner[band_strong], minlength=n)
            winner[r0:r1], strong[r0:r1] = band_winner, band_strong
        fused = np.array([int(label) in fuse for label in labels])
        valid = _segment_validity(True, visible, original, painted, overlap_mask_area_threshold)
        ids = _assign_segment_ids(valid, labels, fused)
        segmentation = ids[winner]
        del winner
        segmentation[np.logical_not(strong, out=strong)] = 0
        segments = {}
        for i in np.flatnonzero(ids):
            if ids[i] not in segments or scores[i] > segments[ids[i]]["score"]:
                segments[ids[i]] = _segment(ids[i], labels[i], fused[i], scores[i])
        results.append({"segmentation": segmentation, "segments_info": [segments[i] for i in sorted(segments)]})
    return results


# ----------------------------------------------------------------------------------------------------
# Jitted, batched, fixed-shape versions for evaluation on device


def _mask_logits_at(mask_logits: jnp.ndarray, size: Size | None) -> jnp.ndarray:
    return mask_logits if size is None else resize_bilinear(mask_logits, size, spatial_axes=(2, 3))


@functools.partial(jax.jit, static_argnames=("size", "return_probs"))
def semantic_inference(
    class_logits: jnp.ndarray, mask_logits: jnp.ndarray, size: Size | None = None, return_probs: bool = False
) -> jnp.ndarray:
    """(B, H, W) int32 class ids, or with `return_probs` the (B, K, H, W) class scores, at the mask
    resolution or the static `size` (e.g. the padded input; the mask logits are resized first)."""
    class_probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)[..., :-1]
    mask_probs = jax.nn.sigmoid(_mask_logits_at(mask_logits.astype(jnp.float32), size))
    probs = jnp.einsum("bqk,bqhw->bkhw", class_probs, mask_probs, precision="highest")
    return probs if return_probs else jnp.argmax(probs, axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("size",))
def panoptic_inference(
    class_logits: jnp.ndarray,
    mask_logits: jnp.ndarray,
    threshold: float = 0.8,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    fuse_classes: jnp.ndarray | None = None,
    size: Size | None = None,
) -> dict[str, jnp.ndarray]:
    """`post_process_panoptic_segmentation` with fixed shapes, at the mask resolution or `size`.

    fuse_classes: optional (K,) bool, True for the classes whose segments are fused (stuff).
    Returns "segmentation" (B, H, W) int32 as the host version; per query (B, Q): "segment_ids"
    (0: no segment), "labels", "scores" (best class and its prob) and "keep" (forms a segment).
    Memory: a few (B, Q, H, W) arrays (float32 logits and probs, boolean masks).
    """
    probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)
    scores, labels = probs.max(-1), jnp.argmax(probs, -1).astype(jnp.int32)
    num_labels = class_logits.shape[-1] - 1
    kept = (labels != num_labels) & (scores > threshold)
    logits = _mask_logits_at(mask_logits.astype(jnp.float32), size)
    weighted = jnp.where(kept[..., None, None], jax.nn.sigmoid(logits) * scores[..., None, None], -1.0)
    winner = jnp.argmax(weighted, axis=1)  # (B, H, W)
    wins = winner[:, None] == jnp.arange(logits.shape[1])[None, :, None, None]  # (B, Q, H, W)
    above = logits >= jnp.log(mask_threshold) - jnp.log1p(-mask_threshold)
    visible, original, painted = wins.sum((2, 3)), above.sum((2, 3)), (wins & above).sum((2, 3))
    valid = _segment_validity(kept, visible, original, painted, overlap_mask_area_threshold)
    fuse = jnp.zeros(num_labels, bool) if fuse_classes is None else jnp.asarray(fuse_classes, bool)
    fused = jnp.concatenate([fuse, jnp.zeros(1, bool)])[labels]
    ids = jax.vmap(functools.partial(_assign_segment_ids, xp=jnp))(valid, labels, fused)
    strong = jnp.take_along_axis(above, winner[:, None], 1)[:, 0]
    segment_map = jnp.take_along_axis(ids, winner.reshape(winner.shape[0], -1), 1).reshape(winner.shape)
    segmentation = jnp.where(strong, segment_map, 0)
    segmentation = jnp.where(kept.any(-1)[:, None, None], segmentation, -1).astype(jnp.int32)
    return {"segmentation": segmentation, "segment_ids": ids, "labels": labels, "scores": scores, "keep": valid}


@functools.partial(jax.jit, static_argnames=("top_k", "size"))
def instance_inference(
    class_logits: jnp.ndarray,
    mask_logits: jnp.ndarray,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    top_k: int = 100,
    size: Size | None = None,
) -> dict[str, jnp.ndarray]:
    """`post_process_instance_segmentation` with fixed shapes, at the mask resolution or `size`.

    Returns, per image, the top_k (query, class) pairs sorted by final score (k = min(top_k, Q x K)):
    "labels", "scores", "query_indices" (B, k), "masks" (B, k, H, W) bool, "keep" (B, k) (passes
    `threshold` and the overlap test; all of them with both thresholds 0, as the original's COCO
    evaluation) and "segmentation" (B, H, W) int32 (-1: none; else the rank among kept segments).
    Memory: a few (B, k, H, W) arrays (float32 logits and probs, boolean masks).
    """
    num_labels = class_logits.shape[-1] - 1
    _check_top_k(top_k)
    cut = jnp.log(mask_threshold) - jnp.log1p(-mask_threshold)

    def one_image(class_logits: jnp.ndarray, mask_logits: jnp.ndarray):
        flat = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)[:, :-1].reshape(-1)
        class_scores, best = jax.lax.top_k(flat, min(top_k, flat.shape[0]))
        queries, labels = best // num_labels, best % num_labels
        logits = _mask_logits_at(mask_logits[queries][None].astype(jnp.float32), size)[0]
        masks = logits > cut
        area = masks.sum((1, 2))
        mask_scores = jnp.where(masks, jax.nn.sigmoid(logits), 0).sum((1, 2)) / (area + 1e-6)
        scores = class_scores * mask_scores
        order = jnp.argsort(-scores, stable=True)
        scores, labels, queries, masks, area = scores[order], labels[order], queries[order], masks[order], area[order]

        def take(carry, inputs):
            segmentation, count = carry
            mask, area, passes = inputs
            free = mask & (segmentation < 0)
            keep = passes & (free.sum() >= overlap_mask_area_threshold * area)
            return (jnp.where(keep & free, count, segmentation), count + keep), keep

        start = (jnp.full(masks.shape[1:], -1, jnp.int32), jnp.int32(0))
        (segmentation, _), keep = jax.lax.scan(take, start, (masks, area, scores >= threshold))
        return {
            "labels": labels.astype(jnp.int32),
            "scores": scores,
            "query_indices": queries.astype(jnp.int32),
            "masks": masks,
            "keep": keep,
            "segmentation": segmentation,
        }

    return jax.vmap(one_image)(class_logits, mask_logits)


def panoptic_segments(result: Mapping[str, Any], row: int) -> dict[str, Any]:
    """Row `row` of a batched `panoptic_inference` result as `post_process_panoptic_segmentation`
    gives it: {"segmentation", "segments_info": [{"id", "label_id", "score"}]} (fused queries give
    one segment, with the best score among them)."""
    segmentation = np.asarray(result["segmentation"][row])
    present = set(np.unique(segmentation).tolist())
    segments: dict[int, dict[str, Any]] = {}
    for segment_id, label, score, keep in zip(
        *(np.asarray(result[k][row]).tolist() for k in ("segment_ids", "labels", "scores", "keep")), strict=True
    ):
        if keep and segment_id in present:
            previous = segments.get(segment_id)
            if previous is None or score > previous["score"]:
                segments[segment_id] = {"id": segment_id, "label_id": label, "score": score}
    return {"segmentation": segmentation, "segments_info": [segments[i] for i in sorted(segments)]}
