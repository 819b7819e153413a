"""Whole-scene prediction: sliding windows over a GeoTIFF of any size, blended, georeferenced.

The windows and their blending are `components.blending`'s, the code path the pipeline's
ScenePredictor uses to predict the eval sites the Evaluator scores: windows of `tile` pixels
step by `tile - overlap`, the last one flush with the scene's edge, scenes smaller than a tile
mirrored up to one; inside an overlap the window whose border is farther away answers (a
cross-fade over the middle of the overlap), so no window's weak border shows as a seam.

The model is called through `serving_default` with serialized tf.Examples, in-process
(`LocalModel`) or through TF Serving's REST or gRPC API (`RemoteModel`; b64 instances in REST).
Why that signature: it is the one every TF Serving client calls by default; it carries the
float32 pixels as exact bytes (a third smaller than JSON numbers and parsed without a JSON number
walk); and it runs the pipeline's Transform graph, so the normalisation is the training one.
Both paths send the same batches to the same signature, so they give the same output.

`write_scene` owns the blending, outputs and areas; `predict_scene` feeds it from a model, and
the Beam pipeline (`serving.fleet_beam`) from RunInference's answers, so both write the same
files. The scene is processed one strip of windows at a time, so memory stays at a few strips
whatever the scene's size. Outputs: a uint8 mask (1 tailings, 0 background, 255 no data) and
optionally float32 probabilities, as Cloud-Optimized GeoTIFFs on the input's grid; optional
GeoJSON polygons.
Hectares are geodesic, on the ellipsoid of the scene's CRS, whatever the CRS (`data.geo`).

`inspect_scene` checks a scene from its header alone (a GeoTIFF, 3 float bands, a CRS, a
geotransform, pixels near the 10 m the model was trained on), so the CLI refuses bad input in
well under a second, before TensorFlow and the model load.

A scene may also be a Sentinel-2 product (a SAFE folder or zip, a folder or list of band
files): `serving.sentinel2` checks its metadata and band files the same way and reads it as
reflectance strip by strip (`ProductReader`), its own cloud mask making cloudy pixels no data,
counted apart; the rest of this module treats it as any scene.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from components.blending import Grid, StripBlender, batches, pad_strip, strip_tiles
from components.warmup import (
    EXAMPLES_INPUT,
    PROBABILITIES,
    SERVING_DEFAULT,
    WarmupError,
    image_example,
    serving_tile_size,
)
from data.errors import TailingsError
from data.geo import (
    SQUARE_METRES_PER_HECTARE,
    AreaError,
    area_method,
    pixel_areas,
    pixel_size_m,
    polygon_areas,
)
from serving.config import (
    PIXEL_SIZE_REFUSE_FACTOR,
    PIXEL_SIZE_WARN_FACTOR,
    TRAINING_PIXEL_M,
    PredictConfig,
)
from serving.errors import PredictError

MASK_NODATA = 255
BANDS = 3
WGS84 = "EPSG:4326"


class TileModel(Protocol):
    """Square float32 reflectance tiles [N, S, S, 3] -> tailings probabilities [N, S, S]."""

    tile: int
    source: str

    def __call__(self, tiles: np.ndarray) -> np.ndarray: ...


def _examples(tiles: np.ndarray) -> list[bytes]:
    return [image_example(tile) for tile in tiles]


def find_version_dir(path: Path) -> Path:
    """A SavedModel folder, or the newest numeric version under a model base path."""
    path = Path(path)
    if not path.is_dir():
        raise PredictError(
            f"--model {path}: " + ("not a folder" if path.exists() else "no such folder")
        )
    if (path / "saved_model.pb").is_file():
        return path
    if path.is_dir():
        versions = sorted((int(p.name), p) for p in path.iterdir() if p.name.isdigit())
        if versions and (versions[-1][1] / "saved_model.pb").is_file():
            return versions[-1][1]
    raise PredictError(
        f"--model {path}: no SavedModel here (saved_model.pb) and no numeric version folder "
        "holding one; pass a pushed version such as serving/models/tailings/1, or its parent"
    )


@dataclass
class LocalModel:
    """The SavedModel in this process, through the same code path as the embedded server."""

    servable: object
    tile: int
    source: str

    @classmethod
    def open(cls, path: Path) -> LocalModel:
        from serving.servable import Servable

        version_dir = find_version_dir(path)
        try:
            servable = Servable.load("local", 0, version_dir)
            tile = serving_tile_size(servable.signature_defs, where=str(version_dir))
        except WarmupError as err:
            raise PredictError(str(err)) from None
        except Exception as err:  # TensorFlow's load errors are long; keep the first line
            first = (getattr(err, "message", None) or str(err)).strip().splitlines()[0]
            raise PredictError(
                f"--model {version_dir}: cannot load the SavedModel: {first}"
            ) from None
        return cls(servable, tile, str(version_dir))

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        examples = np.array(_examples(tiles), dtype=object)
        outputs = self.servable.run(SERVING_DEFAULT, {EXAMPLES_INPUT: examples})
        return outputs[PROBABILITIES][..., 0]


@dataclass
class RemoteModel:
    """A model behind TF Serving's REST or gRPC API (the embedded server or
    tensorflow_model_server), by the URL's scheme: http(s):// or grpc://."""

    client: object
    tile: int
    source: str

    @classmethod
    def connect(cls, url: str, model_name: str, timeout: float) -> RemoteModel:
        from serving.client import ServerError, make_client

        client = make_client(url, model_name, timeout=timeout)  # grpc://... or http://...
        try:
            tile = serving_tile_size(client.signature_defs(), where=client.model_url)
        except (ServerError, WarmupError) as err:
            raise PredictError(str(err)) from None
        return cls(client, tile, client.model_url)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        from serving.client import ServerError

        try:
            probabilities = self.client.predict_examples(
                _examples(tiles), (self.tile, self.tile, 1), SERVING_DEFAULT
            )
        except ServerError as err:
            raise PredictError(str(err)) from None
        return probabilities[..., 0]


