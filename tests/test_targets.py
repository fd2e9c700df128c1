"""Targets: segmentation maps -> binary masks + labels (parity with HF), and fixed-shape padding."""

from __future__ import annotations

import numpy as np
import pytest

from m2f_jax.processing.targets import (
    PAD_LABEL,
    instance_to_targets,
    pad_targets,
    pad_targets_batch,
    semantic_to_targets,
)

pytest.importorskip("torch")
pytest.importorskip("transformers")
from transformers.models.mask2former.image_processing_pil_mask2former import (  # noqa: E402
    convert_segmentation_map_to_binary_masks as hf_convert,
)


def random_map(values, shape=(37, 53), seed=0, dtype=np.int64):
    rng = np.random.RandomState(seed)
    return np.asarray(values)[rng.randint(0, len(values), shape)].astype(dtype)


def assert_same(ours, theirs):
    (masks, labels), (hf_masks, hf_labels) = ours, theirs
    assert masks.dtype == np.float32 and labels.dtype == np.int64
    np.testing.assert_array_equal(masks, hf_masks)
    np.testing.assert_array_equal(labels, hf_labels)


@pytest.mark.parametrize(
    "values, ignore_index, reduce_labels",
    [
        ([0, 1, 2, 5, 9], None, False),
        ([0, 1, 2, 5, 9], 255, False),
        ([0, 1, 2, 255], 255, False),
        ([0, 1, 2, 5, 255], 255, True),
        ([0, 3, 4], 3, True),  # label 4 reduces to 3 = ignore_index: dropped, as in HF
        ([255], 255, False),  # nothing left: (0, H, W)
        ([0], 255, True),
    ],
)
def test_semantic_matches_hf(values, ignore_index, reduce_labels):
    for dtype in (np.uint8, np.int32, np.int64):
        seg = random_map(values, dtype=dtype)
        ours = semantic_to_targets(seg, ignore_index, reduce_labels)
        assert_same(ours, hf_convert(seg, None, ignore_index=ignore_index, do_reduce_labels=reduce_labels))
        assert ours[0].shape == (len(ours[1]), *seg.shape)


@pytest.mark.parametrize("ignore_index, reduce_labels", [(None, False), (255, False), (0, False), (255, True)])
def test_instance_matches_hf(ignore_index, reduce_labels):
    seg = random_map([0, 1, 7, 300, 4096], seed=1)
    mapping = {0: 3, 1: 1, 7: 1, 300: 12, 4096: 5}
    ours = instance_to_targets(seg, mapping, ignore_index, reduce_labels)
    assert_same(ours, hf_convert(seg, mapping, ignore_index=ignore_index, do_reduce_labels=reduce_labels))


def test_masks_partition_the_labelled_pixels():
    seg = random_map([0, 2, 3, 255], seed=2)
    masks, labels = semantic_to_targets(seg, ignore_index=255)
    np.testing.assert_array_equal(labels, [0, 2, 3])
    np.testing.assert_array_equal(masks.sum(0), seg != 255)
    np.testing.assert_array_equal(labels[masks.argmax(0)][seg != 255], seg[seg != 255])


def test_target_errors():
    seg = random_map([0, 1, 2])
    with pytest.raises(ValueError, match="needs an ignore_index"):
        semantic_to_targets(seg, reduce_labels=True)
    with pytest.raises(ValueError, match=r"instance ids \[2\] appear in the instance map but not"):
        instance_to_targets(seg, {0: 1, 1: 1})
    with pytest.raises(ValueError, match=r"must be 2-D \(H, W\), got shape \(2, 37, 53\)"):
        semantic_to_targets(np.stack([seg, seg]))
    with pytest.raises(TypeError, match="must hold integers, got dtype float32"):
        semantic_to_targets(seg.astype(np.float32))


# ----------------------------------------------------------------------------------------------------
# Fixed shapes


def test_pad_targets():
    masks, labels = semantic_to_targets(random_map([0, 4, 7]), ignore_index=255)
    out = pad_targets(masks, labels, max_instances=5)
    assert out.masks.shape == (5, 37, 53) and out.masks.dtype == np.bool_
    assert out.labels.dtype == np.int32 and out.valid.dtype == np.bool_
    np.testing.assert_array_equal(out.masks[:3], masks == 1)
    assert not out.masks[3:].any()
    np.testing.assert_array_equal(out.labels, [0, 4, 7, PAD_LABEL, PAD_LABEL])
    np.testing.assert_array_equal(out.valid, [True, True, True, False, False])
    full = pad_targets(masks.astype(bool), labels, max_instances=3)  # exactly full
    assert full.valid.all() and full.masks.shape == (3, 37, 53)


def test_pad_targets_zero_instances():
    masks, labels = semantic_to_targets(np.full((6, 7), 255), ignore_index=255)
    assert masks.shape == (0, 6, 7) and labels.shape == (0,)
    out = pad_targets(masks, labels, max_instances=4)
    assert out.masks.shape == (4, 6, 7) and not out.masks.any() and not out.valid.any()
    np.testing.assert_array_equal(out.labels, [PAD_LABEL] * 4)
    empty = pad_targets(masks, labels, max_instances=0)
    assert empty.masks.shape == (0, 6, 7) and empty.labels.shape == (0,)


def test_pad_targets_errors():
    masks, labels = semantic_to_targets(random_map([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="4 segments do not fit in max_instances=3"):
        pad_targets(masks, labels, 3)
    with pytest.raises(ValueError, match=r"labels must be \(N,\) = \(4,\)"):
        pad_targets(masks, labels[:2], 8)
    with pytest.raises(ValueError, match="binary"):
        pad_targets(masks * 255, labels, 8)
    with pytest.raises(ValueError, match=r"masks must be \(N, H, W\)"):
        pad_targets(masks[0], labels, 8)
    with pytest.raises(TypeError, match="labels must be integers"):
        pad_targets(masks, labels.astype(np.float32), 8)
    with pytest.raises(ValueError, match="fit in int32"):
        pad_targets(masks, labels + 2**40, 8)


def test_pad_targets_batch():
    first = semantic_to_targets(random_map([0, 1, 2], seed=3), ignore_index=255)
    second = semantic_to_targets(np.full((37, 53), 255), ignore_index=255)
    out = pad_targets_batch([first[0], second[0]], [first[1], second[1]], max_instances=4)
    assert out.masks.shape == (2, 4, 37, 53) and out.labels.shape == (2, 4) and out.valid.shape == (2, 4)
    np.testing.assert_array_equal(out.labels, [[0, 1, 2, PAD_LABEL], [PAD_LABEL] * 4])
    np.testing.assert_array_equal(out.valid.sum(1), [3, 0])
    with pytest.raises(ValueError, match="image 0: 3 segments do not fit in max_instances=2"):
        pad_targets_batch([first[0], second[0]], [first[1], second[1]], max_instances=2)
    with pytest.raises(ValueError, match="share"):
        pad_targets_batch([first[0], first[0][:, :5]], [first[1], first[1]], max_instances=4)
    with pytest.raises(ValueError, match="2 mask arrays but 1 label"):
        pad_targets_batch([first[0], second[0]], [first[1]], max_instances=4)
