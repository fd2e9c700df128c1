"""Bilinear resizing against torch.nn.functional.interpolate(align_corners=False)."""

import numpy as np
import pytest

from m2f_jax.modeling.resize import resize_bilinear

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("size", [(12, 12), (7, 5), (40, 61), (13, 30), (1, 1)])
def test_matches_torch(size):
    x = np.random.RandomState(0).randn(2, 3, 13, 30).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False)
    ours = resize_bilinear(x, size, spatial_axes=(2, 3))
    np.testing.assert_allclose(ours, expected.numpy(), atol=1e-5)
