"""Post-processing: parity with HF where HF is right, the original Mask2Former's rules where it is not.

HF's processor interpolates every mask to 384x384 first; with a 384x384 padded input that the image
fills (masks 96x96) that step is the original's upsample-to-padded-input, so the results must agree.
The deliberate differences (docs/postprocessing.md) are pinned by hand-built cases with known answers
and by small torch transcriptions of the original's rules.
"""

from __future__ import annotations

import dataclasses
import time
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2f_jax.modeling.resize import interpolation_matrix
from m2f_jax.processing import postprocess as pp


@dataclasses.dataclass
class Outputs:
    class_queries_logits: object
    masks_queries_logits: object


def fake_logits(seed: int, batch: int, queries: int, classes: int, side: int, grid: int = 8, boosts=(8.0, 3.0)):
    """Class logits (B,Q,K+1) and smooth mask logits (B,Q,side,side): the image is split into regions,
    each owned by one query; each query favours one class (or no object) by boosts[0] (even queries)
    or boosts[1] (odd ones), and query 0 is a weak full-image "background" (class 0 at 0.6) so that
    every pixel's winner has a confident mask."""
    rng = np.random.RandomState(seed)
    owner = rng.randint(1, queries, (batch, grid, grid))
    low = np.where(owner[:, None] == np.arange(queries)[None, :, None, None], 4.0, -4.0)
    low += rng.randn(batch, queries, grid, grid)
    low[:, 0] = 3.0
    up = interpolation_matrix(grid, side)
    masks = np.einsum("oh,bqhw,pw->bqop", up, low, up).astype(np.float32)
    logits = rng.randn(batch, queries, classes + 1)
    best = rng.randint(0, classes + 1, (batch, queries))
    boost = np.where(np.arange(queries) % 2, boosts[1], boosts[0])
    logits[np.arange(batch)[:, None], np.arange(queries)[None], best] += boost
    logits[:, 0] = 0.0
    logits[:, 0, 0] = np.log(1.5 * classes)  # background: 0.6 for class 0
    return logits.astype(np.float32), masks


def as_torch(class_logits, mask_logits):
    torch = pytest.importorskip("torch")
    return Outputs(torch.from_numpy(class_logits), torch.from_numpy(mask_logits))


@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return transformers.Mask2FormerImageProcessor()


# ----------------------------------------------------------------------------------------------------
# Independent references: torch resizing and the original's rules, transcribed loop by loop


