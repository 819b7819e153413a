"""Sites: tiles grouped by footprint, site labels on every tile's grid, whole-site rasters."""

import json
from pathlib import Path

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_points

from data import sites
from data.config import ConversionConfig, SplitConfig
from data.convert import ShardPlan, run_conversion
from data.examples import decode_pair
from data.pairs import GeoPair, discover_pairs, validate
from tests.fixtures.geotiffs import PIXEL_DEGREES, make_pair, scene

SIZE = 64
UTM_23S = "EPSG:32723"


def _blob_mask(cy: int, cx: int, r: int = 6) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.uint8)[None]


def _origin(dx_pixels: float, dy_pixels: float = 0.0):
    return from_origin(
        -43.9 + dx_pixels * PIXEL_DEGREES,
        -19.9 - dy_pixels * PIXEL_DEGREES,
        PIXEL_DEGREES,
        PIXEL_DEGREES,
    )


@pytest.fixture
def one_site(tmp_path: Path) -> Path:
    """Three tiles of one site on slightly different grids (shifted 20.3 and 30.6 pixels),
    each labelling a different blob; and a tile far away, a site of its own."""
    img, msk = tmp_path / "img", tmp_path / "mask"
    # Tile 1 labels the blob at its (20, 40); tile 2, 20.3 px east, the blob at its (40, 15);
    # tile 3, 30.6 px east and 10.4 px south, the blob at its (40, 30).
    layout = {"1": (0.0, 0.0, (20, 40)), "2": (20.3, 0.0, (40, 15)), "3": (30.6, 10.4, (40, 30))}
    for pid, (dx, dy, (cy, cx)) in layout.items():
        image, _ = scene(SIZE, SIZE, seed=int(pid))
        make_pair(
            img,
            msk,
            pid,
            (SIZE, SIZE),
            transform=_origin(dx, dy),
            image=image,
            mask=_blob_mask(cy, cx),
        )
    make_pair(img, msk, "9", (SIZE, SIZE), seed=9)  # its own place (fixtures' `place`)
    return tmp_path


def _pairs(root: Path) -> dict[str, GeoPair]:
    return {s.pair_id: validate(s) for s in discover_pairs(root / "img", root / "mask")}


def _union_at_centres(tile: GeoPair, sources: list[GeoPair]) -> np.ndarray:
    """By hand: each pixel centre of `tile`'s grid is tailings if the pixel of any source tile
    that contains it is (nearest resampling, all grids north-up in degrees)."""
    a, _, c, _, e, f = tile.transform
    xs = c + a * (np.arange(SIZE) + 0.5)
    ys = f + e * (np.arange(SIZE) + 0.5)
    out = np.zeros((SIZE, SIZE), np.uint8)
    for src in sources:
        sa, _, sc, _, se, sf = src.transform
        cols = np.floor((xs - sc) / sa).astype(int)
        rows = np.floor((ys - sf) / se).astype(int)
        for i, row in enumerate(rows):
            for j, col in enumerate(cols):
                if 0 <= row < SIZE and 0 <= col < SIZE and src.mask[row, col]:
                    out[i, j] = 1
    return out


def test_overlapping_tiles_form_one_site_named_by_its_first_tile(one_site):
    plan = sites.plan_sites(discover_pairs(one_site / "img", one_site / "mask"))
    assert [(s.site_id, s.pair_ids) for s in plan.sites] == [
        ("site-1", ("1", "2", "3")),
        ("site-9", ("9",)),
    ]
    west, south, east, north = plan.sites[0].bounds
    assert west == pytest.approx(-43.9) and north == pytest.approx(-19.9)
    assert east == pytest.approx(-43.9 + (30.6 + SIZE) * PIXEL_DEGREES)


def test_site_ids_do_not_change_when_unrelated_pairs_come_and_go(one_site):
    before = sites.plan_sites(discover_pairs(one_site / "img", one_site / "mask")).site_of
    (one_site / "img" / "img_9.tif").unlink()
    (one_site / "mask" / "mask_9.tif").unlink()
    for pid in ("50", "12", "40"):
        make_pair(one_site / "img", one_site / "mask", pid, (SIZE, SIZE))
    after = sites.plan_sites(discover_pairs(one_site / "img", one_site / "mask")).site_of
    assert {p: after[p] for p in ("1", "2", "3")} == {p: before[p] for p in ("1", "2", "3")}
    assert after["50"] == "site-50" and after["12"] == "site-12"


