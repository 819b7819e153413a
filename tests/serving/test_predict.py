"""`tailings predict`: windows, blending, georeferenced COG outputs, areas, both model paths."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.transform import Affine, from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from scipy import ndimage

from components.blending import EDGE_WEIGHT, blend_weights, window_starts
from data.geo import pixel_areas
from serving.config import PredictConfig
from serving.predict import (
    LocalModel,
    PredictError,
    RemoteModel,
    find_version_dir,
    inspect_scene,
    predict_scene,
    resolution_warning,
)
from tests.fixtures.geotiffs import PIXEL_DEGREES, scene, write_geotiff
from tests.fixtures.pipeline import TILE

# --------------------------------------------------------------------------- windows, weights
WINDOW_CASES = [(64, 64, 48), (30, 64, 48), (150, 64, 48), (448, 448, 384), (1000, 448, 384)]


@pytest.mark.parametrize(("length", "tile", "stride"), WINDOW_CASES)
def test_windows_cover_every_pixel_and_stay_inside(length, tile, stride):
    starts = window_starts(length, tile, stride)
    covered = np.zeros(max(length, tile), dtype=bool)
    for start in starts:
        covered[start : start + tile] = True
    assert covered[:length].all()
    assert starts[0] == 0
    assert starts[-1] == max(length - tile, 0)
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:], strict=False))


def test_blend_weights_ramp_across_the_overlap():
    w = blend_weights(64, 16)
    assert w.shape == (64, 64) and (w > 0).all() and w.max() == 1.0
    np.testing.assert_array_equal(w, w.T)
    np.testing.assert_array_equal(w, w[::-1, ::-1])
    assert (np.diff(w[32, :32]) >= 0).all() and (w[16:48, 16:48] == 1.0).all()
    # The outer 3/8 of the overlap (6 px) is left to the neighbouring window ...
    np.testing.assert_array_equal(w[32, :6], EDGE_WEIGHT)
    assert (w[32, 6:10] > EDGE_WEIGHT).all() and (w[32, 10:54] == 1.0).all()
    # ... and two windows overlapping by 16 cross-fade: their weights sum to ~1 there.
    np.testing.assert_allclose(w[32, 48:] + w[32, :16], 1.0, atol=2 * EDGE_WEIGHT)
    assert (blend_weights(64, 0) == 1.0).all()


@dataclass
class PixelModel:
    """A per-pixel function of reflectance: equivariant, so any window layout must return
    exactly the function applied to the whole scene (tests the assembly, not a network)."""

    tile: int = TILE
    source: str = "pixelwise sigmoid of B4"
    calls: int = 0

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        self.calls += 1
        assert tiles.shape[1:] == (self.tile, self.tile, 3) and tiles.dtype == np.float32
        return 1.0 / (1.0 + np.exp(-40.0 * (tiles[..., 2] - 0.17)))


def make_scene(path: Path, height: int, width: int, seed: int = 0, **kwargs) -> np.ndarray:
    image, _ = scene(height, width, seed=seed, blobs=3)
    write_geotiff(path, image, descriptions=("B2", "B3", "B4"), **kwargs)
    return image


@pytest.mark.parametrize(("height", "width"), [(150, 97), (30, 40), (64, 64), (300, 520)])
def test_windows_reassemble_exactly_the_pixelwise_answer(tmp_path, height, width):
    image = make_scene(tmp_path / "scene.tif", height, width)
    model = PixelModel()
    cfg = PredictConfig(tile=TILE, overlap=16, batch_size=3)
    result = predict_scene(
        tmp_path / "scene.tif", model, tmp_path / "mask.tif", cfg, tmp_path / "prob.tif"
    )
    b4 = image[2]
    direct = 1.0 / (1.0 + np.exp(-40.0 * (b4 - 0.17)))
    with rasterio.open(tmp_path / "prob.tif") as src:
        probabilities = src.read(1)
    np.testing.assert_allclose(probabilities, direct, rtol=1e-5, atol=1e-6)
    with rasterio.open(tmp_path / "mask.tif") as src:
        mask = src.read(1)
    np.testing.assert_array_equal(mask, (probabilities >= 0.5).astype(np.uint8))
    assert result.tailings_pixels == int(mask.sum()) > 0
    assert result.windows == len(window_starts(height, TILE, 48)) * len(
        window_starts(width, TILE, 48)
    )


def test_no_data_pixels_are_255_in_the_mask_and_nan_in_probabilities(tmp_path):
    image, _ = scene(80, 90, seed=2, blobs=2)
    image[:, 10:20, 30:50] = np.nan
    write_geotiff(tmp_path / "scene.tif", image)
    result = predict_scene(
        tmp_path / "scene.tif",
        PixelModel(),
        tmp_path / "mask.tif",
        PredictConfig(tile=TILE, overlap=16),
        tmp_path / "prob.tif",
    )
    with rasterio.open(tmp_path / "mask.tif") as src:
        mask = src.read(1)
        assert src.nodata == 255
    with rasterio.open(tmp_path / "prob.tif") as src:
        probabilities = src.read(1)
    assert (mask[10:20, 30:50] == 255).all() and np.isnan(probabilities[10:20, 30:50]).all()
    assert result.valid_pixels == 80 * 90 - 200
    assert set(np.unique(mask[~np.isnan(probabilities)])) <= {0, 1}


# --------------------------------------------------------------------------- seams
DEFAULT = PredictConfig()  # tile 448, overlap 128: what `tailings predict` runs
TAILINGS = np.array([0.18, 0.22, 0.30], np.float32)  # the colour `scene()` paints tailings
BLOB_TOLERANCE = 0.05  # max |probability - pixelwise answer| on the facility; see below


@dataclass
class EdgeBiasedModel(PixelModel):
    """`PixelModel`'s answer damped near the window's border, as a real CNN's is.

    A CNN pads with zeros and sees less context near its window's border, so its probabilities
    there are less sure than in the middle of the window. Here the factor is 0.3 on the border
    and rises linearly to 1 at tile / 8 pixels inside (per axis; the smaller of the two counts).
    Windows must then be blended so that the damped borders do not show: a scene's answer should
    be the pixelwise one everywhere but near the scene's own edges.
    """

    tile: int = DEFAULT.tile
    source: str = "pixelwise sigmoid of B4, damped near the window's border"
    border_factor: float = 0.3
    damping: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        inside = np.minimum(np.arange(self.tile), np.arange(self.tile)[::-1])
        ramp = np.minimum(1.0, inside / (self.tile / 8))
        per_axis = self.border_factor + (1.0 - self.border_factor) * ramp
        self.damping = np.minimum.outer(per_axis, per_axis)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        return super().__call__(tiles) * self.damping


@pytest.fixture(scope="module")
def seam_scene(tmp_path_factory):
    """A 448 x 896 scene with one rectangular facility across column 448, where the first
    window ends: with overlap 0 two windows meet there; with the default overlap (windows at
    0, 320, 448) the first window's edge still cuts it (checked in `predict_seam`).
    The facility keeps 144 pixels (> tile / 8) from the scene's edges, where nothing blends.

    Returns (path, facility [H, W] bool, the pixelwise answer [H, W])."""
    tile = DEFAULT.tile
    height, width = tile, 2 * tile
    image, _ = scene(height, width, seed=11, blobs=0)  # background with noise
    facility = np.zeros((height, width), bool)
    facility[144:304, tile - 112 : tile + 112] = True
    rng = np.random.default_rng(12)
    bright = TAILINGS[:, None] + rng.normal(0.0, 0.015, (3, int(facility.sum())))
    image[:, facility] = np.clip(bright, 0.0, 0.6).astype(np.float32)
    path = write_geotiff(tmp_path_factory.mktemp("seam") / "scene.tif", image)
    direct = 1.0 / (1.0 + np.exp(-40.0 * (image[2] - 0.17)))
    return path, facility, direct


def predict_seam(seam_scene, tmp_path, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask, probabilities) of the seam scene with EdgeBiasedModel at this overlap."""
    path, facility, _ = seam_scene
    cfg = PredictConfig(overlap=overlap)
    columns = np.flatnonzero(facility.any(axis=0))
    starts = window_starts(facility.shape[1], cfg.tile, cfg.stride)
    edges = {s for s in starts if s > 0} | {s + cfg.tile for s in starts[:-1]}
    assert any(columns[0] < e <= columns[-1] for e in edges), "the facility crosses no edge"
    predict_scene(path, EdgeBiasedModel(), tmp_path / "mask.tif", cfg, tmp_path / "prob.tif")
    with rasterio.open(tmp_path / "mask.tif") as m, rasterio.open(tmp_path / "prob.tif") as p:
        return m.read(1), p.read(1)


