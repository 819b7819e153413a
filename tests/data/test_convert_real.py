"""The shared real pairs: 87 of 88 converted in 41 sites, img_23 rejected, pixels equal to
rasterio's read, site labels holding every tile's own mask."""

import json

import numpy as np
import pytest
import tensorflow as tf

from data.config import ConversionConfig
from data.convert import run_conversion
from data.examples import decode_pair
from data.reader import read_dataset
from tests.fixtures.geotiffs import read_pixels


@pytest.mark.realdata
@pytest.mark.slow
def test_real_pairs_convert_exactly(real_data, tmp_path):
    summary = run_conversion(
        str(real_data / "img"), str(real_data / "mask"), str(tmp_path), ConversionConfig()
    )
    assert (summary.pairs_found, summary.converted, summary.rejected) == (88, 87, 1)
    assert summary.sites == 41
    sites = [json.loads(x) for x in (tmp_path / "sites.jsonl").read_text().splitlines()]
    assert len(sites) == 41 and max(len(s["tiles"]) for s in sites) == 7
    assert sum(len(s["converted"]) for s in sites) == 87
    (row,) = [json.loads(x) for x in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert row["id"] == "23" and row["reason"] == "shape_mismatch"
    assert "48x448" in row["detail"]
    seen = set()
    own = union = 0
    for raw in tf.data.TFRecordDataset(
        sorted(str(p) for p in tmp_path.glob("*.tfrecord.gz")), compression_type="GZIP"
    ).as_numpy_iterator():
        pair = decode_pair(raw)
        assert (pair.site_label >= pair.mask).all()  # the union holds the tile's own mask
        own, union = own + int(pair.mask.sum()), union + int(pair.site_label.sum())
    # Measured: the site labels hold 1.55 x the tailings pixels of the tiles' own masks.
    assert 1.5 < union / own < 1.6
    for pair_id, image, mask in read_dataset(tmp_path, with_ids=True).as_numpy_iterator():
        pair_id = pair_id.decode()
        seen.add(pair_id)
        source = read_pixels(real_data / "img" / f"img_{pair_id}.tif")
        np.testing.assert_array_equal(image, np.transpose(source, (1, 2, 0)))
        np.testing.assert_array_equal(
            mask, read_pixels(real_data / "mask" / f"mask_{pair_id}.tif")[0]
        )
    assert len(seen) == 87 and "23" not in seen