def test_tiles_that_only_touch_are_two_sites(tmp_path):
    make_pair(tmp_path / "img", tmp_path / "mask", "1", (SIZE, SIZE), transform=_origin(0))
    make_pair(tmp_path / "img", tmp_path / "mask", "2", (SIZE, SIZE), transform=_origin(SIZE))
    make_pair(tmp_path / "img", tmp_path / "mask", "3", (SIZE, SIZE), transform=_origin(SIZE - 1))
    plan = sites.plan_sites(discover_pairs(tmp_path / "img", tmp_path / "mask"))
    # 1 and 2 share an edge only; 3 overlaps both by a column: one site through it.
    assert [s.pair_ids for s in plan.sites] == [("1", "2", "3")]
    (tmp_path / "img" / "img_3.tif").unlink()
    (tmp_path / "mask" / "mask_3.tif").unlink()
    plan = sites.plan_sites(discover_pairs(tmp_path / "img", tmp_path / "mask"))
    assert [s.pair_ids for s in plan.sites] == [("1",), ("2",)]


def test_the_union_of_three_blobs_lands_on_every_tiles_grid(one_site):
    pairs = _pairs(one_site)
    tiles = [pairs[p] for p in ("1", "2", "3")]
    labels = sites.site_labels(tiles)
    for tile in tiles:
        expected = _union_at_centres(tile, tiles)
        np.testing.assert_array_equal(labels[tile.pair_id], expected, err_msg=tile.pair_id)
        assert (labels[tile.pair_id] >= tile.mask).all()
        assert labels[tile.pair_id].sum() > tile.mask.sum()  # the others' blobs reach it


def test_a_site_spanning_two_crss_is_one_site_with_one_union(tmp_path):
    img, msk = tmp_path / "img", tmp_path / "mask"
    make_pair(img, msk, "1", (SIZE, SIZE), transform=_origin(0), mask=_blob_mask(32, 32))
    # Tile 2 in UTM 23S, 10 m pixels, its top-left 16 pixels into tile 1, labelling nothing.
    (x,), (y,) = warp_points(
        "EPSG:4326", UTM_23S, [-43.9 + 16 * PIXEL_DEGREES], [-19.9 - 16 * PIXEL_DEGREES]
    )
    make_pair(
        img,
        msk,
        "2",
        (SIZE, SIZE),
        crs=UTM_23S,
        transform=from_origin(x, y, 10, 10),
        mask=np.zeros((1, SIZE, SIZE), np.uint8),
    )
    plan = sites.plan_sites(discover_pairs(img, msk))
    assert [s.pair_ids for s in plan.sites] == [("1", "2")]
    pairs = _pairs(tmp_path)
    labels = sites.site_labels([pairs["1"], pairs["2"]])
    np.testing.assert_array_equal(labels["1"], pairs["1"].mask)
    # Tile 1's blob (radius 6 px around (32, 32)) is about 16 px in from tile 2's corner.
    assert 80 < labels["2"].sum() < 150
    rows, cols = np.nonzero(labels["2"])
    assert 10 < rows.mean() < 22 and 10 < cols.mean() < 22
    merged = sites.merge_site("site-1", [pairs["1"], pairs["2"]])
    assert CRS.from_wkt(merged.crs_wkt) == CRS.from_epsg(4326)
    assert merged.label.shape[0] > SIZE and merged.label.shape[1] > SIZE
    assert (merged.label == 255).any()  # corners no tile covers are no data


def test_a_merged_site_holds_the_source_pixels_and_the_union(one_site):
    pairs = _pairs(one_site)
    tiles = [pairs[p] for p in ("1", "2", "3")]
    merged = sites.merge_site("site-1", tiles)
    # Tile 1 anchors the grid: its pixels land unchanged at the origin.
    np.testing.assert_array_equal(merged.image[:SIZE, :SIZE], pairs["1"].image)
    assert merged.transform == pytest.approx(pairs["1"].transform)
    assert merged.label.shape == (SIZE + 11, SIZE + 31)
    # Every merged pixel with data holds some tile's pixel; outside the tiles, no data.
    valid = merged.label != 255
    values = {tuple(v) for t in tiles for v in t.image.reshape(-1, 3)}
    assert all(tuple(v) in values for v in merged.image[valid][::7])
    assert np.all(merged.image[~valid] == 0) and (~valid).sum() > 0
    # The union: three blobs; each tile labels one, so the others call it background.
    assert merged.votes_tailings.max() == 1
    agreement = merged.agreement
    assert agreement["union_pixels"] == int((merged.label == 1).sum())
    assert 0 < agreement["disputed_pixels"] <= agreement["union_pixels"]
    assert agreement["agreement"] == pytest.approx(
        1 - agreement["disputed_pixels"] / agreement["union_pixels"], abs=1e-4
    )