def test_blended_windows_find_a_facility_across_a_window_edge_in_one_piece(seam_scene, tmp_path):
    _, facility, direct = seam_scene
    assert direct[facility].min() > 0.9 and direct[~facility].max() < 0.1
    mask, _ = predict_seam(seam_scene, tmp_path, DEFAULT.overlap)
    pieces, count = ndimage.label(mask == 1)
    assert count == 1
    np.testing.assert_array_equal(pieces > 0, facility)  # no gap along any window edge


def test_blended_probabilities_are_the_pixelwise_answer_across_a_window_edge(seam_scene, tmp_path):
    _, facility, direct = seam_scene
    _, probabilities = predict_seam(seam_scene, tmp_path, DEFAULT.overlap)
    # The pixelwise answer on the facility is >= 0.9, so an error within the tolerance moves no
    # facility pixel across the 0.5 threshold, while a seam that survives blending dips by up
    # to 0.7 (the border factor is 0.3): far outside it. Blending that keeps each window's
    # damped border out of the mean is exact here (measured: error < 0.01).
    error = np.abs(probabilities - direct)[facility]
    assert error.max() <= BLOB_TOLERANCE, f"max error {error.max():.3f} on the facility"


def test_without_overlap_a_window_edge_cuts_the_facility(seam_scene, tmp_path):
    """The seam test's control: unblended windows do show the seam the tests above look for."""
    _, facility, direct = seam_scene
    mask, probabilities = predict_seam(seam_scene, tmp_path, overlap=0)
    edge = DEFAULT.tile
    assert window_starts(facility.shape[1], edge, edge) == [0, edge]  # they meet at 448
    rows = facility.any(axis=1)
    # Both windows damp the facility to 0.3 x its probability at their shared edge ...
    np.testing.assert_allclose(
        probabilities[rows, edge - 1 : edge + 1],
        0.3 * direct[rows, edge - 1 : edge + 1],
        rtol=1e-5,
    )
    # ... so a line of background runs through it along the edge, and it falls in two pieces.
    assert (mask[rows, edge - 1 : edge + 1] == 0).all()
    _, count = ndimage.label(mask == 1)
    assert count == 2


