"""benchmarks/quality.py's scores of whole blended sites, on small synthetic sites."""

import numpy as np
import quality

from data.sites import SiteRaster
from schemas import features as F
from schemas.features import MASK_NODATA
from tests.components.synthetic import UTM_23S_WKT

S = 40  # 10-m pixels: a 10 x 10 block is 1 ha, over the 0.5 ha a facility needs


def site(label: np.ndarray) -> SiteRaster:
    h, w = label.shape
    zeros = np.zeros((h, w), np.uint8)
    return SiteRaster(
        "site-0", ("0",), np.zeros((h, w, 3), np.float32), label, zeros, zeros,
        UTM_23S_WKT.decode(), 32723, (10.0, 0.0, 500000.0, 0.0, -10.0, 7000000.0), F.BAND_ORDER,
    )  # fmt: skip


def test_site_scores_pool_pixels_and_count_facilities_per_whole_site() -> None:
    label = np.zeros((S, S), np.uint8)
    label[:10, :10] = 1  # a 1 ha facility, found
    label[30:, 30:] = 1  # another, missed
    label[:, 20] = MASK_NODATA  # a column without data: scored nowhere
    probabilities = np.zeros((S, S), np.float32)
    probabilities[:10, :10] = 0.8
    probabilities[20:30, :10] = 0.6  # a 1 ha false alarm, only above 0.5
    probabilities[:, 20] = 1.0  # no data: not a prediction
    scores = quality.site_scores([(site(label), probabilities)])
    at_half, at_seven = scores["0.50"], scores["0.70"]
    assert at_half["facilities"] == at_seven["facilities"] == 2
    assert at_half["facility_recall"] == at_seven["facility_recall"] == 0.5
    assert at_half["predicted_regions"] == 2 and at_half["facility_precision"] == 0.5
    assert at_seven["predicted_regions"] == 1 and at_seven["facility_precision"] == 1.0
    assert at_seven["iou"] == 100 / 200
    assert at_half["iou"] == 100 / 300
    valid = S * S - S
    assert at_seven["pixel_accuracy"] == (valid - 100) / valid