# --------------------------------------------------------------------------- input checks
@dataclass(frozen=True)
class SceneInfo:
    """What the header of a scene that passed `inspect_scene` says (no pixel was read)."""

    path: Path
    width: int
    height: int
    crs: object  # rasterio CRS
    transform: object  # affine.Affine
    pixel_m: tuple[float, float]  # ground size of a pixel: along a row, down a column
    product: object | None = None  # serving.sentinel2.Product for a Sentinel-2 product

    def describe_pixels(self) -> str:
        return f"{self.pixel_m[0]:.1f} m x {self.pixel_m[1]:.1f} m"


def _open_checked(path: Path):
    """Open `path` and check its header: a GeoTIFF with 3 float bands (B2, B3, B4), a CRS and
    a geotransform. Returns the open dataset; raises PredictError naming the file otherwise.

    rasterio's own warnings (NotGeoreferencedWarning for a file without a geotransform, such as
    a PNG) would print as extra stderr lines; they are caught here, and what they meant is said
    once, in our words, by the checks below."""
    import rasterio
    from rasterio.errors import RasterioIOError

    path = Path(path)
    if not path.exists():
        raise PredictError(f"{path}: no such file")
    if not path.is_file():
        raise PredictError(f"{path}: not a file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            src = rasterio.open(path)
        except RasterioIOError as err:
            raise PredictError(f"{path}: not a GeoTIFF rasterio can read ({err})") from None
        problem = None
        if src.driver != "GTiff":
            problem = f"is a {src.driver} raster, not a GeoTIFF"
        elif src.count != BANDS:
            problem = f"has {src.count} band(s); the model needs {BANDS}: B2, B3, B4 reflectance"
        elif not np.issubdtype(np.dtype(src.dtypes[0]), np.floating):
            problem = (
                f"has {src.dtypes[0]} pixels; the model needs float reflectance "
                "(Sentinel-2 L1C digital numbers / 10000)"
            )
        elif src.transform.is_identity and src.gcps[0]:
            problem = (
                "is placed on the ground by control points (GCPs), not a geotransform; "
                "warp it onto a grid first (gdalwarp)"
            )
        elif src.crs is None:
            problem = "has no CRS, so the mask could not be placed on the ground"
        elif src.transform.is_identity or src.transform.determinant == 0.0:
            problem = "has no geotransform, so the mask could not be placed on the ground"
    if problem:
        src.close()
        raise PredictError(f"{path}: {problem}")
    return src


def inspect_scene(path: Path, baseline: str | None = None) -> SceneInfo:
    """Check a scene from its header alone, before any model is loaded: the checks of
    `open_scene`, and the ground size of its pixels (geodesic, on its CRS's ellipsoid).
    A Sentinel-2 product: its metadata and band files' headers (`serving.sentinel2`);
    `baseline` is the processing baseline of band files without their metadata."""
    from serving import sentinel2

    if sentinel2.is_product(path):
        product = sentinel2.inspect_product(path, baseline)
        try:
            pixel_m = pixel_size_m(product.transform, product.crs, product.height, product.width)
        except AreaError as err:
            raise PredictError(f"{path}: {err}") from None
        return SceneInfo(
            path, product.width, product.height, product.crs, product.transform, pixel_m, product
        )
    src = _open_checked(path)
    try:
        try:
            pixel_m = pixel_size_m(src.transform, src.crs, src.height, src.width)
        except AreaError as err:
            raise PredictError(f"{path}: {err}") from None
        return SceneInfo(Path(path), src.width, src.height, src.crs, src.transform, pixel_m)
    finally:
        src.close()


def open_scene(path: Path, clouds: bool = True, baseline: str | None = None):
    """Open and check a scene (see `_open_checked`), or a Sentinel-2 product as a
    `serving.sentinel2.ProductReader` (`clouds`: mask its cloudy pixels); the caller closes it."""
    from serving import sentinel2

    if sentinel2.is_product(path):
        return sentinel2.open_product(path, clouds=clouds, baseline=baseline)
    return _open_checked(path)


RESOLUTION_SLACK = 0.005


def resolution_warning(info: SceneInfo, allow: bool = False) -> str | None:
    """None when the scene's pixels are close to the model's TRAINING_PIXEL_M (10 m) both ways.

    Within PIXEL_SIZE_WARN_FACTOR either way: silent. Beyond it, up to PIXEL_SIZE_REFUSE_FACTOR:
    the warning to print. Beyond that: PredictError (exit 1), or with `allow` (the CLI's
    --allow-resolution) the warning instead. The model saw every facility at 10 m; at another
    scale a facility and its texture cover a different number of pixels than it learned, and
    the default training (flips, rotations, colour gain/offset; zoom off) never showed it one.
    Both axes count: the study's img_23 is 87 m wide and 9.9 m tall per pixel."""
    ratios = [size / TRAINING_PIXEL_M for size in info.pixel_m]
    # On the ground a pixel is not quite its nominal size (UTM's scale factor: a 20 m product
    # is 20.006 m at 100 km from the central meridian): 0.5 % of slack on both bounds.
    worst = max(max(r, 1.0 / r) for r in ratios) / (1.0 + RESOLUTION_SLACK)
    if worst <= PIXEL_SIZE_WARN_FACTOR:
        return None
    low = TRAINING_PIXEL_M / PIXEL_SIZE_REFUSE_FACTOR
    high = TRAINING_PIXEL_M * PIXEL_SIZE_REFUSE_FACTOR
    said = (
        f"{info.path}: pixels are {info.describe_pixels()} on the ground; the model was trained "
        f"on {TRAINING_PIXEL_M:g} m pixels"
    )
    if worst > PIXEL_SIZE_REFUSE_FACTOR and not allow:
        raise PredictError(
            f"{said} and takes {low:g}-{high:g} m; resample the scene to {TRAINING_PIXEL_M:g} m "
            "(or pass --allow-resolution to predict anyway)"
        )
    return f"{said}, so its answers here may be worse"


# --------------------------------------------------------------------------- outputs
def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


@dataclass
class SceneResult:
    scene: str
    model: str
    height: int
    width: int
    windows: int
    valid_pixels: int = 0
    tailings_pixels: int = 0
    tailings_m2: float = 0.0
    valid_m2: float = 0.0
    polygons: int | None = None
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    area_method: str = ""  # data.geo.area_method: 'geodesic, on the WGS 84 ellipsoid'
    # Sentinel-2 products: which product, and the pixels its cloud mask made no data.
    product_id: str = ""
    level: str = ""
    baseline: str = ""
    sensing_date: str = ""
    clouds: str = ""  # the mask used: 'MSK_CLASSI opaque and cirrus', 'SCL 3,8,9,10', 'off', ...
    clouds_masked: bool = False  # a cloud mask was read (else cloudy_* say nothing)
    cloudy_pixels: int = 0
    cloudy_m2: float = 0.0

    @property
    def tailings_ha(self) -> float:
        return self.tailings_m2 / SQUARE_METRES_PER_HECTARE

    @property
    def cloudy_ha(self) -> float:
        return self.cloudy_m2 / SQUARE_METRES_PER_HECTARE

    def lines(self) -> list[str]:
        share = 100.0 * self.tailings_pixels / self.valid_pixels if self.valid_pixels else 0.0
        out = [
            f"{self.scene}: {self.width} x {self.height} pixels, {_count(self.windows, 'window')}"
            f", {self.seconds:.1f} s ({self.model})",
            f"tailings: {self.tailings_pixels} pixels, {self.tailings_ha:.2f} ha "
            f"({share:.2f} % of {self.valid_m2 / SQUARE_METRES_PER_HECTARE:.2f} ha with data)",
        ]
        if self.product_id:
            out.insert(
                1,
                f"product: {self.product_id} ({self.level or 'level unknown'}, baseline "
                f"{self.baseline or 'unknown'}, sensed {self.sensing_date or 'unknown'})",
            )
            out.append(
                f"clouds: {self.cloudy_pixels} pixels, {self.cloudy_ha:.2f} ha masked as no data "
                f"({self.clouds})"
                if self.clouds_masked
                else f"clouds: not masked ({self.clouds})"
            )
        if self.area_method:
            out.append(f"areas: {self.area_method}")
        if self.polygons is not None:
            out.append(f"polygons: {self.polygons}")
        out += [f"wrote {path}" for path in self.outputs]
        return out


def _write_error(path: Path, what: str, err: BaseException) -> PredictError:
    """One line for an output that could not be written. GDAL reports a full disk as a write
    error or a file it cannot read back, without the OS's words: a probe write in the same
    folder, made at once, recovers them ("No space left on device")."""
    reason = getattr(err, "strerror", None) or ""
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path.parent)
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as probe_err:
        reason = probe_err.strerror or reason
    return PredictError(f"{path}: cannot write the {what} ({reason or err})")