# --------------------------------------------------------------------------- outputs and areas
def test_outputs_are_georeferenced_cogs_with_hectares(tmp_path):
    transform = from_origin(-44.61, -21.07, PIXEL_DEGREES, PIXEL_DEGREES)
    make_scene(tmp_path / "scene.tif", 300, 520, transform=transform)
    result = predict_scene(
        tmp_path / "scene.tif",
        PixelModel(),
        tmp_path / "out" / "mask.tif",
        PredictConfig(tile=TILE, overlap=16),
        tmp_path / "out" / "prob.tif",
        tmp_path / "out" / "tailings.geojson",
    )
    with rasterio.open(tmp_path / "scene.tif") as scene_src:
        crs, grid = scene_src.crs, scene_src.transform
    for name, dtype in (("mask.tif", "uint8"), ("prob.tif", "float32")):
        with rasterio.open(tmp_path / "out" / name) as src:
            assert src.crs == crs and src.transform == grid
            assert (src.width, src.height, src.count, src.dtypes[0]) == (520, 300, 1, dtype)
            assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
            assert src.compression.value == "DEFLATE"
            assert src.overviews(1), "a COG of this size has overviews"
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    with rasterio.open(tmp_path / "out" / "mask.tif") as src:
        mask = src.read(1)
    areas = np.broadcast_to(pixel_areas(grid, crs, 300, 520), (300, 520))
    assert result.tailings_m2 == pytest.approx(float(areas[mask == 1].sum()), rel=1e-9)
    # Near 21 degrees south a ~10 m pixel is ~92 m^2, not the equator's ~99 m^2.
    assert result.tailings_ha == pytest.approx(mask.sum() * 92.1e-4, rel=0.01)
    geojson = json.loads((tmp_path / "out" / "tailings.geojson").read_text())
    assert result.polygons == len(geojson["features"]) >= 1
    total = sum(f["properties"]["area_ha"] for f in geojson["features"])
    assert total == pytest.approx(result.tailings_ha, rel=1e-6)
    lon, lat = geojson["features"][0]["geometry"]["coordinates"][0][0]
    assert -44.62 < lon < -44.56 and -21.1 < lat < -21.07


