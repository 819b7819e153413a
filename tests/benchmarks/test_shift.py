"""benchmarks/shift.py's window arithmetic and scores, on small synthetic arrays (no TensorFlow)."""

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shift

from components import cross_validation
from schemas.features import MASK_NODATA

T = 8


@pytest.fixture
def tile() -> tuple[np.ndarray, np.ndarray]:
    """An image whose every pixel is unique, and a mask with a block off-centre."""
    image = np.arange(T * T * 3, dtype=np.float32).reshape(T, T, 3)
    mask = np.zeros((T, T, 1), np.float32)
    mask[1:3, 5:8] = 1
    return image, mask


def test_importing_the_benchmark_does_not_import_tensorflow() -> None:
    """Paths and flags are checked before TensorFlow loads (a fresh interpreter: in this one
    other tests may have imported it already)."""
    benchmarks = Path(shift.__file__).parent
    code = "import sys, shift; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=benchmarks, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_offsets_are_the_four_diagonals_and_zero_once() -> None:
    assert shift.offsets(0) == [(0, 0)]
    assert sorted(shift.offsets(3)) == [(-3, -3), (-3, 3), (3, -3), (3, 3)]


def test_shift_zero_is_the_tile_itself(tile) -> None:
    image, mask = tile
    [(offset, win_image, win_mask)] = shift.shifted_windows(image, mask, 0)
    assert offset == (0, 0)
    np.testing.assert_array_equal(win_image, image)
    np.testing.assert_array_equal(win_mask, mask)


def test_shifted_window_is_the_mirrored_canvas_region(tile) -> None:
    image, mask = tile
    d = 3
    canvas = np.pad(image, ((T, T), (T, T), (0, 0)), mode="symmetric")
    assert canvas.shape == (3 * T, 3 * T, 3)
    windows = shift.shifted_windows(image, mask, d)
    assert len(windows) == 4
    for (dy, dx), win_image, _ in windows:
        np.testing.assert_array_equal(win_image, canvas[T + dy : 2 * T + dy, T + dx : 2 * T + dx])
    # By hand, (+d, +d): the tile's rows/columns d.. then their mirror (the last one repeated).
    (_, down_right, _) = next(w for w in windows if w[0] == (d, d))
    rows = list(range(d, T)) + list(range(T - 1, T - 1 - d, -1))
    np.testing.assert_array_equal(down_right, image[rows][:, rows])
    # (-d, -d): the mirror of the first d rows/columns, then the tile.
    (_, up_left, _) = next(w for w in windows if w[0] == (-d, -d))
    rows = list(range(d - 1, -1, -1)) + list(range(0, T - d))
    np.testing.assert_array_equal(up_left, image[rows][:, rows])


def test_mask_and_image_shift_together(tile) -> None:
    image, mask = tile
    # Tag each image pixel with its mask: the window's tag must match the window's mask.
    tagged = image.copy()
    tagged[..., 0] = mask[..., 0] * 1000 + np.arange(T * T).reshape(T, T)
    for d in (0, 2, 5, T):
        for _, win_image, win_mask in shift.shifted_windows(tagged, mask, d):
            np.testing.assert_array_equal(win_image[..., 0] >= 1000, win_mask[..., 0] == 1)
            assert win_image.shape == (T, T, 3) and win_mask.shape == (T, T, 1)


def test_shift_beyond_a_tile_is_refused(tile) -> None:
    with pytest.raises(ValueError, match="outside"):
        shift.shifted_windows(*tile, T + 1)


def test_pooled_scores_by_hand() -> None:
    truth = np.zeros((3, 2, 2), np.uint8)
    probabilities = np.zeros((3, 2, 2), np.float32)
    # Window 0: truth 2 px, predicted 1 of them + 1 false positive: I 1, U 3.
    truth[0, 0] = 1
    probabilities[0, 0, 0] = 0.9
    probabilities[0, 1, 1] = 0.5  # at the threshold counts as tailings
    # Window 1: truth 1 px, predicted nothing (0.49 is below): I 0, U 1.
    truth[1, 1, 1] = 1
    probabilities[1, 1, 1] = 0.49
    # Window 2: nothing true, nothing predicted: empty union, its own IoU counts as 1.
    s = shift.pooled_scores(probabilities, truth)
    assert s["iou"] == pytest.approx(1 / 4)  # pooled: sums, not the mean of windows
    assert s["mean_window_iou"] == pytest.approx((1 / 3 + 0 + 1) / 3)
    assert s["pixel_accuracy"] == pytest.approx(9 / 12)  # 2 fp/fn + 1 fn wrong
    assert s["all_background_accuracy"] == pytest.approx(9 / 12)
    assert s["windows"] == 3 and s["pixels"] == 12


def test_pooled_scores_count_valid_pixels_only() -> None:
    truth = np.array([[[1, 0], [0, 0]]], np.uint8)
    probabilities = np.array([[[0.9, 0.9], [0.9, 0.1]]], np.float32)
    valid = np.array([[[True, True], [False, True]]])  # the false positive at (1, 0) is no data
    s = shift.pooled_scores(probabilities, truth, valid)
    assert s["iou"] == pytest.approx(1 / 2)
    assert s["pixel_accuracy"] == pytest.approx(2 / 3)
    assert s["all_background_accuracy"] == pytest.approx(2 / 3)
    assert s["pixels"] == 3


def result_entry(**fields) -> dict:
    """One model's entry of shift.json, as `main` writes it; `fields` replace the results."""
    return {
        "model_dir": "/m",
        "commit": "abc1234",
        "date": "2026-01-01T00:00:00+00:00",
        "machine": {"quiet": True, "load_average": [0.1, 0.1, 0.1]},
        "seconds": 1.0,
        **fields,
    }