def torch_masks(mask_logits, image_size, target):
    """(Q,h,w) logits -> upsample 4x (the padded input), crop to image_size, resize to target (torch).

    Only the image's own ceil(size / 4) mask cells are upsampled (docs/postprocessing.md,
    difference 12: the image's last pixel row never reads the cell beyond it)."""
    import torch
    import torch.nn.functional as F

    cells = (-(-image_size[0] // 4), -(-image_size[1] // 4))
    x = torch.from_numpy(mask_logits)[None, :, : cells[0], : cells[1]]
    x = F.interpolate(x, size=(4 * x.shape[2], 4 * x.shape[3]), mode="bilinear", align_corners=False)
    x = x[:, :, : image_size[0], : image_size[1]]
    if tuple(target) != tuple(image_size):
        x = F.interpolate(x, size=tuple(target), mode="bilinear", align_corners=False)
    return x[0]


def reference_panoptic(class_logits, mask_logits, image_size, target, threshold, mask_threshold, overlap, fuse):
    import torch

    scores, labels = torch.from_numpy(class_logits).softmax(-1).max(-1)
    keep = (labels != class_logits.shape[-1] - 1) & (scores > threshold)
    if not keep.any():
        return np.full(target, -1), {}
    masks = torch_masks(mask_logits[keep.numpy()], image_size, target).sigmoid()
    scores, labels = scores[keep], labels[keep]
    winner = (scores[:, None, None] * masks).argmax(0)
    segmentation = torch.zeros(target, dtype=torch.int64)
    segments, stuff, next_id = {}, {}, 0
    for k in range(len(scores)):
        strong = masks[k] >= mask_threshold
        area, original, painted = (winner == k).sum(), strong.sum(), ((winner == k) & strong)
        if area == 0 or original == 0 or painted.sum() == 0 or area / original < overlap:
            continue
        label = int(labels[k])
        if label in fuse and label in stuff:
            segment_id = stuff[label]
        else:
            next_id += 1
            segment_id = next_id
            if label in fuse:
                stuff[label] = segment_id
        segmentation[painted] = segment_id
        score = round(float(scores[k]), 6)
        if segment_id not in segments or score > segments[segment_id][2]:
            segments[segment_id] = (label, label in fuse, score)
    return segmentation.numpy(), segments


def reference_instance(class_logits, mask_logits, image_size, target, threshold, mask_threshold, overlap):
    import torch

    num_classes = class_logits.shape[-1] - 1
    probs = torch.from_numpy(class_logits).softmax(-1)[:, :-1].flatten()
    top = probs.topk(min(100, probs.numel()))
    queries, labels = top.indices // num_classes, top.indices % num_classes
    masks = torch_masks(mask_logits[queries.numpy()], image_size, target).sigmoid()
    binary = masks > mask_threshold
    scores = top.values * (masks * binary).sum((1, 2)) / (binary.sum((1, 2)) + 1e-6)
    segmentation = torch.full(target, -1, dtype=torch.int64)
    segments, kept_masks = [], []
    for i in torch.argsort(-scores, stable=True):
        free = binary[i] & (segmentation < 0)
        if scores[i] < threshold or free.sum() < overlap * binary[i].sum():
            continue
        segmentation[free] = len(segments)
        segments.append((int(labels[i]), round(float(scores[i]), 6)))
        kept_masks.append(binary[i].numpy())
    return segmentation.numpy(), segments, kept_masks


def info(segments_info):
    return {s["id"]: (s["label_id"], s["was_fused"], s["score"]) for s in segments_info}


def close_segments(ours: dict, expected: dict, atol: float = 2e-6):
    assert ours.keys() == expected.keys()
    for key in ours:
        assert ours[key][:2] == expected[key][:2], key
        assert abs(ours[key][2] - expected[key][2]) <= atol, key


# ----------------------------------------------------------------------------------------------------
# Resizing


@pytest.mark.parametrize("sizes", [(13, 30), (30, 13), (7, 7), (1, 5), (96, 384)])
def test_taps_are_the_interpolation_matrix(sizes):
    taps = pp._taps(*sizes)
    dense = np.zeros((sizes[1], sizes[0]))
    np.add.at(dense, (np.arange(sizes[1]), taps.lo), 1 - taps.frac)
    np.add.at(dense, (np.arange(sizes[1]), taps.hi), taps.frac)
    np.testing.assert_allclose(dense, interpolation_matrix(*sizes), atol=1e-7)


@pytest.mark.parametrize("image, target", [((90, 70), (200, 150)), ((96, 80), (40, 33)), ((61, 80), (61, 80))])
def test_mask_path_is_upsample_crop_resize(image, target, monkeypatch):
    """Bands of target rows reproduce torch's interpolate-to-padded, crop, interpolate-to-target."""
    pytest.importorskip("torch")
    masks = np.random.RandomState(0).randn(3, 24, 20).astype(np.float32)
    monkeypatch.setattr(pp, "_BAND_BYTES", 20_000)  # many small bands
    geo = pp._geometry((24, 20), image, target)
    ours = np.concatenate([logits for _, _, logits in pp._logit_bands(masks, geo)], axis=1)
    np.testing.assert_allclose(ours, torch_masks(masks, image, target).numpy(), atol=2e-5)


# ----------------------------------------------------------------------------------------------------
# Parity with HF (384x384 padded input filled by the image)


@pytest.mark.parametrize("target_sizes", [None, [(300, 450), (384, 384)]])
def test_semantic_matches_hf(hf, target_sizes):
    class_logits, mask_logits = fake_logits(0, 2, 12, 5, 96)
    ours = pp.post_process_semantic_segmentation(Outputs(class_logits, mask_logits), target_sizes=target_sizes)
    theirs = hf.post_process_semantic_segmentation(as_torch(class_logits, mask_logits), target_sizes=target_sizes)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == tuple(b.shape)
        np.testing.assert_array_equal(a, b.numpy())
    ours = pp.post_process_semantic_segmentation(Outputs(class_logits, mask_logits), target_sizes, True)
    theirs = hf.post_process_semantic_segmentation(as_torch(class_logits, mask_logits), target_sizes, True)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"].numpy())
        np.testing.assert_allclose(a["segmentation_scores"], b["segmentation_scores"].numpy(), atol=1e-5)


@pytest.mark.parametrize("target_sizes", [None, [(384, 384)] * 2])
def test_panoptic_matches_hf(hf, target_sizes):
    """Same map and segments. HF measures a query's own mask area on score x prob: with object scores
    near 1 (and the background's mask prob near 1 everywhere) that equals the original's area on prob.
    HF repeats a fused segment's entry once per query; we keep one (the best score). HF gives the
    segments after a fused repeat ids already taken, so the fused class (4) is kept to the last
    two queries, the case where HF is right."""
    class_logits, mask_logits = fake_logits(1, 2, 16, 5, 96, boosts=(12.0, 12.0))
    for b in range(2):
        for q in range(16):
            best = class_logits[b, q].argmax()
            label = 4 if q >= 14 else 3 if best == 4 else best
            class_logits[b, q, [best, label]] = class_logits[b, q, [label, best]]
    kwargs = dict(threshold=0.5, label_ids_to_fuse={4}, target_sizes=target_sizes)
    ours = pp.post_process_panoptic_segmentation(Outputs(class_logits, mask_logits), **kwargs)
    theirs = hf.post_process_panoptic_segmentation(as_torch(class_logits, mask_logits), **kwargs)
    fused_somewhere = False
    for b, (a, t) in enumerate(zip(ours, theirs, strict=True)):
        # The case where HF's painting equals the original's: every pixel's winner has mask prob >= 0.5.
        probs = pp._sigmoid(torch_masks(mask_logits[b], (384, 384), (384, 384)).numpy())
        scores = pp._softmax(class_logits[b]).max(-1)
        kept = (scores > 0.5) & (pp._softmax(class_logits[b]).argmax(-1) < 5)
        winner = np.where(kept[:, None, None], probs * scores[:, None, None], -1).argmax(0)
        assert (np.take_along_axis(probs, winner[None], 0) >= 0.5).all()
        np.testing.assert_array_equal(a["segmentation"], t["segmentation"].numpy())
        expected = {}
        for s in t["segments_info"]:
            if s["id"] not in expected or s["score"] > expected[s["id"]][2]:
                expected[s["id"]] = (s["label_id"], s["was_fused"], s["score"])
        fused_somewhere |= len(expected) < len(t["segments_info"])
        assert len(expected) >= 3
        close_segments(info(a["segments_info"]), expected)
    assert fused_somewhere


@pytest.mark.parametrize("threshold", [0.5, 0.2])
def test_instance_matches_hf(hf, threshold):
    """With 100 queries HF's top-num_queries is the original's top-100; overlap 0 keeps overlapping
    instances as HF does. Segments compared best first: label, score and binary mask."""
    class_logits, mask_logits = fake_logits(2, 1, 100, 5, 96)
    ours = pp.post_process_instance_segmentation(
        Outputs(class_logits, mask_logits), threshold, overlap_mask_area_threshold=0.0, return_binary_maps=True
    )[0]
    theirs = hf.post_process_instance_segmentation(
        as_torch(class_logits, mask_logits), threshold=threshold, return_binary_maps=True
    )[0]
    order = np.argsort([-s["score"] for s in theirs["segments_info"]], kind="stable")
    assert len(ours["segments_info"]) == len(order) >= 5
    for ours_segment, mask, i in zip(ours["segments_info"], ours["segmentation"], order, strict=True):
        assert ours_segment["label_id"] == theirs["segments_info"][i]["label_id"]
        assert abs(ours_segment["score"] - theirs["segments_info"][i]["score"]) <= 2e-6
        np.testing.assert_array_equal(mask, theirs["segmentation"][i].numpy().astype(bool))


# ----------------------------------------------------------------------------------------------------
# The original's rules where HF differs: torch transcriptions, any image and target size


@pytest.mark.parametrize(
    "image_sizes, target_sizes",
    [(None, None), ([(96, 70), (80, 96)], None), ([(96, 70), (80, 96)], [(150, 101), (61, 77)])],
)
def test_panoptic_and_instance_follow_the_original(image_sizes, target_sizes):
    pytest.importorskip("torch")
    class_logits, mask_logits = fake_logits(3, 2, 16, 5, 24)
    outputs = Outputs(class_logits, mask_logits)
    sizes = dict(image_sizes=image_sizes, target_sizes=target_sizes)
    panoptic = pp.post_process_panoptic_segmentation(outputs, threshold=0.5, label_ids_to_fuse={2}, **sizes)
    instance = pp.post_process_instance_segmentation(outputs, threshold=0.1, return_binary_maps=True, **sizes)
    for b in range(2):
        image = image_sizes[b] if image_sizes else (96, 96)
        target = target_sizes[b] if target_sizes else image
        segmentation, segments = reference_panoptic(class_logits[b], mask_logits[b], image, target, 0.5, 0.5, 0.8, {2})
        np.testing.assert_array_equal(panoptic[b]["segmentation"], segmentation)
        close_segments(info(panoptic[b]["segments_info"]), segments)
        assert len(segments) >= 3
        _, segments, masks = reference_instance(class_logits[b], mask_logits[b], image, target, 0.1, 0.5, 0.8)
        np.testing.assert_array_equal(instance[b]["segmentation"], np.stack(masks))
        assert [s["label_id"] for s in instance[b]["segments_info"]] == [label for label, _ in segments]
        scores = [s["score"] for s in instance[b]["segments_info"]]
        np.testing.assert_allclose(scores, [score for _, score in segments], atol=2e-6)
        assert len(segments) >= 3


def test_semantic_crops_then_resizes_the_class_scores():
    """The original's semantic order: class scores at the padded input, crop, resize, argmax."""
    torch = pytest.importorskip("torch")
    class_logits, mask_logits = fake_logits(4, 1, 12, 5, 24)
    ours = pp.post_process_semantic_segmentation(
        Outputs(class_logits, mask_logits), image_sizes=[(80, 64)], target_sizes=[(120, 100)]
    )[0]
    probs = torch_masks(mask_logits[0], (80, 64), (80, 64)).sigmoid()
    scores = torch.einsum("qk,qhw->khw", torch.from_numpy(class_logits[0]).softmax(-1)[:, :-1], probs)
    scores = torch.nn.functional.interpolate(scores[None], size=(120, 100), mode="bilinear")[0]
    np.testing.assert_array_equal(ours, scores.argmax(0).numpy())


def test_no_fixed_384_step():
    """Outputs come at the image's own size inside the padding (HF: always 384x384 without targets)."""
    class_logits, mask_logits = fake_logits(5, 2, 8, 3, 24)
    outputs = Outputs(class_logits, mask_logits)
    assert [m.shape for m in pp.post_process_semantic_segmentation(outputs)] == [(96, 96)] * 2
    sizes = [(90, 60), (40, 96)]
    for post in (pp.post_process_semantic_segmentation, pp.post_process_instance_segmentation):
        results = post(outputs, image_sizes=sizes)
        assert [np.shape(r["segmentation"] if isinstance(r, dict) else r) for r in results] == sizes
    results = pp.post_process_panoptic_segmentation(outputs, threshold=0.5, image_sizes=sizes)
    assert [r["segmentation"].shape for r in results] == sizes


# ----------------------------------------------------------------------------------------------------
# Hand-built cases with known answers; every argument changes the result


def step_masks(*column_ranges, side: int = 8, value: float = 5.0) -> np.ndarray:
    """(1, Q, side, side) logits, +value on mask columns [a, b) and -value elsewhere: binarised at 0.5
    after the 4x upsample, query q covers exactly input columns [4a, 4b)."""
    masks = np.full((1, len(column_ranges), side, side), -value, np.float32)
    for q, (a, b) in enumerate(column_ranges):
        masks[0, q, :, a:b] = value
    return masks


def class_logits_for(*probs_and_labels, classes: int = 3) -> np.ndarray:
    """(1, Q, K+1) logits whose softmax gives `prob` to `label` and shares the rest equally."""
    rows = []
    for prob, label in probs_and_labels:
        p = np.full(classes + 1, (1 - prob) / classes)
        p[label] = prob
        rows.append(np.log(p))
    return np.array([rows], np.float32)


def test_instance_takes_top_100_over_queries_and_classes():
    """3 queries x 4 classes, constant masks: all 12 pairs are instances (HF keeps 3), each scored
    class prob x sigmoid(mask logit), and only the best one survives the default overlap test."""
    rng = np.random.RandomState(0)
    class_logits = rng.randn(1, 3, 5).astype(np.float32)
    levels = np.array([2.0, 1.0, 3.0], np.float32)
    mask_logits = np.broadcast_to(levels[None, :, None, None], (1, 3, 8, 8)).copy()
    outputs = Outputs(class_logits, mask_logits)
    expected = (pp._softmax(class_logits[0])[:, :-1] * pp._sigmoid(levels)[:, None]).ravel()
    expected_labels = np.argsort(-expected) % 4
    results = pp.post_process_instance_segmentation(outputs, threshold=0.0, overlap_mask_area_threshold=0.0)[0]
    assert [s["label_id"] for s in results["segments_info"]] == expected_labels.tolist()
    np.testing.assert_allclose([s["score"] for s in results["segments_info"]], np.sort(expected)[::-1], atol=2e-6)
    assert (results["segmentation"] == 0).all()
    top5 = pp.post_process_instance_segmentation(outputs, threshold=0.0, overlap_mask_area_threshold=0.0, top_k=5)[0]
    assert len(top5["segments_info"]) == 5
    assert len(pp.post_process_instance_segmentation(outputs, threshold=0.0)[0]["segments_info"]) == 1


def test_instance_arguments():
    """A (cols 0-15, prob 0.95) and B (cols 8-23, prob 0.9): B is half hidden by A."""
    outputs = Outputs(class_logits_for((0.95, 1), (0.9, 2)), step_masks((0, 4), (2, 6)))
    run = lambda **kw: pp.post_process_instance_segmentation(outputs, **kw)[0]  # noqa: E731
    default = run()
    assert [s["label_id"] for s in default["segments_info"]] == [1]  # B: 8 of 16 columns visible < 0.8
    both = run(overlap_mask_area_threshold=0.5)
    assert [(s["id"], s["label_id"]) for s in both["segments_info"]] == [(0, 1), (1, 2)]
    expected = np.full((32, 32), -1)
    expected[:, :16], expected[:, 16:24] = 0, 1
    np.testing.assert_array_equal(both["segmentation"], expected)
    assert run(overlap_mask_area_threshold=0.6)["segments_info"] == default["segments_info"]
    assert run(threshold=0.99)["segments_info"] == []
    maps = run(overlap_mask_area_threshold=0.5, return_binary_maps=True)["segmentation"]
    assert maps.shape == (2, 32, 32) and maps.dtype == bool
    assert maps[0].sum() == 32 * 16 and maps[1][:, 8:24].all() and maps[1].sum() == 32 * 16
    # mask_threshold: sigmoid(5) = 0.9933, so 0.995 empties both masks (score 0); with threshold 0 they stay.
    assert run(mask_threshold=0.995)["segments_info"] == []
    empty = run(mask_threshold=0.995, threshold=0.0, return_coco_annotation=True)  # all 2 x 3 pairs
    assert [s["score"] for s in empty["segments_info"]] == [0.0] * 6
    assert empty["segmentation"] == [{"size": [32, 32], "counts": [1024]}] * 6
    assert run(target_sizes=[(64, 48)], return_binary_maps=True)["segmentation"].shape == (1, 64, 48)
    with pytest.raises(ValueError, match="both"):
        run(return_binary_maps=True, return_coco_annotation=True)


def decode_rle(rle: dict) -> np.ndarray:
    values = np.concatenate([np.full(n, i % 2, bool) for i, n in enumerate(rle["counts"])])
    return values.reshape(rle["size"][::-1]).T


def test_coco_rle_round_trips():
    class_logits, mask_logits = fake_logits(6, 1, 16, 5, 24)
    outputs = Outputs(class_logits, mask_logits)
    kwargs = dict(threshold=0.1, target_sizes=[(50, 70)])
    maps = pp.post_process_instance_segmentation(outputs, return_binary_maps=True, **kwargs)
    rles = pp.post_process_instance_segmentation(outputs, return_coco_annotation=True, **kwargs)
    assert maps[0]["segments_info"] == rles[0]["segments_info"] and len(rles[0]["segmentation"]) >= 3
    for mask, rle in zip(maps[0]["segmentation"], rles[0]["segmentation"], strict=True):
        np.testing.assert_array_equal(decode_rle(rle), mask)
    assert pp._rle(np.ones((2, 3), bool))["counts"] == [0, 6]
    none = pp.post_process_instance_segmentation(outputs, threshold=1.0, return_coco_annotation=True)[0]
    assert none == {"segmentation": [], "segments_info": []}


def test_panoptic_arguments():
    """A (cols 0-15, prob 0.95, class 1) and B (cols 8-23, prob 0.9, class 1): A wins the overlap."""
    outputs = Outputs(class_logits_for((0.95, 1), (0.9, 1)), step_masks((0, 4), (2, 6)))
    run = lambda **kw: pp.post_process_panoptic_segmentation(outputs, **kw)[0]  # noqa: E731
    default = run()
    assert info(default["segments_info"]) == {1: (1, False, 0.95)}  # B wins 9 of its 16 columns
    # Column 15: B wins (0.9 x 0.993 > 0.95 x 0.777) but is no segment, so the pixel stays void (0).
    np.testing.assert_array_equal(default["segmentation"][0], [1] * 15 + [0] * 17)
    both = run(overlap_mask_area_threshold=0.3)
    assert info(both["segments_info"]) == {1: (1, False, 0.95), 2: (1, False, 0.9)}
    assert set(both["segmentation"][:, 16:24].ravel()) == {2}
    fused = run(overlap_mask_area_threshold=0.3, label_ids_to_fuse={1})
    assert info(fused["segments_info"]) == {1: (1, True, 0.95)}
    np.testing.assert_array_equal(fused["segmentation"][0], [1] * 24 + [0] * 8)
    # threshold: without B, A takes all of its mask; above both scores nothing is kept (all -1).
    np.testing.assert_array_equal(run(threshold=0.92)["segmentation"][0], [1] * 16 + [0] * 16)
    assert run(threshold=0.96)["segments_info"] == [] and (run(threshold=0.96)["segmentation"] == -1).all()
    # mask_threshold: above sigmoid(5) no mask has area, so no segment.
    assert run(mask_threshold=0.995)["segments_info"] == []
    assert run(target_sizes=[(20, 10)])["segmentation"].shape == (20, 10)


def test_panoptic_paints_only_where_the_winner_is_confident():
    """One query: it wins every pixel, but pixels where its mask prob < mask_threshold stay void
    (HF paints the whole image). Default threshold is the original's 0.8, not HF's 0.5."""
    outputs = Outputs(class_logits_for((0.85, 0)), step_masks((2, 5)))
    result = pp.post_process_panoptic_segmentation(outputs)[0]
    expected = np.zeros((32, 32), int)
    expected[:, 8:20] = 1
    np.testing.assert_array_equal(result["segmentation"], expected)
    low = Outputs(class_logits_for((0.7, 0)), step_masks((2, 5)))
    assert pp.post_process_panoptic_segmentation(low)[0]["segments_info"] == []
    assert len(pp.post_process_panoptic_segmentation(low, threshold=0.5)[0]["segments_info"]) == 1


def test_inputs_torch_jax_and_errors():
    pytest.importorskip("torch")
    class_logits, mask_logits = fake_logits(7, 2, 8, 3, 24)
    expected = pp.post_process_semantic_segmentation(Outputs(class_logits, mask_logits))
    for outputs in (as_torch(class_logits, mask_logits), Outputs(jnp.asarray(class_logits), jnp.asarray(mask_logits))):
        for a, b in zip(pp.post_process_semantic_segmentation(outputs), expected, strict=True):
            np.testing.assert_array_equal(a, b)
    outputs = Outputs(class_logits, mask_logits)
    with pytest.raises(ValueError, match="one \\(height, width\\) per image"):
        pp.post_process_semantic_segmentation(outputs, target_sizes=[(10, 10)])
    with pytest.raises(ValueError, match="larger than the padded input"):
        pp.post_process_panoptic_segmentation(outputs, image_sizes=[(97, 10), (10, 10)])
    with pytest.raises(ValueError, match="masks_queries_logits"):
        pp.post_process_instance_segmentation(Outputs(class_logits, mask_logits[0]))
    with pytest.raises(TypeError, match="class_queries_logits"):
        pp.post_process_instance_segmentation(object())


# ----------------------------------------------------------------------------------------------------
# Bands: results independent of the band size; bounded memory on large targets


def run_all(outputs, **sizes):
    return (
        pp.post_process_semantic_segmentation(outputs, return_segmentation_scores=True, **sizes),
        pp.post_process_panoptic_segmentation(outputs, threshold=0.5, label_ids_to_fuse={0}, **sizes),
        pp.post_process_instance_segmentation(outputs, threshold=0.1, return_binary_maps=True, **sizes),
    )


def assert_equal_up_to_rounding(got, want, where="result"):
    """Discrete values (ids, labels, flags, integer and boolean maps) equal; floats within 1e-6.

    The band size changes how BLAS blocks the per-band products, and so, on some CPUs, the last bit of
    a sum (one float32 ulp was seen on AMD EPYC with OpenBLAS' Haswell kernels): results agree up to
    rounding, not bit for bit. A wrong band boundary moves values by far more than 1e-6."""
    if isinstance(got, dict):
        assert got.keys() == want.keys(), where
        for key in got:
            assert_equal_up_to_rounding(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(got, (list, tuple)):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_equal_up_to_rounding(a, b, f"{where}[{i}]")
    elif isinstance(got, float) or (isinstance(got, np.ndarray) and np.issubdtype(got.dtype, np.floating)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=where)
    else:
        np.testing.assert_equal(got, want, err_msg=where)


def semantic_argmax_agrees(got, want):
    """The class maps agree wherever the reference's best class leads the runner-up by more than the
    rounding (a near-tie may go either way when the scores differ in their last bit)."""
    scores = np.sort(want["segmentation_scores"], axis=0)
    decided = scores[-1] - scores[-2] > 1e-5
    np.testing.assert_array_equal(got["segmentation"][decided], want["segmentation"][decided])
    assert decided.mean() > 0.99


def test_band_size_does_not_change_results(monkeypatch):
    outputs = Outputs(*fake_logits(8, 2, 16, 5, 24))
    sizes = dict(image_sizes=[(90, 70), (96, 96)], target_sizes=[(301, 233), (50, 75)])
    whole = run_all(outputs, **sizes)
    monkeypatch.setattr(pp, "_BAND_BYTES", 30_000)
    banded = run_all(outputs, **sizes)
    for got, want in zip(banded[0], whole[0], strict=True):
        semantic_argmax_agrees(got, want)
        np.testing.assert_allclose(got["segmentation_scores"], want["segmentation_scores"], rtol=1e-6, atol=1e-6)
    assert_equal_up_to_rounding(banded[1:], whole[1:])


def test_large_target_in_bounded_memory():
    """2000x2500 targets with 20 queries: peak host memory stays near outputs + the band budget."""
    class_logits, mask_logits = fake_logits(9, 1, 20, 5, 32)
    outputs = Outputs(class_logits, mask_logits)
    target = dict(target_sizes=[(2000, 2500)])
    pixels = 2000 * 2500
    runs = [
        (lambda: pp.post_process_semantic_segmentation(outputs, **target), 4 * pixels),
        (lambda: pp.post_process_panoptic_segmentation(outputs, threshold=0.5, **target), (4 + 5) * pixels),
        (lambda: pp.post_process_instance_segmentation(outputs, threshold=0.1, **target), (4 + 3) * pixels),
    ]
    start = time.perf_counter()
    for run, map_bytes in runs:
        tracemalloc.start()
        result = run()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < map_bytes + pp._BAND_BYTES, (peak, map_bytes)
        assert np.shape(result[0]["segmentation"] if isinstance(result[0], dict) else result[0]) == (2000, 2500)
    assert time.perf_counter() - start < 30


# ----------------------------------------------------------------------------------------------------
# Jitted device versions agree with the host versions (padded input, no crop, no target)


def test_semantic_inference_matches_host():
    class_logits, mask_logits = fake_logits(10, 2, 12, 5, 24)
    host = pp.post_process_semantic_segmentation(Outputs(class_logits, mask_logits))
    device = pp.semantic_inference(class_logits, mask_logits, size=(96, 96))
    np.testing.assert_array_equal(np.asarray(device), np.stack(host))
    probs = pp.semantic_inference(class_logits, mask_logits, return_probs=True)
    assert probs.shape == (2, 5, 24, 24)
    np.testing.assert_array_equal(probs.argmax(1), pp.semantic_inference(class_logits, mask_logits))


def test_panoptic_inference_matches_host():
    class_logits, mask_logits = fake_logits(11, 2, 16, 5, 24)
    class_logits[1, :, -1] = 20.0  # image 1: nothing passes the threshold
    outputs = Outputs(class_logits, mask_logits)
    host = pp.post_process_panoptic_segmentation(outputs, threshold=0.5, label_ids_to_fuse={0, 2})
    fuse = np.isin(np.arange(5), [0, 2])
    device = pp.panoptic_inference(class_logits, mask_logits, 0.5, fuse_classes=fuse, size=(96, 96))
    device = jax.tree.map(np.asarray, device)
    for b in range(2):
        np.testing.assert_array_equal(device["segmentation"][b], host[b]["segmentation"])
        segments = {}
        for q in np.flatnonzero(device["segment_ids"][b]):
            i, score = int(device["segment_ids"][b, q]), round(float(device["scores"][b, q]), 6)
            label = int(device["labels"][b, q])
            if i not in segments or score > segments[i][2]:
                segments[i] = (label, bool(fuse[label]), score)
        close_segments(info(host[b]["segments_info"]), segments)
    assert len(host[0]["segments_info"]) >= 3 and host[1]["segments_info"] == []
    np.testing.assert_array_equal(device["keep"], device["segment_ids"] > 0)


def test_instance_inference_matches_host():
    class_logits, mask_logits = fake_logits(12, 2, 16, 5, 24)
    outputs = Outputs(class_logits, mask_logits)
    host = pp.post_process_instance_segmentation(outputs, threshold=0.1)
    maps = pp.post_process_instance_segmentation(outputs, threshold=0.1, return_binary_maps=True)
    device = jax.tree.map(np.asarray, pp.instance_inference(class_logits, mask_logits, 0.1, size=(96, 96)))
    assert device["masks"].shape == (2, 80, 96, 96)
    for b in range(2):
        keep = device["keep"][b]
        assert device["labels"][b][keep].tolist() == [s["label_id"] for s in host[b]["segments_info"]]
        np.testing.assert_allclose(device["scores"][b][keep], [s["score"] for s in host[b]["segments_info"]], atol=2e-6)
        np.testing.assert_array_equal(device["segmentation"][b], host[b]["segmentation"])
        np.testing.assert_array_equal(device["masks"][b][keep], maps[b]["segmentation"])
    # Both thresholds 0: all top-k pairs kept, as the original's COCO evaluation.
    everything = pp.instance_inference(class_logits, mask_logits, 0.0, 0.5, 0.0, top_k=10)
    assert everything["keep"].shape == (2, 10) and bool(everything["keep"].all())


def test_device_versions_compose_under_jit():
    """No host round-trips: the three run inside one traced function."""
    class_logits, mask_logits = fake_logits(13, 2, 8, 3, 16)

    @jax.jit
    def evaluate(c, m):
        return (
            pp.semantic_inference(c, m),
            pp.panoptic_inference(c, m)["segmentation"],
            pp.instance_inference(c, m, top_k=7)["scores"],
        )

    semantic, panoptic, scores = evaluate(jnp.asarray(class_logits), jnp.asarray(mask_logits))
    assert semantic.shape == panoptic.shape == (2, 16, 16) and scores.shape == (2, 7)