def test_projected_scene_polygons_are_written_in_wgs84(tmp_path):
    make_scene(
        tmp_path / "scene.tif",
        96,
        96,
        crs="EPSG:32723",
        transform=from_origin(600000, 7670000, 10, 10),
    )
    result = predict_scene(
        tmp_path / "scene.tif",
        PixelModel(),
        tmp_path / "mask.tif",
        PredictConfig(tile=TILE, overlap=16),
        out_polygons=tmp_path / "p.geojson",
    )
    # Ground areas: 100 km east of the central meridian a 10 m UTM pixel is 100.055 m^2.
    assert result.tailings_m2 == pytest.approx(result.tailings_pixels * 100.055, rel=2e-5)
    assert "areas: geodesic, on the WGS 84 ellipsoid" in result.lines()
    features = json.loads((tmp_path / "p.geojson").read_text())["features"]
    lon, lat = features[0]["geometry"]["coordinates"][0][0]
    assert -45.1 < lon < -43.9 and -21.2 < lat < -20.9  # UTM 23S near (600 km E, 7670 km N)
    total = sum(f["properties"]["area_ha"] for f in features)
    assert total == pytest.approx(result.tailings_ha, rel=1e-7)  # each polygon is its pixels
    assert {f["properties"]["area_method"] for f in features} == {
        "geodesic, on the WGS 84 ellipsoid"
    }


def _reprojected(source: Path, crs: str, out: Path) -> Path:
    """`source` warped to `crs` (nearest neighbour; NaN outside), as a user's GIS would."""
    with rasterio.open(source) as src:
        grid, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, *src.bounds
        )
        image = np.full((3, height, width), np.nan, np.float32)
        reproject(
            src.read(),
            image,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=grid,
            dst_crs=crs,
            resampling=Resampling.nearest,
            dst_nodata=np.nan,
        )
    return write_geotiff(out, image, crs=crs, transform=grid)


# Nearest-neighbour warping redraws every facility's outline on the new grid: measured on this
# scene, its tailings move by -0.29 % (EPSG:3857) and +0.22 % (EPSG:4326), the area with data
# by 0.05 % and 0.02 %. The tolerances leave room for that and nothing near the +15.4 % that
# EPSG:3857's grid area gave at 21 degrees south (issue 16, defect 6).
WARPED_TAILINGS_REL = 0.01
WARPED_VALID_REL = 0.002


