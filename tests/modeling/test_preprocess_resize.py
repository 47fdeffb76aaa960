"""``resized_size`` (used by the anchor analysis) equals the output size of the preprocessor's resize."""
from __future__ import annotations

import pytest
import torch

from retinakit.modeling.meta_arch.preprocess import ImagePreprocessor, resized_size


@pytest.mark.parametrize("min_size,max_size", [(200, 400), (256, 333), (97, 1000), (0, 400)])
def test_resized_size_is_the_interpolated_size(min_size, max_size):
    pre = ImagePreprocessor([0.0], [1.0], 32, resize=True, min_size_test=min_size, max_size_test=max_size)
    g = torch.Generator().manual_seed(min_size + max_size)
    sizes = [*torch.randint(20, 500, (40, 2), generator=g).tolist(), [min_size or 50, 300], [199, 401], [333, 333]]
    for h, w in sizes:
        out = pre.resize_image(torch.zeros(1, h, w), training=False)
        assert resized_size(h, w, min_size, max_size) == tuple(out.shape[-2:]), (h, w)
