"""m2f_jax.data.transforms on hand-made images whose pixels say where they came from.

Segment maps are either one id per pixel (id = y * W + x + 1, so every output segment names its source
pixel) or large constant blocks (so nearest-neighbour and bilinear resampling can only disagree near
block borders, and the tests compare away from them).
"""

from __future__ import annotations

import numpy as np
import pytest

from m2f_jax.data.transforms import AugmentConfig, augment, photometric_distortion


def coordinate_sample(height: int, width: int):
    """Image (y, x, 200) per pixel; segment id y * W + x + 1; every segment its own category."""
    y, x = np.mgrid[:height, :width]
    image = np.stack([y, x, np.full_like(y, 200)], axis=-1).astype(np.uint8)
    segments = (y * width + x + 1).astype(np.int32)
    categories = np.arange(-1, height * width, dtype=np.int32)
    return image, segments, categories


def block_sample(height: int, width: int, block: int):
    """Blocks of block x block pixels: segment id = block index + 1, image colour a function of the id."""
    y, x = np.mgrid[:height, :width]
    blocks_per_row = -(-width // block)
    segments = ((y // block) * blocks_per_row + x // block + 1).astype(np.int32)
    image = np.stack([segments * 37 % 256, segments * 91 % 256, segments * 11 % 256], axis=-1).astype(np.uint8)
    categories = np.arange(-1, segments.max() + 1, dtype=np.int32)
    return image, segments, categories


def expected_blocks(resized, out, in_size, block: int, offset=(0, 0), margin: float = 1.0):
    """For the `out` (h, w) window at `offset` of an (H, W) block pattern resized to `resized` (h, w): the
    block id under each output pixel's centre, and whether that centre lies at least `margin` source
    pixels from every block border and image edge (where the comparison is unambiguous)."""
    (in_h, in_w) = in_size
    ys = (offset[0] + np.arange(out[0]) + 0.5) * in_h / resized[0]
    xs = (offset[1] + np.arange(out[1]) + 0.5) * in_w / resized[1]
    blocks_per_row = -(-in_w // block)
    ids = (ys[:, None] // block).astype(int) * blocks_per_row + (xs[None, :] // block).astype(int) + 1

    def clear(v, size):
        to_border = np.minimum(v % block, block - v % block)
        edge = (v < margin) | (v > size - margin)
        return (to_border >= margin) & ~edge

    return ids, clear(ys, in_h)[:, None] & clear(xs, in_w)[None, :]


def assert_padding(image, segments, mask, real):
    h, w = real
    expected = np.zeros(mask.shape, bool)
    expected[:h, :w] = True
    np.testing.assert_array_equal(mask, expected)
    assert not image[~expected].any() and not segments[~expected].any()


# ----------------------------------------------------------------------------------------------------
# "flip"


def test_flip_kind_mirrors_or_not_and_pads():
    image, segments, categories = coordinate_sample(6, 10)
    config = AugmentConfig(kind="flip", crop_size=(8, 12))
    seen = set()
    for seed in range(12):
        out_image, out_segments, mask = augment(image, segments, categories, config, np.random.default_rng(seed))
        assert out_image.shape == (8, 12, 3) and out_image.dtype == np.uint8
        assert out_segments.shape == (8, 12) and out_segments.dtype == np.int32 and mask.dtype == np.bool_
        assert_padding(out_image, out_segments, mask, (6, 10))
        mirrored = np.array_equal(out_image[:6, :10], image[:, ::-1])
        assert mirrored or np.array_equal(out_image[:6, :10], image)
        np.testing.assert_array_equal(out_segments[:6, :10], segments[:, ::-1] if mirrored else segments)
        seen.add(mirrored)
    assert seen == {True, False}  # both happen over 12 seeds

    no_flip = AugmentConfig(kind="flip", crop_size=(6, 10), flip=False)
    for seed in range(3):
        out_image, out_segments, mask = augment(image, segments, categories, no_flip, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_image, image)
        np.testing.assert_array_equal(out_segments, segments)
        assert mask.all()


def test_flip_kind_refuses_larger_images():
    image, segments, categories = coordinate_sample(6, 10)
    with pytest.raises(ValueError, match="larger than crop_size"):
        augment(image, segments, categories, AugmentConfig(kind="flip", crop_size=(6, 9)), np.random.default_rng(0))


# ----------------------------------------------------------------------------------------------------
# "lsj"


def test_lsj_random_scales_keep_shape_ids_and_padding():
    image, segments, categories = coordinate_sample(30, 40)
    config = AugmentConfig(kind="lsj", crop_size=(24, 28), min_scale=0.1, max_scale=2.0)
    for seed in range(20):
        out_image, out_segments, mask = augment(image, segments, categories, config, np.random.default_rng(seed))
        assert out_image.shape == (24, 28, 3) and out_segments.shape == (24, 28) and mask.shape == (24, 28)
        h, w = int(mask.any(axis=1).sum()), int(mask.any(axis=0).sum())
        assert_padding(out_image, out_segments, mask, (h, w))  # the real region is a top-left rectangle
        real = out_segments[:h, :w]
        assert real.min() >= 1 and real.max() <= 30 * 40  # only ids of the input
        # Nearest neighbour is separable: each output row comes from one source row, each column from
        # one source column, in order (reversed along x when flipped).
        y_src, x_src = (real - 1) // 40, (real - 1) % 40
        assert (y_src == y_src[:, :1]).all() and (x_src == x_src[:1]).all()
        assert (np.diff(y_src[:, 0]) >= 0).all()
        steps = np.diff(x_src[0])
        assert (steps >= 0).all() or (steps <= 0).all()
        # The bilinear image agrees with the nearest-neighbour ids up to the filter's reach (about one
        # output pixel's extent in source pixels, + 1 for rounding).
        for channel, src, n in ((0, y_src[:, 0], h), (1, x_src[0], w)):
            extent = abs(int(src[-1]) - int(src[0])) / max(n - 1, 1)
            values = out_image[:h, :w, channel].astype(int)
            assert np.abs(values - (y_src if channel == 0 else x_src)).max() <= extent + 2


def test_lsj_fixed_scale_shrinks_to_exact_size_and_blocks_land_in_place():
    image, segments, categories = block_sample(40, 60, block=10)
    # scale = min(0.5 * 64 / 40, 0.5 * 64 / 60) = 0.5333; 40 x 60 -> 21 x 32, padded to 64 x 64
    config = AugmentConfig(kind="lsj", crop_size=(64, 64), min_scale=0.5, max_scale=0.5, flip=False)
    for seed in range(3):
        out_image, out_segments, mask = augment(image, segments, categories, config, np.random.default_rng(seed))
        assert_padding(out_image, out_segments, mask, (21, 32))
        ids, clear = expected_blocks((21, 32), (21, 32), (40, 60), block=10)
        assert clear.sum() > 200
        np.testing.assert_array_equal(out_segments[:21, :32][clear], ids[clear])
        # bilinear (antialiased over ~2 source pixels when shrinking): exact inside blocks
        _, inner = expected_blocks((21, 32), (21, 32), (40, 60), block=10, margin=3.0)
        np.testing.assert_array_equal(out_image[:21, :32][inner], _colour(ids[inner]))


def _colour(ids):
    return np.stack([ids * 37 % 256, ids * 91 % 256, ids * 11 % 256], axis=-1).astype(np.uint8)


def test_lsj_fixed_scale_enlarges_and_crops_a_consistent_window():
    image, segments, categories = block_sample(40, 60, block=10)
    # scale = min(2 * 32 / 40, 2 * 32 / 60) = 1.0667; 40 x 60 -> 43 x 64; a random 32 x 32 window
    config = AugmentConfig(kind="lsj", crop_size=(32, 32), min_scale=2.0, max_scale=2.0)
    offsets = set()
    for seed in range(8):
        out_image, out_segments, mask = augment(image, segments, categories, config, np.random.default_rng(seed))
        assert mask.all()
        matches = []
        for mirrored in (False, True):
            seg = out_segments[:, ::-1] if mirrored else out_segments
            for top in range(43 - 32 + 1):
                for left in range(64 - 32 + 1):
                    ids, clear = expected_blocks((43, 64), (32, 32), (40, 60), 10, offset=(top, left))
                    if np.array_equal(seg[clear], ids[clear]):
                        matches.append((mirrored, top, left))
        assert matches, f"seed {seed}: the crop is no window of the 43 x 64 resize"
        offsets.add(matches[0])
    assert len(offsets) > 1  # the window moves with the seed


# ----------------------------------------------------------------------------------------------------
# "semantic"


@pytest.mark.parametrize(
    ("max_size", "real"),
    [(2048, (16, 24)), (20, (13, 20))],  # short side 0.5 * 32 = 16; with the long side capped at 20
)
def test_semantic_short_side_and_max_size(max_size, real):
    image, segments, categories = block_sample(40, 60, block=10)
    config = AugmentConfig(
        kind="semantic", crop_size=(64, 64), min_scale=0.5, max_scale=0.5, base_size=32, max_size=max_size,
        photometric=False, flip=False,
    )  # fmt: skip
    out_image, out_segments, mask = augment(image, segments, categories, config, np.random.default_rng(0))
    assert_padding(out_image, out_segments, mask, real)
    ids, clear = expected_blocks(real, real, (40, 60), block=10)
    np.testing.assert_array_equal(out_segments[: real[0], : real[1]][clear], ids[clear])


def test_semantic_photometric_changes_pixels_not_segments():
    image, segments, categories = block_sample(40, 60, block=10)
    plain = AugmentConfig(kind="semantic", crop_size=(24, 24), base_size=40, photometric=False, flip=False)
    colour = AugmentConfig(kind="semantic", crop_size=(24, 24), base_size=40, photometric=True, flip=False)
    changed = 0
    for seed in range(6):
        a = augment(image, segments, categories, plain, np.random.default_rng(seed))
        b = augment(image, segments, categories, colour, np.random.default_rng(seed))
        # the crop is drawn before the colour steps, so the same seed gives the same window
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[2], b[2])
        assert not b[0][~b[2]].any()
        changed += not np.array_equal(a[0], b[0])
    assert changed >= 3


class RecordingRng:
    """A seeded Generator that records what `integers` returned (the crop offsets)."""

    def __init__(self, seed):
        self.rng, self.integers_drawn = np.random.default_rng(seed), []

    def integers(self, *args, **kwargs):
        value = self.rng.integers(*args, **kwargs)
        self.integers_drawn.append(int(value))
        return value

    def __getattr__(self, name):
        return getattr(self.rng, name)


def _category_counts(categories_map):
    labels = categories_map[categories_map >= 0]
    counts = np.bincount(labels)
    return counts[counts > 0]


def test_category_area_constraint_takes_first_mixed_crop():
    """Scale 1 and one id per pixel, so the output's ids give the chosen window; categories are
    vertical stripes (0 | 1 | 0 at x = 40, 80 of a 100-wide image): a 20-wide window holds both
    categories only where it crosses a stripe border. The chosen window must be the first candidate
    (of up to 10) that holds more than one category under the area limit, or the last when none does."""
    height = width = 100
    _, segments, _ = coordinate_sample(height, width)
    image = np.zeros((height, width, 3), np.uint8)
    x = np.arange(height * width) % width
    categories = np.concatenate([[-1], np.where((x >= 40) & (x < 80), 1, 0)]).astype(np.int32)
    config = AugmentConfig(
        kind="semantic", crop_size=(20, 20), min_scale=1.0, max_scale=1.0, base_size=100,
        max_category_area=0.9, photometric=False, flip=False,
    )  # fmt: skip
    first_tries_single, retried = 0, 0
    for seed in range(40):
        rng = RecordingRng(seed)
        _, out_segments, mask = augment(image, segments, categories, config, rng)
        assert mask.all()
        top, left = divmod(int(out_segments[0, 0]) - 1, width)
        np.testing.assert_array_equal(out_segments, segments[top : top + 20, left : left + 20])
        tries = list(zip(rng.integers_drawn[0::2], rng.integers_drawn[1::2], strict=True))
        assert 1 <= len(tries) <= 10
        good = []
        for t, c in tries:
            counts = _category_counts(categories[segments[t : t + 20, c : c + 20]])
            good.append(len(counts) > 1 and counts.max() / counts.sum() < 0.9)
        if any(good):
            assert (top, left) == tries[good.index(True)] and len(tries) == good.index(True) + 1
        else:
            assert (top, left) == tries[-1] and len(tries) == 10
        first_tries_single += not good[0]
        retried += len(tries) > 1
    assert first_tries_single > 5 and retried > 5  # the constraint did work in this test


def test_category_area_constraint_gives_up_after_ten_tries():
    _, segments, _ = coordinate_sample(50, 50)
    image = np.zeros((50, 50, 3), np.uint8)
    one_category = np.concatenate([[-1], np.zeros(2500, np.int32)]).astype(np.int32)
    config = AugmentConfig(
        kind="semantic", crop_size=(20, 20), min_scale=1.0, max_scale=1.0, base_size=50,
        max_category_area=0.5, photometric=False, flip=False,
    )  # fmt: skip
    rng = RecordingRng(3)
    out_image, out_segments, mask = augment(image, segments, one_category, config, rng)
    assert out_segments.shape == (20, 20) and mask.all()
    assert len(rng.integers_drawn) == 20  # ten windows tried
    top, left = rng.integers_drawn[-2:]
    np.testing.assert_array_equal(out_segments, segments[top : top + 20, left : left + 20])


def test_no_category_constraint_takes_the_first_crop():
    """max_category_area = 1 switches the constraint off (detectron2 then crops once): the first window
    is kept even when it holds one category."""
    _, segments, _ = coordinate_sample(50, 50)
    image = np.zeros((50, 50, 3), np.uint8)
    one_category = np.concatenate([[-1], np.zeros(2500, np.int32)]).astype(np.int32)
    config = AugmentConfig(
        kind="semantic", crop_size=(20, 20), min_scale=1.0, max_scale=1.0, base_size=50, photometric=False,
        flip=False,
    )  # fmt: skip
    rng = RecordingRng(3)
    augment(image, segments, one_category, config, rng)
    assert len(rng.integers_drawn) == 2


# ----------------------------------------------------------------------------------------------------
# photometric distortion and determinism


class ScriptedRng:
    """random() and uniform() answer from scripts (coin flips < 0.5 succeed)."""

    def __init__(self, coins, values=()):
        self.coins, self.values = list(coins), list(values)

    def random(self):
        return self.coins.pop(0)

    def uniform(self, low, high):
        value = self.values.pop(0)
        assert low <= value <= high
        return value


def _colourful(seed=0, shape=(12, 16)):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def test_photometric_distortion():
    image = _colourful()
    out = photometric_distortion(image, np.random.default_rng(5))
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, photometric_distortion(image, np.random.default_rng(5)))
    assert any(not np.array_equal(photometric_distortion(image, np.random.default_rng(s)), image) for s in range(4))
    # every coin fails: the image comes back as it was
    np.testing.assert_array_equal(photometric_distortion(image, ScriptedRng([0.9] * 5)), image)
    # brightness only: + 20, clipped
    bright = photometric_distortion(image, ScriptedRng([0.1, 0.9, 0.9, 0.9, 0.9], [20.0]))
    np.testing.assert_array_equal(bright, np.clip(image.astype(int) + 20, 0, 255))
    # contrast only (first or last: the same when it is the only step): x 1.5, clipped
    for first in (0.1, 0.9):
        contrast = photometric_distortion(image, ScriptedRng([0.9, first, 0.1, 0.9, 0.9], [1.5]))
        np.testing.assert_array_equal(contrast, np.clip(image * 1.5, 0, 255).astype(np.uint8))
    # saturation and hue leave greys grey
    grey = np.repeat(_colourful()[..., :1], 3, axis=-1)
    hsv_only = photometric_distortion(grey, ScriptedRng([0.9, 0.9, 0.9, 0.1, 0.1], [1.4, 10.0]))
    np.testing.assert_array_equal(hsv_only, grey)


@pytest.mark.parametrize("kind", ["lsj", "semantic", "flip"])
def test_same_seed_same_output(kind):
    image, segments, categories = block_sample(30, 40, block=6)
    image = image ^ _colourful(1, (30, 40))
    config = AugmentConfig(kind=kind, crop_size=(32, 48), base_size=30, max_category_area=0.6)
    outputs = [augment(image, segments, categories, config, np.random.default_rng(s)) for s in (7, 7, 8, 9, 10)]
    for a, b in zip(outputs[0], outputs[1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(outputs[0][0], o[0]) for o in outputs[2:])
