"""The scene split's construction: eval sites merged and cut into windows off the tile grid;
the tile mosaics `benchmarks/shift.py` still uses."""

import numpy as np
import pytest

from data import scenes
from data.config import SceneConfig
from data.examples import summary
from data.pairs import GeoPair
from schemas.features import MASK_NODATA

SIZE = 32
ORIGIN = (8.93e-5, 0.0, -43.9, 0.0, -8.93e-5, -19.9)


def tile(pair_id: str, value: float) -> GeoPair:
    """A tile whose pixels all hold `value` (so a window shows where each pixel came from)."""
    image = np.full((SIZE, SIZE, 3), value, np.float32)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[10:20, 12:22] = 1
    k = int(pair_id)
    transform = scenes.shifted(ORIGIN, rows=0, cols=1000 * k)  # tiles far apart on the ground
    return GeoPair(pair_id, image, mask, ("B2", "B3", "B4"), "EPSG:4326", 4326, transform)


@pytest.fixture
def tiles() -> dict[str, GeoPair]:
    return {str(k): tile(str(k), 0.01 * (k + 1)) for k in range(7)}


def test_plan_is_deterministic_and_offsets_never_align(tiles):
    cfg = SceneConfig(seed=3)
    first = scenes.plan_mosaics(list(tiles), SIZE, cfg, tiles_per_mosaic=4)
    again = scenes.plan_mosaics(list(reversed(list(tiles))), SIZE, cfg, tiles_per_mosaic=4)
    assert first == again
    assert [len(m.pair_ids) for m in first] == [4, 3]
    assert sorted(pid for m in first for pid in m.pair_ids) == sorted(tiles)
    for mosaic in first:
        for y, x in mosaic.window_origins(SIZE):
            assert y % SIZE != 0 and x % SIZE != 0  # no window edge on a tile edge
    other = scenes.plan_mosaics(list(tiles), SIZE, SceneConfig(seed=4), tiles_per_mosaic=4)
    assert other != first


def test_windows_cover_every_tile_pixel_and_mark_nodata(tiles):
    cfg = SceneConfig(seed=1)
    for mosaic in scenes.plan_mosaics(list(tiles), SIZE, cfg, tiles_per_mosaic=4):
        windows = list(scenes.cut_windows(mosaic, tiles))
        assert windows and all(w.image.shape == (SIZE, SIZE, 3) for w in windows)
        # Put every window back at its origin: each tile pixel must be covered exactly once.
        covered = np.zeros((mosaic.rows * SIZE, mosaic.cols * SIZE), int)
        labelled = np.zeros_like(covered)
        for window in windows:
            y, x = (int(part[1:]) for part in window.pair_id.split("_")[1:])
            valid = window.mask != MASK_NODATA
            for r, c in zip(*np.nonzero(valid), strict=True):
                covered[y + r, x + c] += 1
                labelled[y + r, x + c] = window.mask[r, c]
                # the pixel holds the value of the tile laid at that cell of the mosaic
                k = ((y + r) // SIZE) * mosaic.cols + (x + c) // SIZE
                assert window.image[r, c, 0] == tiles[mosaic.pair_ids[k]].image[0, 0, 0]
            assert np.all(window.image[~valid] == 0)
        for k, pid in enumerate(mosaic.pair_ids):
            r, c = mosaic.cell(k)
            cells = np.s_[r * SIZE : (r + 1) * SIZE, c * SIZE : (c + 1) * SIZE]
            assert np.all(covered[cells] == 1), pid
            np.testing.assert_array_equal(labelled[cells], tiles[pid].mask)
        empty = len(mosaic.pair_ids)
        if empty < mosaic.rows * mosaic.cols:  # a grid cell without a tile is never data
            r, c = mosaic.cell(empty)
            assert not covered[r * SIZE : (r + 1) * SIZE, c * SIZE : (c + 1) * SIZE].any()


def test_window_takes_the_georeference_of_its_main_tile(tiles):
    mosaic = scenes.Mosaic(0, ("3", "5"), cols=2, offset=(4, 10))
    windows = {w.pair_id: w for w in scenes.cut_windows(mosaic, tiles)}
    # Window at (-4, 22): columns 22..31 from tile "3", 32..53 from tile "5" -> tile "5" wins.
    window = windows[scenes.window_id(mosaic, -4, 22)]
    a, b, c, d, e, f = tiles["5"].transform
    assert window.transform == pytest.approx((a, b, c + a * (22 - SIZE), d, e, f + e * -4))
    # Its valid statistics leave the no-data rows out.
    stats = summary(window)
    assert stats["band_min"][0] == pytest.approx(tiles["3"].image[0, 0, 0])
    valid = window.mask != MASK_NODATA
    assert stats["tailings_fraction"] == pytest.approx(window.mask[valid].mean())


def test_tiles_of_different_sizes_are_refused(tiles):
    odd = GeoPair(
        "9",
        np.zeros((16, 16, 3), np.float32),
        np.zeros((16, 16), np.uint8),
        ("B2", "B3", "B4"),
        "EPSG:4326",
        4326,
        ORIGIN,
    )
    mosaic = scenes.Mosaic(0, ("1", "9"), cols=2, offset=(4, 4))
    with pytest.raises(ValueError, match="one size"):
        list(scenes.cut_windows(mosaic, {**tiles, "9": odd}))


def test_site_scenes_depend_on_each_site_alone_and_carry_its_id(tiles):
    cfg = SceneConfig(seed=3)
    plan = scenes.plan_site_scenes({"site-5": ["5"], "site-3": ["3", "4"], "site-9": []}, SIZE, cfg)
    assert [(s.site_id, s.pair_ids) for s in plan] == [("site-3", ("3", "4")), ("site-5", ("5",))]
    alone = scenes.plan_site_scenes({"site-5": ["5"]}, SIZE, cfg)
    assert alone[0] == plan[1]  # other sites do not move a site's windows
    windows = list(scenes.scene_windows(plan[1], [tiles["5"]], SIZE))
    assert len(windows) == 4  # one tile on a shifted grid: four windows share it
    for window in windows:
        assert window.site_id == "site-5" and window.pair_id.startswith("site-5_y")
        np.testing.assert_array_equal(window.site_label, window.mask)
    assert sum(int((w.mask != MASK_NODATA).sum()) for w in windows) == SIZE * SIZE
