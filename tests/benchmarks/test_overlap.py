"""benchmarks/overlap.py on fixture tiles whose footprints are known."""

import json

import overlap
from rasterio.coords import BoundingBox
from rasterio.transform import from_origin

from tests.fixtures.geotiffs import PIXEL_DEGREES, make_pair


def test_overlap_share_is_the_intersection_over_one_tile():
    a = BoundingBox(0.0, 0.0, 10.0, 10.0)
    assert overlap.overlap_share(a, BoundingBox(5.0, 0.0, 15.0, 10.0)) == 0.5
    assert overlap.overlap_share(a, BoundingBox(5.0, 5.0, 15.0, 15.0)) == 0.25
    assert overlap.overlap_share(a, BoundingBox(10.0, 0.0, 20.0, 10.0)) == 0.0  # edges touch
    assert overlap.overlap_share(a, BoundingBox(20.0, 0.0, 30.0, 10.0)) == 0.0


def test_main_finds_the_overlapping_tiles_and_their_splits(tmp_path):
    images, masks = tmp_path / "img", tmp_path / "mask"
    step = 32 * PIXEL_DEGREES  # half a 64-px tile
    origins = {"1": (-43.9, -19.9), "2": (-43.9 + step, -19.9), "3": (-40.0, -19.9)}
    for i, (pair_id, (x, y)) in enumerate(origins.items()):
        transform = from_origin(x, y, PIXEL_DEGREES, PIXEL_DEGREES)
        make_pair(images, masks, pair_id, seed=i, transform=transform)
    out = tmp_path / "overlap.json"
    assert overlap.main(["--data", str(tmp_path), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["tiles"] == 3 and result["overlapping_pairs"] == 1
    [row] = result["pairs"]
    assert (row["a"], row["b"]) == ("1", "2") and abs(row["share"] - 0.5) < 1e-6
    assert "| 1 | 2 | 0.50 |" in out.with_suffix(".md").read_text()
