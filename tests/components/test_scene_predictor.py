"""The ScenePredictor's logic: eval sites put back together from the scene split's windows,
predicted whole with `tailings predict`'s blending, cut back into the same windows."""

import numpy as np
import pytest
import tensorflow as tf

from components import blending
from components import scene_predictor_lib as lib
from data import scenes
from data.config import SceneConfig
from data.examples import to_example
from data.pairs import GeoPair
from data.sites import merge_site
from schemas.features import MASK_NODATA

SIZE = 32
ORIGIN = (8.93e-5, 0.0, -43.9, 0.0, -8.93e-5, -19.9)


def tile(pair_id: str, rows: int, cols: int, seed: int) -> GeoPair:
    """A tile of random reflectance with a facility, `rows`/`cols` pixels off the origin."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.01, 0.3, (SIZE, SIZE, 3)).astype(np.float32)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:20, 6:18] = 1
    transform = scenes.shifted(ORIGIN, rows=rows, cols=cols)
    return GeoPair(pair_id, image, mask, ("B2", "B3", "B4"), "EPSG:4326", 4326, transform)


def site_windows(site_id: str, tiles: list[GeoPair], seed: int = 3) -> list[bytes]:
    plan = scenes.plan_site_scenes({site_id: [t.pair_id for t in tiles]}, SIZE, SceneConfig(seed))
    return [to_example(w).SerializeToString() for w in scenes.scene_windows(plan[0], tiles, SIZE)]


@pytest.fixture
def two_sites() -> tuple[list[bytes], dict[str, list[GeoPair]]]:
    site_a = [tile("1", 0, 0, 1), tile("2", 11, 19, 2)]  # two overlapping tiles: one place
    site_b = [tile("3", 0, 5000, 3)]  # far away
    windows = site_windows("site-1", site_a) + site_windows("site-3", site_b)
    return windows, {"site-1": site_a, "site-3": site_b}


def pixelwise(tiles: np.ndarray) -> np.ndarray:
    """A model whose answer at a pixel depends on that pixel alone (so blending, a weighted
    mean of identical answers, must give it back exactly)."""
    return np.clip(tiles[..., 2] * 3.0, 0.0, 1.0).astype(np.float32)


def test_sites_are_put_back_together_from_their_windows(two_sites):
    windows, tiles = two_sites
    canvases = lib.assemble_sites(windows)
    assert [c.site_id for c in canvases] == ["site-1", "site-3"]
    for canvas in canvases:
        merged = merge_site(canvas.site_id, tiles[canvas.site_id])
        # The canvas holds the merged site somewhere inside it, pixel for pixel.
        valid = merged.label != MASK_NODATA
        found = False
        h, w = merged.label.shape
        for dy in range(canvas.image.shape[0] - h + 1):
            for dx in range(canvas.image.shape[1] - w + 1):
                part = canvas.image[dy : dy + h, dx : dx + w]
                if np.array_equal(part[valid], merged.image[valid]):
                    found = True
        assert found, canvas.site_id
        for window in canvas.windows:  # every window cut back is the window it came from
            np.testing.assert_array_equal(
                canvas.cut(canvas.image, window)[window.label != MASK_NODATA],
                window.image[window.label != MASK_NODATA],
            )


def test_blended_predictions_of_a_pixelwise_model_are_its_answers(two_sites):
    windows, _tiles = two_sites
    canvases = lib.assemble_sites(windows)
    records = list(lib.predicted_examples(canvases, {lib.PREDICTION: pixelwise}, SIZE, overlap=8))
    assert len(records) == len(windows)
    for record in records:
        f = tf.train.Example.FromString(record).features.feature
        label = np.array(f[lib.LABEL].float_list.value).reshape(SIZE, SIZE)
        prediction = np.array(f[lib.PREDICTION].float_list.value).reshape(SIZE, SIZE)
        assert set(f) == {*lib.KEPT_FEATURES, lib.LABEL, lib.PREDICTION}
        valid = label != MASK_NODATA
        assert valid.any()
        pair_id = f["pair_id"].bytes_list.value[0].decode()
        source = next(
            w for w in map(tf.train.Example.FromString, windows)
            if w.features.feature["pair_id"].bytes_list.value[0].decode() == pair_id
        )  # fmt: skip
        image = np.frombuffer(source.features.feature["image"].bytes_list.value[0], "<f4")
        expected = pixelwise(image.reshape(1, SIZE, SIZE, 3))[0]
        np.testing.assert_allclose(prediction[valid], expected[valid], rtol=1e-5)


def test_a_window_near_its_edge_is_answered_by_the_neighbour_as_predict_does(two_sites):
    """A model that is unsure at its input's border: scored window by window, every window's
    border is unsure; predicted whole, only the site's own border is."""
    windows, _tiles = two_sites
    canvases = lib.assemble_sites(windows)

    def border_blind(tiles: np.ndarray) -> np.ndarray:
        out = np.ones(tiles.shape[:3], np.float32)
        out[:, :4], out[:, -4:], out[:, :, :4], out[:, :, -4:] = 0.5, 0.5, 0.5, 0.5
        return out

    site = canvases[0]
    blended = blending.blend_scene(site.image, border_blind, SIZE, overlap=16)
    inner = blended[8:-8, 8:-8]
    assert (np.abs(inner - 1.0) < 0.01).all()  # a neighbour with context answered there
    records = list(lib.predicted_examples([site], {lib.PREDICTION: border_blind}, SIZE, 16))
    for record, window in zip(records, site.windows, strict=True):
        f = tf.train.Example.FromString(record).features.feature
        prediction = np.array(f[lib.PREDICTION].float_list.value).reshape(SIZE, SIZE)
        np.testing.assert_array_equal(prediction, site.cut(blended, window))


def test_windows_off_the_site_grid_are_refused(two_sites):
    windows, _tiles = two_sites
    moved = tf.train.Example.FromString(windows[1])
    transform = moved.features.feature["transform"].float_list.value
    transform[2] += 0.5 * ORIGIN[0]  # half a pixel east
    with pytest.raises(lib.SceneAssemblyError, match="not on its grid"):
        lib.assemble_sites([windows[0], moved.SerializeToString()])


def test_schema_gives_label_and_predictions_their_tile_shape():
    schema = lib.prediction_schema(SIZE, [lib.PREDICTION, lib.BASELINE_PREDICTION])
    shapes = {f.name: [d.size for d in f.shape.dim] for f in schema.feature}
    assert shapes[lib.LABEL] == shapes[lib.PREDICTION] == [SIZE, SIZE]
    assert shapes[lib.BASELINE_PREDICTION] == [SIZE, SIZE]
    assert shapes["transform"] == [6]