class _Output:
    """A tiled GeoTIFF written strip by strip, then copied into a COG at its final path.

    A failed write (a full disk) raises PredictError naming the path and leaves neither the
    partial file nor the final one behind."""

    def __init__(self, path: Path, src, dtype: str, nodata, description: str, cfg, kind: str):
        import rasterio
        from rasterio.errors import RasterioIOError

        self.path = Path(path)
        self.partial = self.path.with_name(f".{self.path.name}.partial.tif")
        self.kind = kind
        self.cfg = cfg
        self.finished = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PredictError(f"{self.path}: cannot create its folder ({err.strerror})") from None
        profile = {
            "driver": "GTiff",
            "width": src.width,
            "height": src.height,
            "count": 1,
            "dtype": dtype,
            "crs": src.crs,
            "transform": src.transform,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": cfg.block_size,
            "blockysize": cfg.block_size,
            "compress": "deflate",
            "BIGTIFF": "IF_SAFER",
        }
        try:
            self.dataset = rasterio.open(self.partial, "w", **profile)
        except (RasterioIOError, OSError) as err:
            raise PredictError(f"{self.path}: cannot write the output ({err})") from None
        self.dataset.set_band_description(1, description)

    def write(self, rows: np.ndarray, top: int) -> None:
        from rasterio.windows import Window

        window = Window(0, top, rows.shape[1], rows.shape[0])
        try:
            self.dataset.write(rows[None], window=window)
        except Exception as err:  # noqa: BLE001 - GDAL's errors are not all OSErrors
            raise _write_error(self.path, "output", err) from None

    def finish(self, tags: dict[str, str]) -> None:
        """Close and rewrite as a COG (tiles, overviews, compression); drop the partial file."""
        from rasterio.shutil import copy

        mask = self.kind == "mask"
        try:
            self.dataset.update_tags(**tags)
            self.dataset.close()
            copy(
                self.partial,
                self.path,
                driver="COG",
                compress=self.cfg.mask_compression if mask else self.cfg.probability_compression,
                predictor=self.cfg.mask_predictor if mask else self.cfg.probability_predictor,
                blocksize=self.cfg.block_size,
                overview_resampling="nearest" if mask else "average",
                bigtiff="IF_SAFER",
            )
        except Exception as err:  # noqa: BLE001 - GDAL's errors are not all OSErrors
            raise _write_error(self.path, "output", err) from None
        finally:
            self.partial.unlink(missing_ok=True)
        self.finished = True

    def abort(self) -> None:
        """Remove what this output wrote: a failed prediction leaves no file half written, and
        no mask without the probabilities asked for with it."""
        with contextlib.suppress(Exception):
            if not self.dataset.closed:
                self.dataset.close()
        self.partial.unlink(missing_ok=True)
        if self.finished:
            self.path.unlink(missing_ok=True)


