"""Error maps: false positives and negatives coloured over the RGB, no data grey."""

import numpy as np

from pipeline.reports import overlays
from schemas.features import MASK_NODATA


def test_each_kind_of_pixel_gets_its_colour():
    rgb = np.zeros((2, 3, 3))
    mask = np.array([[1, 1, 0], [0, MASK_NODATA, 0]], np.uint8)
    prob = np.array([[0.9, 0.1, 0.9], [0.1, 0.9, 0.5]], np.float32)
    out = overlays.error_rgb(rgb, mask, prob)
    blend = [round(overlays.ALPHA * c) for c in overlays.TRUE_POSITIVE]
    assert out[0, 0].tolist() == blend  # found
    assert out[0, 1].tolist() == [round(overlays.ALPHA * c) for c in overlays.FALSE_NEGATIVE]
    assert out[0, 2].tolist() == [round(overlays.ALPHA * c) for c in overlays.FALSE_POSITIVE]
    assert out[1, 0].tolist() == [0, 0, 0]  # background, predicted background
    assert out[1, 1].tolist() == list(overlays.NODATA)  # no data, whatever was predicted
    assert out[1, 2].tolist() == [0, 0, 0]  # 0.5 is not above the threshold


def test_thumbnail_keeps_at_most_the_size():
    image = np.arange(448 * 448 * 3, dtype=np.uint8).reshape(448, 448, 3)
    assert overlays.thumbnail(image, 224).shape == (224, 224, 3)
    assert overlays.thumbnail(image[:100, :100], 224).shape == (100, 100, 3)
    assert overlays.png(image[:8, :8]).startswith(b"\x89PNG")
