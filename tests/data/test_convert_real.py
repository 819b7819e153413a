"""The study's real pairs: 90 converted, img_23 rejected, pixels equal to rasterio's read."""

import json

import numpy as np
import pytest

from data.config import ConversionConfig
from data.convert import run_conversion
from data.reader import read_dataset
from tests.fixtures.geotiffs import read_pixels


@pytest.mark.realdata
@pytest.mark.slow
def test_real_pairs_convert_exactly(real_data, tmp_path):
    summary = run_conversion(
        str(real_data / "img"), str(real_data / "mask"), str(tmp_path), ConversionConfig()
    )
    assert (summary.pairs_found, summary.converted, summary.rejected) == (91, 90, 1)
    (row,) = [json.loads(x) for x in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert row["id"] == "23" and row["reason"] == "shape_mismatch"
    assert "48x448" in row["detail"]
    seen = set()
    for pair_id, image, mask in read_dataset(tmp_path, with_ids=True).as_numpy_iterator():
        pair_id = pair_id.decode()
        seen.add(pair_id)
        source = read_pixels(real_data / "img" / f"img_{pair_id}.tif")
        np.testing.assert_array_equal(image, np.transpose(source, (1, 2, 0)))
        np.testing.assert_array_equal(
            mask, read_pixels(real_data / "mask" / f"mask_{pair_id}.tif")[0]
        )
    assert len(seen) == 90 and "23" not in seen