def test_one_tile_in_utm_web_mercator_and_lonlat_reports_the_same_hectares(tmp_path):
    image, _ = scene(192, 192, seed=3, blobs=3)
    utm = write_geotiff(
        tmp_path / "utm.tif",
        image,
        crs="EPSG:32723",
        transform=from_origin(600000, 7670000, 10, 10),
    )
    cfg = PredictConfig(tile=TILE, overlap=16)
    results = {}
    for crs in ("EPSG:32723", "EPSG:3857", "EPSG:4326"):
        name = crs.replace(":", "-")
        path = utm if crs == "EPSG:32723" else _reprojected(utm, crs, tmp_path / f"{name}.tif")
        results[crs] = predict_scene(path, PixelModel(), tmp_path / f"{name}-mask.tif", cfg)
    reference = results["EPSG:32723"]
    assert 80 < reference.tailings_ha < 95  # ~87 ha of tailings on a 369 ha tile
    for crs in ("EPSG:3857", "EPSG:4326"):
        result = results[crs]
        assert result.tailings_ha == pytest.approx(reference.tailings_ha, rel=WARPED_TAILINGS_REL)
        assert result.valid_m2 == pytest.approx(reference.valid_m2, rel=WARPED_VALID_REL)
        assert "areas: geodesic, on the WGS 84 ellipsoid" in result.lines(), crs


# --------------------------------------------------------------------------- bad input
def test_bad_scenes_get_clear_errors(tmp_path):
    cfg, model = PredictConfig(tile=TILE, overlap=16), PixelModel()
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    one_band = write_geotiff(tmp_path / "one.tif", np.zeros((1, 32, 32), np.float32))
    integers = write_geotiff(tmp_path / "dn.tif", np.zeros((3, 32, 32), np.uint16))
    no_crs = write_geotiff(tmp_path / "nocrs.tif", np.zeros((3, 32, 32), np.float32), crs=None)
    cases = [
        (tmp_path / "missing.tif", "no such file"),
        (text, "not a GeoTIFF"),
        (one_band, "has 1 band(s); the model needs 3"),
        (integers, "uint16 pixels; the model needs float reflectance"),
        (no_crs, "has no CRS"),
    ]
    for path, message in cases:
        with pytest.raises(PredictError) as err:
            predict_scene(path, model, tmp_path / "mask.tif", cfg)
        assert str(path) in str(err.value) and message in str(err.value)
    assert not (tmp_path / "mask.tif").exists()
    assert not list(tmp_path.glob(".*partial*"))


def _png(path: Path) -> Path:
    """A small RGB PNG, written by GDAL (no georeferencing, as a screenshot would have)."""
    with rasterio.open(path, "w", driver="PNG", width=8, height=8, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 8, 8), np.uint8))
    return path


def test_scene_headers_are_checked_without_rasterio_warnings(tmp_path, recwarn):
    """Issue 16, defect 7: the header alone says what is wrong, and rasterio's own warnings
    (NotGeoreferencedWarning) are said in our words, not printed beside them."""
    import warnings

    warnings.simplefilter("always")
    zeros = np.zeros((3, 16, 16), np.float32)
    png = _png(tmp_path / "screenshot.png")
    recwarn.clear()  # writing it warned; reading it must not
    with rasterio.open(
        tmp_path / "grid.tif", "w", driver="GTiff", width=16, height=16, count=3,
        dtype="float32", crs="EPSG:4326",
    ) as dst:  # fmt: skip
        dst.write(zeros)
    gcps = write_geotiff(tmp_path / "gcps.tif", zeros)
    with rasterio.open(gcps, "r+") as dst:
        dst.transform = Affine.identity()
        dst.gcps = (
            [GroundControlPoint(0, 0, -44.0, -21.0), GroundControlPoint(16, 16, -43.9, -21.1)],
            dst.crs,
        )
    recwarn.clear()
    cases = [
        (png, "is a PNG raster, not a GeoTIFF"),
        (tmp_path / "grid.tif", "has no geotransform"),
        (gcps, "control points (GCPs), not a geotransform; warp it"),
        (tmp_path, "not a file"),
    ]
    for path, message in cases:
        with pytest.raises(PredictError) as err:
            inspect_scene(path)
        assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert not [w for w in recwarn if "rasterio" in w.filename], [str(w.message) for w in recwarn]


