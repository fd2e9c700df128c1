"""Overlays: colours where segments are, the image elsewhere, a legend with the label names."""

import numpy as np
import pytest

from m2f_jax.visualize import overlay, palette


def test_palette_distinct_and_stable():
    colours = palette(50)
    assert colours.shape == (50, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours}) == 50
    assert np.array_equal(palette(10), colours[:10])


def test_semantic_overlay_tints_by_class_and_adds_legend():
    image = np.full((40, 60, 3), 100, np.uint8)
    semantic = np.full((40, 60), -1)
    semantic[:20, :30] = 2
    picture = overlay(image, semantic, {2: "cat"}, legend=True)
    pixels = np.asarray(picture)
    assert picture.height == 40 and picture.width > 60  # the legend panel on the right
    assert np.array_equal(pixels[30, 40], [100, 100, 100])  # untouched outside segments
    assert not np.array_equal(pixels[5, 5], [100, 100, 100])
    assert np.asarray(overlay(image, semantic, legend=False)).shape == (40, 60, 3)


def test_panoptic_overlay_gives_each_segment_its_colour():
    image = np.zeros((10, 10, 3), np.uint8)
    segmentation = np.zeros((10, 10), int)
    segmentation[:, 5:] = 1
    result = {
        "segmentation": segmentation,
        "segments_info": [{"id": 0, "label_id": 3, "score": 0.9}, {"id": 1, "label_id": 3, "score": 0.8}],
    }
    pixels = np.asarray(overlay(image, result, legend=False))
    assert not np.array_equal(pixels[0, 0], pixels[0, 9])


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="target_sizes"):
        overlay(np.zeros((10, 10, 3), np.uint8), np.zeros((5, 5), int))


def test_a_result_without_segments_leaves_the_image_as_it_is():
    image = np.full((6, 8, 3), 90, np.uint8)
    empty = {"segmentation": np.full((6, 8), -1), "segments_info": []}
    np.testing.assert_array_equal(np.asarray(overlay(image, empty)), image)