def test_results_merge_by_model_name(tmp_path) -> None:
    out = tmp_path / "shift.json"
    entry = result_entry(
        shift_curve={str(d): {"iou": 0.4 / (1 + d)} for d in shift.SHIFTS},
        ratios={"128": 0.1, "224": 0.0},
        scene={"iou": 0.05, "pixel_accuracy": 0.9, "all_background_accuracy": 0.92},
    )
    out.write_text(json.dumps(shift.merged(out, {"old_default": entry})))
    results = shift.merged(out, {"new_default": entry})
    assert list(results["models"]) == ["old_default", "new_default"]
    table = shift.markdown(results)
    assert "| old_default | 0.400 |" in table and "| new_default |" in table


# ---------------------------------------------------------------- whole mosaics by overlap
@pytest.fixture
def eval_tiles() -> cross_validation.Split:
    """5 tiles of T x T (one 3 x 2 mosaic with an empty cell); tailings where B4 > 0.5.

    A placeholder georeference: only pixels are scored."""
    from data.pairs import GeoPair

    rng = np.random.default_rng(3)
    images = rng.uniform(0.0, 1.0, (5, T, T, 3)).astype(np.float32)
    pairs = [
        GeoPair(
            f"p{k}",
            images[k],
            (images[k, ..., 2] > 0.5).astype(np.uint8),
            ("B2", "B3", "B4"),
            "",
            0,
            (1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
        )
        for k in range(5)
    ]
    return cross_validation.stack(pairs)


@dataclasses.dataclass
class PixelModel:
    """Per pixel: probability 0.9 where B4 > 0.5, else 0.1; remembers every window it saw."""

    tile: int = T
    source: str = "pixelwise"
    seen: list = dataclasses.field(default_factory=list)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        self.seen.extend(tiles)
        return np.where(tiles[..., 2] > 0.5, 0.9, 0.1)


def test_parse_overlaps() -> None:
    assert shift.parse_overlaps("0,64,128") == (0, 64, 128)
    assert shift.parse_overlaps("") == ()
    for bad in ("a", "64,-1", "0,0"):
        with pytest.raises(argparse.ArgumentTypeError):
            shift.parse_overlaps(bad)


def test_whole_mosaic_at_overlap_0_is_cut_into_the_scene_windows(eval_tiles, tmp_path) -> None:
    from data.scenes import cut_windows
    from serving.config import PredictConfig
    from serving.predict import predict_scene

    [mosaic], tiles = cross_validation.mosaic_plan(eval_tiles)
    assert (mosaic.rows, mosaic.cols, len(mosaic.pair_ids)) == (2, 3, 5)
    image, truth = shift.mosaic_pixels(mosaic, tiles)
    path = shift.write_mosaic(tmp_path / "mosaic.tif", image)
    model = PixelModel()
    predict_scene(path, model, tmp_path / "mask.tif", PredictConfig(tile=T, overlap=0))
    # predict_scene's windows, row by row, with no data as 0; the scene split drops empty ones.
    size = T
    origins = [
        (y, x) for y in range(0, truth.shape[0], size) for x in range(0, truth.shape[1], size)
    ]
    assert len(model.seen) == len(origins)
    kept = [
        (seen, truth[y : y + size, x : x + size])
        for seen, (y, x) in zip(model.seen, origins, strict=True)
        if (truth[y : y + size, x : x + size] != MASK_NODATA).any()
    ]
    windows = list(cut_windows(mosaic, tiles))
    assert len(kept) == len(windows)
    for (seen, mask), window in zip(kept, windows, strict=True):
        np.testing.assert_array_equal(seen, window.image)
        np.testing.assert_array_equal(mask, window.mask)


def test_predict_by_overlap_scores_the_whole_mosaics(eval_tiles, tmp_path) -> None:
    from components.blending import window_starts

    mosaics, tiles = cross_validation.mosaic_plan(eval_tiles)
    out = shift.predict_by_overlap(PixelModel(), mosaics, tiles, (0, 2, 4), 3, tmp_path)
    assert list(out) == ["0", "2", "4"]
    height, width = shift.mosaic_pixels(mosaics[0], tiles)[1].shape
    for overlap, s in out.items():
        # A pixelwise model is exact whatever the windows: every valid pixel right.
        assert s["iou"] == 1.0 and s["pixel_accuracy"] == 1.0
        assert s["pixels"] == 5 * T * T and s["mosaics"] == 1
        stride = T - int(overlap)
        rows, cols = window_starts(height, T, stride), window_starts(width, T, stride)
        assert s["windows"] == len(rows) * len(cols)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mosaic000.tif"]


def test_markdown_shows_the_overlap_table_for_models_that_have_one() -> None:
    scores = {"iou": 0.1, "pixel_accuracy": 0.9, "all_background_accuracy": 0.92}
    entry = result_entry(shift_curve={"0": {"iou": 0.4}}, ratios={"128": 0.1}, scene=scores)
    with_overlaps = dict(
        entry, predict_by_overlap={"64": dict(scores, iou=0.25, windows=45, seconds=12.5)}
    )
    table = shift.markdown({"models": {"old": entry, "new": with_overlaps}})
    assert "| new | 64 | 45 | 0.250 | 0.900 | 0.920 | 12.5 |" in table
    assert "| old | 64 |" not in table
    assert "by overlap" not in shift.markdown({"models": {"old": entry}})