def test_pixel_size_far_from_10_m_is_refused_unless_allowed(tmp_path):
    image = np.zeros((3, 16, 16), np.float32)
    ok = write_geotiff(tmp_path / "ok.tif", image)  # the fixtures' ~10 m degree pixels
    info = inspect_scene(ok)
    assert info.pixel_m == pytest.approx((9.35, 9.89), abs=0.01)  # 8.93e-5 degrees at 19.9 S
    assert resolution_warning(info) is None
    # The study's broken img_23: 0.000833 x 0.0000893 degree pixels, 87 m x 9.9 m.
    wide = from_origin(-43.8867, -20.3971, 8.333865e-4, 8.928166e-5)
    img_23 = inspect_scene(write_geotiff(tmp_path / "img_23.tif", image, transform=wide))
    with pytest.raises(PredictError) as err:
        resolution_warning(img_23)
    assert str(err.value) == (
        f"{tmp_path / 'img_23.tif'}: pixels are 87.0 m x 9.9 m on the ground; the model was "
        "trained on 10 m pixels and takes 5-20 m; resample the scene to 10 m (or pass "
        "--allow-resolution to predict anyway)"
    )
    assert "87.0 m x 9.9 m" in resolution_warning(img_23, allow=True)
    # Sentinel-2's 20 m bands in UTM: 20.006 m on the ground, a warning (not a refusal).
    grid = from_origin(600000, 7670000, 20, 20)
    twenty = inspect_scene(write_geotiff(tmp_path / "b20.tif", image, "EPSG:32723", grid))
    assert "20.0 m x 20.0 m" in resolution_warning(twenty)
    # EPSG:3857's 10.7 m grid pixels are 10 m on the ground at 21 S: silent.
    grid = from_origin(-4902220.79, -2400015.22, 10.7, 10.7)
    mercator = inspect_scene(write_geotiff(tmp_path / "m.tif", image, "EPSG:3857", grid))
    assert mercator.pixel_m == pytest.approx((9.99, 9.93), abs=0.01)
    assert resolution_warning(mercator) is None


def test_a_truncated_scene_is_one_line_naming_it(tmp_path):
    image, _ = scene(256, 256)
    profile = {"driver": "GTiff", "width": 256, "height": 256, "count": 3, "dtype": "float32"}
    with rasterio.open(tmp_path / "full.tif", "w", crs="EPSG:4326", **profile) as dst:
        dst.transform = from_origin(-44.61, -21.07, PIXEL_DEGREES, PIXEL_DEGREES)
        dst.write(image)  # uncompressed: the header comes first, the pixels after it
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])  # a copy that stopped halfway
    with pytest.raises(PredictError, match=r"cut\.tif: cannot read rows .*is the file complete"):
        predict_scene(
            tmp_path / "cut.tif", PixelModel(), tmp_path / "m.tif", PredictConfig(TILE, 16)
        )
    assert not (tmp_path / "m.tif").exists()


def test_unwritable_outputs_are_clear_errors(tmp_path):
    make_scene(tmp_path / "scene.tif", 64, 64)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = PredictConfig(tile=TILE, overlap=16)
    with pytest.raises(PredictError, match=f"{blocker / 'mask.tif'}: cannot create its folder"):
        predict_scene(tmp_path / "scene.tif", PixelModel(), blocker / "mask.tif", cfg)
    with pytest.raises(PredictError, match=f"{blocker / 'p.geojson'}: cannot write the polygons"):
        predict_scene(
            tmp_path / "scene.tif",
            PixelModel(),
            tmp_path / "m.tif",
            cfg,
            None,
            blocker / "p.geojson",
        )