def write_polygons(mask_path: Path, out: Path) -> int:
    """GeoJSON (RFC 7946: WGS 84 lon/lat) of the tailings areas, each with its area in ha.

    Areas are geodesic on the scene CRS's ellipsoid (`data.geo`), from the polygons in the
    scene's CRS with their edges followed pixel by pixel (`max_segment`), so they add up to the
    printed tailings hectares; each feature says so in `area_method`."""
    import rasterio
    from rasterio.features import shapes
    from rasterio.warp import transform_geom

    with rasterio.open(mask_path) as src:
        mask = src.read(1)
        crs, transform = src.crs, src.transform
    geometries = [
        geometry
        for geometry, _value in shapes(mask, mask=mask == 1, transform=transform, connectivity=4)
    ]
    pixel_side = min(math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e))
    try:
        areas = polygon_areas(geometries, crs, max_segment=pixel_side)
    except AreaError as err:
        raise PredictError(f"{mask_path}: {err}") from None
    method = area_method(crs)
    features = []
    reproject = crs.to_epsg() != 4326
    for index, (geometry, area) in enumerate(zip(geometries, areas, strict=True), start=1):
        if reproject:
            geometry = transform_geom(crs, WGS84, geometry)
        features.append(
            {
                "type": "Feature",
                "id": index,
                "properties": {
                    "id": index,
                    "area_ha": round(area / SQUARE_METRES_PER_HECTARE, 6),
                    "area_method": method,
                },
                "geometry": geometry,
            }
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    except OSError as err:
        with contextlib.suppress(OSError):
            out.unlink(missing_ok=True)  # not half a GeoJSON file (a full disk)
        raise PredictError(f"{out}: cannot write the polygons ({err.strerror})") from None
    return len(features)


# --------------------------------------------------------------------------- the scene
def scene_windows(height: int, width: int, cfg: PredictConfig) -> int:
    """How many windows `predict_scene` runs for a scene of this size (progress, ETA)."""
    return Grid.of(height, width, cfg.tile, cfg.overlap).windows


def read_strips(
    src, scene: Path, grid: Grid
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
    """For each row k of windows: (k, valid, strip, cloudy). `strip` is the [tile, >= tile, 3]
    float32 pixels of that row of windows (no data as 0, mirrored up to a tile where the scene
    is smaller), `valid` the [rows read, width] pixels with data in all three bands and no
    cloud, `cloudy` those a Sentinel-2 product's cloud mask took out (None: no mask)."""
    from rasterio.windows import Window

    nodata = src.nodata
    padded_width = grid.padded_width
    product = hasattr(src, "read_reflectance")  # serving.sentinel2.ProductReader
    for k, top in enumerate(grid.rows):
        h = min(grid.tile, grid.height - top)
        window = Window(0, top, grid.width, h)
        cloudy = None
        try:
            if product:
                pixels, cloudy = src.read_reflectance(window)
            else:
                pixels = src.read(window=window, out_dtype="float32")
        except TailingsError:
            raise
        except Exception as err:  # noqa: BLE001 - GDAL's errors are not all OSErrors
            cause = err.__cause__ or err  # rasterio: "Read failed. See previous exception"
            raise PredictError(
                f"{scene}: cannot read rows {top}..{top + h - 1} ({cause}); is the file complete?"
            ) from None
        valid = np.all(np.isfinite(pixels), axis=0)
        if nodata is not None and not np.isnan(nodata):
            valid &= ~np.any(pixels == nodata, axis=0)
        if cloudy is not None:
            valid &= ~cloudy
        strip = np.where(valid[..., None], np.moveaxis(pixels, 0, -1), 0.0).astype(np.float32)
        yield k, valid, pad_strip(strip, grid.tile, padded_width), cloudy


def predict_scene(
    scene: Path,
    model: TileModel,
    out_mask: Path,
    cfg: PredictConfig,
    out_probabilities: Path | None = None,
    out_polygons: Path | None = None,
    say: Callable[[str], None] = lambda _m: None,
    progress: Callable[[int], None] = lambda _n: None,
) -> SceneResult:
    """Predict a whole scene window by window; write the outputs; count tailings and hectares.
    `progress(n)` is told each time n more windows are predicted."""
    if model.tile != cfg.tile:
        raise PredictError(
            f"--tile {cfg.tile}, but the model's {SERVING_DEFAULT} signature takes "
            f"{model.tile} x {model.tile} tiles ({model.source}); pass --tile {model.tile}"
        )

    def run_model(_k: int, cols: Sequence[int], strip: np.ndarray) -> list[np.ndarray]:
        probabilities: list[np.ndarray] = []
        for batch in batches(list(cols), cfg.batch_size):
            probabilities.extend(model(strip_tiles(strip, batch, cfg.tile)))
            progress(len(batch))
        return probabilities

    return write_scene(
        scene, model.source, run_model, out_mask, cfg, out_probabilities, out_polygons, say
    )


def write_scene(
    scene: Path,
    model_source: str,
    row_probabilities: Callable[[int, Sequence[int], np.ndarray], Sequence[np.ndarray]],
    out_mask: Path,
    cfg: PredictConfig,
    out_probabilities: Path | None = None,
    out_polygons: Path | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> SceneResult:
    """Blend one scene's windows into its outputs, strip by strip, and count its tailings.

    `row_probabilities(k, cols, strip)` answers row k of windows (left to right, each [tile,
    tile]); `predict_scene` calls the model there, the Beam pipeline (`serving.fleet_beam`)
    hands over what RunInference computed. Either way the blending, thresholds, outputs and
    areas are this function's, in this order, so both paths write the same files."""
    import rasterio

    started = time.monotonic()
    src = open_scene(scene, clouds=cfg.mask_clouds, baseline=cfg.band_baseline)
    outputs: list[_Output] = []
    # In an Env, GDAL's error messages go to Python logging instead of stderr: a failed write
    # becomes one PredictError line, not a screen of "ERROR 1: TIFF..." lines.
    with rasterio.Env():
        try:
            result = _write_scene(
                src, scene, model_source, row_probabilities, out_mask, cfg,
                out_probabilities, outputs, say,
            )  # fmt: skip
            if out_polygons is not None:
                result.polygons = write_polygons(Path(out_mask), Path(out_polygons))
                result.outputs.append(str(out_polygons))
        except BaseException:
            for output in outputs:
                output.abort()
            raise
        finally:
            src.close()
    result.seconds = time.monotonic() - started
    return result


def _write_scene(
    src, scene, model_source, row_probabilities, out_mask, cfg, out_probabilities, outputs, say
) -> SceneResult:
    height, width, tile = src.height, src.width, cfg.tile
    grid = Grid.of(height, width, cfg.tile, cfg.overlap)

    def strip_areas(top: int, bottom: int) -> np.ndarray:
        """Ground areas (m^2) of rows top..bottom-1, strip by strip: a scene's corners in
        longitude/latitude would not fit in memory for a whole Sentinel-2 tile."""
        try:
            return pixel_areas(src.transform, src.crs, height, width, rows=(top, bottom))
        except AreaError as err:
            raise PredictError(f"{scene}: {err}") from None

    strip_areas(0, min(1, height))  # a CRS with no ground areas fails before the model runs
    result = SceneResult(str(scene), model_source, height, width, grid.windows)
    result.area_method = area_method(src.crs)
    product = getattr(src, "product", None)  # serving.sentinel2.Product
    if product is not None:
        result.product_id, result.level = product.product_id, product.level
        result.baseline, result.sensing_date = product.baseline, product.sensing_date
        result.clouds = product.clouds_described if cfg.mask_clouds else "off"
        result.clouds_masked = getattr(src, "mask", None) is not None
    say(
        f"{scene}: {width} x {height} pixels, {_count(result.windows, 'window')} of {tile} "
        f"(overlap {cfg.overlap}), model {model_source}"
    )

    mask_out = _Output(out_mask, src, "uint8", MASK_NODATA, "tailings", cfg, "mask")
    outputs.append(mask_out)
    prob_out = None
    if out_probabilities is not None:
        prob_out = _Output(
            out_probabilities, src, "float32", float("nan"), "tailings_probability", cfg, "prob"
        )
        outputs.append(prob_out)

    blender = StripBlender(grid)
    for k, valid, strip, cloudy in read_strips(src, scene, grid):
        probabilities = row_probabilities(k, grid.cols, strip)
        if len(probabilities) != len(grid.cols):
            raise PredictError(
                f"{scene}: {len(probabilities)} windows answered in row {k}, "
                f"{len(grid.cols)} expected"
            )
        probability = blender.add(k, probabilities)
        top, bottom = grid.rows[k], grid.bottom(k)
        done = bottom - top
        ok = valid[:done]
        tailings = (probability >= cfg.threshold) & ok
        mask = np.where(ok, tailings, MASK_NODATA).astype(np.uint8)
        mask_out.write(mask, top)
        if prob_out is not None:
            prob_out.write(np.where(ok, probability, np.nan).astype(np.float32), top)

        row_areas = strip_areas(top, bottom)
        result.tailings_pixels += int(tailings.sum())
        result.valid_pixels += int(ok.sum())
        result.tailings_m2 += float((tailings * row_areas).sum())
        result.valid_m2 += float((ok * row_areas).sum())
        if cloudy is not None:
            clouds = cloudy[:done]
            result.cloudy_pixels += int(clouds.sum())
            result.cloudy_m2 += float((clouds * row_areas).sum())
        say(f"  rows {top}..{bottom - 1} of {height} done")

    tags = {
        "model": model_source,
        "tile": str(tile),
        "overlap": str(cfg.overlap),
        "threshold": str(cfg.threshold),
        "source_scene": os.path.basename(str(scene).rstrip("/")),
    }
    if product is not None:
        tags.update(
            product_id=product.product_id,
            level=product.level,
            processing_baseline=product.baseline,
            sensing_date=product.sensing_date,
            cloud_mask=result.clouds,
        )
    for output in outputs:
        output.finish(tags)
        result.outputs.append(str(output.path))
    return result