def test_site_windows_cover_the_site_once_with_its_georeference(one_site):
    pairs = _pairs(one_site)
    merged = sites.merge_site("site-1", [pairs[p] for p in ("1", "2", "3")])
    offset = sites.window_offset("site-1", seed=5, size=32)
    assert all(4 <= o < 28 for o in offset)
    covered = np.zeros(merged.label.shape, int)
    for window, site_id in sites.cut_site_windows(merged, 32, offset):
        assert site_id == "site-1" and window.pair_id.startswith("site-1_y")
        y, x = (int(p[1:]) for p in window.pair_id.split("_")[1:])
        assert y % 32 != 0 or x % 32 != 0
        a, b, c, d, e, f = merged.transform
        assert window.transform == pytest.approx((a, b, c + a * x, d, e, f + e * y))
        valid = window.mask != 255
        for r, col in zip(*np.nonzero(valid), strict=True):
            covered[y + r, x + col] += 1
            assert window.mask[r, col] == merged.label[y + r, x + col]
    np.testing.assert_array_equal(covered, (merged.label != 255).astype(int))


def test_conversion_writes_site_labels_and_records_every_site(one_site, tmp_path):
    out = tmp_path / "out"
    summary = run_conversion(
        str(one_site / "img"), str(one_site / "mask"), str(out), ConversionConfig(shards=2)
    )
    assert (summary.converted, summary.sites) == (4, 2)
    rows = [json.loads(x) for x in (out / "sites.jsonl").read_text().splitlines()]
    assert [(r["site"], r["tiles"], r["converted"]) for r in rows] == [
        ("site-1", ["1", "2", "3"], ["1", "2", "3"]),
        ("site-9", ["9"], ["9"]),
    ]
    assert 0 <= rows[0]["agreement"] < 1 and rows[1]["agreement"] == 1.0
    import tensorflow as tf

    files = sorted(str(p) for p in out.glob("*.tfrecord.gz"))
    written = {
        p.pair_id: p
        for p in map(decode_pair, tf.data.TFRecordDataset(files, "GZIP").as_numpy_iterator())
    }
    pairs = _pairs(one_site)
    labels = sites.site_labels([pairs[p] for p in ("1", "2", "3")])
    for pid in ("1", "2", "3"):
        assert written[pid].site_id == "site-1"
        np.testing.assert_array_equal(written[pid].mask, pairs[pid].mask)
        np.testing.assert_array_equal(written[pid].site_mask, labels[pid])
    np.testing.assert_array_equal(written["9"].site_mask, pairs["9"].mask)


def test_an_excluded_mask_joins_no_site_label(one_site, tmp_path):
    (one_site / "labels.yaml").write_text(
        "pairs:\n  - id: '2'\n    decision: exclude\n    reason: test\n"
    )
    from data.labels import load_exclusions

    excluded = load_exclusions(one_site)
    out = tmp_path / "out"
    summary = run_conversion(
        str(one_site / "img"),
        str(one_site / "mask"),
        str(out),
        ConversionConfig(shards=1),
        excluded=excluded,
    )
    assert summary.converted == 3
    import tensorflow as tf

    files = sorted(str(p) for p in out.glob("*.tfrecord.gz"))
    written = {
        p.pair_id: p
        for p in map(decode_pair, tf.data.TFRecordDataset(files, "GZIP").as_numpy_iterator())
    }
    pairs = _pairs(one_site)
    expected = sites.site_labels([pairs["1"], pairs["3"]])
    np.testing.assert_array_equal(written["1"].site_mask, expected["1"])
    # Tile 2 still marks its ground: its site is the same place.
    assert written["1"].site_id == written["3"].site_id == "site-1"


def test_a_sites_tiles_share_one_split(one_site):
    specs = discover_pairs(one_site / "img", one_site / "mask")
    plan = sites.plan_sites(specs)
    split = SplitConfig()
    shard_plan = ShardPlan(shards=2, splits=split.splits, sites=dict(plan.site_of))
    assert len({shard_plan.key(p) for p in ("1", "2", "3")}) == 1  # one split and one shard


@pytest.mark.realdata
def test_no_eval_tile_or_fold_shares_ground_with_another_side(real_data):
    """On the shared data: footprints of tiles on two sides of the train/eval split, or in two
    folds, never intersect (checked on the footprints, not through the site ids)."""
    from components.cross_validation import fold_of

    specs = discover_pairs(real_data / "img", real_data / "mask")
    plan = sites.plan_sites(specs)
    assert len(plan.sites) == 41
    split = SplitConfig()
    shard_plan = ShardPlan(shards=split.shards, splits=split.splits, sites=dict(plan.site_of))
    footprints = {s.pair_id: sites.read_footprint(s) for s in specs}
    side = {pid: shard_plan.key(pid)[0] for pid in footprints}
    fold = {pid: fold_of(plan.site_of[pid], 4) for pid in footprints}
    assert set(side.values()) == {"train", "eval"} and len(set(fold.values())) == 4
    ids = sorted(footprints)
    overlaps = 0
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            if sites._overlap(footprints[a], footprints[b]):
                overlaps += 1
                assert side[a] == side[b] and fold[a] == fold[b], (a, b)
    assert overlaps > 50