def test_tile_size_must_match_the_model(tmp_path):
    make_scene(tmp_path / "scene.tif", 64, 64)
    with pytest.raises(PredictError, match=f"takes {TILE} x {TILE} tiles.*pass --tile {TILE}"):
        predict_scene(tmp_path / "scene.tif", PixelModel(), tmp_path / "m.tif", PredictConfig())


def test_server_down_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PredictError, match="cannot connect to the model server.*tailings serve"):
        RemoteModel.connect(f"http://127.0.0.1:{port}", "tailings", timeout=5)


def test_model_folder_without_a_saved_model_is_a_clear_error(tmp_path):
    with pytest.raises(PredictError, match="no SavedModel here"):
        LocalModel.open(tmp_path)
    with pytest.raises(PredictError, match=f"--model {tmp_path / 'nope'}: no such folder"):
        find_version_dir(tmp_path / "nope")


# --------------------------------------------------------------------------- the real model
@pytest.mark.slow
def test_server_and_in_process_give_the_same_output(server, pushed, tmp_path):
    cfg, version_dir = pushed
    make_scene(tmp_path / "scene.tif", 150, 97, seed=5)
    settings = PredictConfig(tile=TILE, overlap=16, batch_size=4)
    local = LocalModel.open(cfg.push_dir)  # the base path: the newest version is picked
    assert local.tile == TILE and local.source == str(version_dir)
    remote = RemoteModel.connect(server.url, cfg.model_name, timeout=60)
    assert remote.tile == TILE
    results = {}
    for name, model in (("local", local), ("remote", remote)):
        results[name] = predict_scene(
            tmp_path / "scene.tif",
            model,
            tmp_path / f"{name}-mask.tif",
            settings,
            tmp_path / f"{name}-prob.tif",
            tmp_path / f"{name}.geojson",
        )
    arrays = {}
    for name in results:
        with (
            rasterio.open(tmp_path / f"{name}-mask.tif") as m,
            rasterio.open(tmp_path / f"{name}-prob.tif") as p,
        ):
            arrays[name] = (m.read(1), p.read(1))
    np.testing.assert_array_equal(arrays["local"][0], arrays["remote"][0])
    np.testing.assert_allclose(arrays["local"][1], arrays["remote"][1], atol=1e-6)
    assert results["local"].tailings_pixels == results["remote"].tailings_pixels
    assert results["local"].tailings_ha == pytest.approx(results["remote"].tailings_ha)
    assert (tmp_path / "local.geojson").read_text() == (tmp_path / "remote.geojson").read_text()
    # The tiny model learned the synthetic blobs: it finds tailings, not everything.
    mask = arrays["local"][0]
    assert 0 < mask.mean() < 0.9


@pytest.mark.slow
@pytest.mark.realdata
def test_real_scene_with_the_tiny_model(real_data, pushed, tmp_path):
    cfg, _ = pushed
    scene_path = real_data / "img" / "img_3.tif"
    result = predict_scene(
        scene_path,
        LocalModel.open(cfg.push_dir),
        tmp_path / "mask.tif",
        PredictConfig(tile=TILE, overlap=16),
        out_polygons=tmp_path / "p.geojson",
    )
    with rasterio.open(scene_path) as src, rasterio.open(tmp_path / "mask.tif") as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        mask = out.read(1)
        areas = np.broadcast_to(pixel_areas(src.transform, src.crs, *src.shape), src.shape)
    assert result.tailings_pixels == int((mask == 1).sum())
    assert result.tailings_m2 == pytest.approx(float(areas[mask == 1].sum()), rel=1e-9)
    assert result.valid_m2 == pytest.approx(float(areas.sum()), rel=1e-9)
    # 448 x 448 pixels of ~8.93e-5 degrees at 20.4 S: ~4.45 km (N-S) x ~4.17 km (E-W).
    assert 1800 < result.valid_m2 / 1e4 < 1880
