"""Sentinel-2 products as `tailings predict` scenes: SAFE folders, their zips, band files.

What a user has is a product from the Copernicus hub (a `.SAFE` folder or the `.zip` it comes
in, Level-1C or Level-2A) or the band files of one (`*_B02`, `*_B03`, `*_B04` at 10 m, JPEG 2000
or GeoTIFF/COG). The model wants B2, B3, B4 as float reflectance, L1C digital numbers / 10000
(the study's data, ../shared/brazil-tailings/README.md). This module turns the first into the
second, window by window, so a whole 10980 x 10980 tile streams through `serving.predict`'s
strip reader as a GeoTIFF scene does: `open_product` returns a `ProductReader`, which has the
few dataset attributes the predict code uses (width, height, crs, transform, nodata, close)
and `read_reflectance(window)`, so the in-process, `--server`, fleet and `--beam` paths all
read products through the same code.

Read with GDAL, by way of rasterio: its SENTINEL2 driver opens a product's `MTD_MSIL1C.xml` /
`MTD_MSIL2A.xml` or its zip (not the `.SAFE` folder itself), reads the metadata and lists the
10/20/60 m subdatasets (10 m band order B4, B3, B2, B8). What it does not do, and this module
does (measured with rasterio 1.4.4 / GDAL 3.10.3):
- apply the radiometric offset: `RADIO_ADD_OFFSET` (L2A `BOA_ADD_OFFSET`, -1000 from processing
  baseline 04.00) is a band metadata item, the band's offset is 0 and its scale 1, so
  reflectance = (DN + offset) / QUANTIFICATION_VALUE (L2A `BOA_QUANTIFICATION_VALUE`) is
  computed here; DN 0 is ESA's no data (no nodata is declared), masked here, never predicted;
- check the band files: a missing one reads as zeros without an error, and one at the wrong
  resolution is resampled silently, so each of B02, B03, B04 is looked for and its header read;
- read the cloud masks: Level-1C `QI_DATA/MSK_CLASSI_B00.jp2` (from baseline 04.00; 60 m,
  band 1 opaque clouds, band 2 cirrus) and Level-2A's scene classification `SCL` at 20 m
  (classes 3 cloud shadow, 8 and 9 cloud medium/high probability, 10 thin cirrus). Before
  04.00 Level-1C cloud masks are GML vectors; they are not read (said once, on stderr).
Cloudy pixels are no data in the outputs and counted apart (`cloudy_ha`), unless switched off.

Band files without their product's metadata (a folder or list of B02/B03/B04 files) carry no
processing baseline, so the offset is unknown: the metadata is taken from the SAFE they sit in
if there is one, else the baseline must be given (`--baseline`).
"""

from __future__ import annotations

import math
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving.errors import PredictError

MODEL_BANDS = ("B02", "B03", "B04")  # the model's order: blue, green, red
PRODUCT_TYPES = {"S2MSI1C": "L1C", "S2MSI2A": "L2A"}
METADATA_FILES = {"MTD_MSIL1C.xml": "L1C", "MTD_MSIL2A.xml": "L2A"}
BAND_SUFFIXES = (".jp2", ".tif", ".tiff")
# A band file's name: ESA's `T23KPT_20230823T130249_B02.jp2` (L2A: `..._B02_10m.jp2`), or any
# name with the band as a word of its own (`S2B_..._B02.tif`, `B02.tif`).
BAND_RE = re.compile(r"(?:^|[_.-])(B0[234])(?:_10m)?$", re.IGNORECASE)
OFFSET_BASELINE = (4, 0)  # RADIO_ADD_OFFSET / BOA_ADD_OFFSET from processing baseline 04.00
DEFAULT_OFFSET = -1000.0  # what ESA's products from 04.00 carry for every band
L1C_QUANTIFICATION = 10000.0
CLOUD_SCL_CLASSES = (3, 8, 9, 10)  # cloud shadow, cloud medium / high probability, cirrus
BAND_PIXEL_M = 10.0
L2A_NOTE = (
    "Level-2A (bottom-of-atmosphere) reflectance; the model was trained on Level-1C "
    "top-of-atmosphere reflectance, so its answers here may differ"
)


class ProductError(PredictError):
    """A Sentinel-2 product or band file that cannot be predicted; one line naming it."""


# --------------------------------------------------------------------------- what is a product
@dataclass(frozen=True)
class BandFiles:
    """An explicit list of band files (`tailings predict B02.jp2 B03.jp2 B04.jp2 --out ...`)."""

    files: tuple[Path, ...]

    def __str__(self) -> str:
        return " ".join(str(f) for f in self.files)


def product_metadata_file(folder: Path) -> Path | None:
    """The `MTD_MSIL1C.xml` / `MTD_MSIL2A.xml` of a SAFE folder, or None."""
    for name in METADATA_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def band_of(path: Path) -> str | None:
    """'B02', 'B03' or 'B04' when `path` is named as one of those band files, else None."""
    if path.suffix.lower() not in BAND_SUFFIXES:
        return None
    match = BAND_RE.search(path.stem)
    return match.group(1).upper() if match else None


def is_band_folder(folder: Path) -> bool:
    return folder.is_dir() and any(band_of(p) for p in folder.iterdir() if p.is_file())


def is_product(scene) -> bool:
    """Whether a scene argument names a Sentinel-2 product rather than a GeoTIFF scene: a SAFE
    folder (or a folder holding MTD_MSIL1C.xml / MTD_MSIL2A.xml), a .zip, a folder of band
    files, a list of band files, or a product's metadata file itself."""
    if isinstance(scene, BandFiles):
        return True
    path = Path(scene)
    if path.name in METADATA_FILES:
        return True
    if path.suffix.lower() == ".zip":
        return True
    if path.is_dir():
        return product_metadata_file(path) is not None or is_band_folder(path)
    return False


# --------------------------------------------------------------------------- the product
@dataclass(frozen=True)
class Product:
    """A product's header: what predicting it needs and what its summary row says."""

    source: str  # what the user named
    product_id: str  # PRODUCT_URI without .SAFE; band files: their common name
    level: str  # 'L1C', 'L2A', or '' (band files without metadata)
    baseline: str  # '05.09'; '' if unknown
    sensing_date: str  # 'YYYY-MM-DD'; '' if unknown
    band_paths: tuple[str, ...]  # GDAL paths (/vsizip/... in a zip) of B02, B03, B04
    quantification: float
    offsets: tuple[float, float, float]
    cloud_mask: str | None  # GDAL path of MSK_CLASSI / SCL; None: none to read
    cloud_kind: str  # 'MSK_CLASSI', 'SCL', or why there is none
    width: int
    height: int
    crs: object
    transform: object
    notes: tuple[str, ...] = field(default=())

    @property
    def clouds_described(self) -> str:
        if self.cloud_kind == "MSK_CLASSI":
            return "MSK_CLASSI opaque and cirrus"
        if self.cloud_kind == "SCL":
            return "SCL " + ",".join(map(str, CLOUD_SCL_CLASSES))
        return self.cloud_kind


def _quiet_open(path: str):
    """rasterio.open without rasterio's warnings (a zip without a geotransform): what they
    meant is said once, in our words, by the checks."""
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rasterio.open(path)


def _baseline_tuple(baseline: str, where: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d{1,2})\.(\d{1,2})", baseline.strip())
    if not match:
        raise ProductError(f"{where}: processing baseline {baseline!r} is not NN.NN")
    return int(match.group(1)), int(match.group(2))


def _sensing_date(text: str) -> str:
    match = re.match(r"(\d{4})-?(\d{2})-?(\d{2})", text or "")
    return "-".join(match.groups()) if match else ""


def _zip_members(path: Path) -> list[str]:
    """The zip's member names; a damaged zip is one ProductError line."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            bad = z.testzip() if path.stat().st_size < 2**20 else None  # a CRC check when small
    except (zipfile.BadZipFile, OSError) as err:
        raise ProductError(f"{path}: not a readable zip ({err})") from None
    if bad is not None:
        raise ProductError(f"{path}: damaged zip (member {bad} fails its CRC check)")
    return names


def _metadata_path(scene: Path) -> tuple[str, str]:
    """(GDAL path of the product's metadata file, what to call the product in messages)."""
    if scene.suffix.lower() == ".zip":
        if not scene.is_file():
            raise ProductError(f"{scene}: " + ("not a file" if scene.exists() else "no such file"))
        names = _zip_members(scene)
        found = [n for n in names if n.count("/") == 1 and n.split("/")[1] in METADATA_FILES]
        if not found:
            raise ProductError(
                f"{scene}: no <name>.SAFE/MTD_MSIL1C.xml or MTD_MSIL2A.xml in the zip; "
                "not a Sentinel-2 Level-1C or Level-2A product"
            )
        return f"/vsizip/{scene.resolve()}/{found[0]}", str(scene)
    if scene.name in METADATA_FILES:
        return str(scene), str(scene.parent)
    metadata = product_metadata_file(scene)
    if metadata is None:
        raise ProductError(f"{scene}: no MTD_MSIL1C.xml or MTD_MSIL2A.xml in this folder")
    return str(metadata), str(scene)


def _granule_dir(band_path: str, level: str) -> str:
    """GRANULE/<id> of a band file: L1C IMG_DATA/x.jp2, L2A IMG_DATA/R10m/x.jp2."""
    up = 2 if level == "L1C" else 3
    return band_path.rsplit("/", up)[0]


def _exists(gdal_path: str, members: set[str] | None, zip_prefix: str) -> bool:
    if gdal_path.startswith("/vsizip/"):
        return members is not None and gdal_path[len(zip_prefix) :] in members
    return Path(gdal_path).is_file()


def inspect_safe(scene: Path, band_files_baseline: str | None = None) -> Product:
    """A SAFE folder or zip (or its metadata file): metadata through GDAL's SENTINEL2 driver,
    band files and cloud mask found and their headers checked; no pixel read."""
    from rasterio.errors import RasterioIOError

    scene = Path(scene)
    metadata, name = _metadata_path(scene)
    members = zip_prefix = None
    if metadata.startswith("/vsizip/"):
        members = set(_zip_members(scene))
        zip_prefix = f"/vsizip/{scene.resolve()}/"
    try:
        with _quiet_open(metadata) as ds:
            tags = ds.tags()
            subdatasets = ds.subdatasets
    except RasterioIOError as err:
        raise ProductError(f"{name}: GDAL cannot read the product's metadata ({err})") from None
    product_type = tags.get("PRODUCT_TYPE", "")
    level = PRODUCT_TYPES.get(product_type)
    if level is None:
        raise ProductError(
            f"{name}: product type {product_type or '(none)'}; tailings predicts Level-1C "
            "(S2MSI1C) and Level-2A (S2MSI2A) products"
        )
    baseline = tags.get("PROCESSING_BASELINE", "")
    new = _baseline_tuple(baseline, name) >= OFFSET_BASELINE
    key = "QUANTIFICATION_VALUE" if level == "L1C" else "BOA_QUANTIFICATION_VALUE"
    try:
        quantification = float(tags[key])
    except (KeyError, ValueError):
        raise ProductError(f"{name}: no {key} in the product's metadata") from None
    ten = [s for s in subdatasets if ":10m:" in s]
    if not ten:
        raise ProductError(f"{name}: GDAL finds no 10 m bands in the product")
    with _quiet_open(ten[0]) as sub:
        files = list(sub.files)
        by_name = {sub.tags(i).get("BANDNAME"): i for i in range(1, sub.count + 1)}
        offset_key = "RADIO_ADD_OFFSET" if level == "L1C" else "BOA_ADD_OFFSET"
        offsets = []
        for band in MODEL_BANDS:
            index = by_name.get(f"B{int(band[1:])}")
            value = sub.tags(index).get(offset_key) if index else None
            if new and value is None:
                raise ProductError(
                    f"{name}: baseline {baseline} but no {offset_key} for {band} in the metadata"
                )
            offsets.append(float(value) if new else 0.0)
    band_paths = []
    for band in MODEL_BANDS:
        found = [f for f in files if band_of(Path(f.rsplit("/", 1)[-1])) == band]
        if not found or not _exists(found[0], members, zip_prefix or ""):
            raise ProductError(
                f"{name}: band {band} is missing (no *_{band}"
                f"{'_10m' if level == 'L2A' else ''}.jp2 in the product's IMG_DATA)"
            )
        band_paths.append(found[0])
    width, height, crs, transform = _check_bands(band_paths, name)
    granule = _granule_dir(band_paths[0], level)
    cloud_mask, cloud_kind, notes = None, "", []
    if level == "L1C" and new:
        candidate = f"{granule}/QI_DATA/MSK_CLASSI_B00.jp2"
        if _exists(candidate, members, zip_prefix or ""):
            cloud_mask, cloud_kind = candidate, "MSK_CLASSI"
        else:
            cloud_kind = "none in the product"
            notes.append(f"{name}: no QI_DATA/MSK_CLASSI_B00.jp2, so clouds are not masked")
    elif level == "L1C":
        cloud_kind = "none before baseline 04.00"
        notes.append(
            f"{name}: baseline {baseline} has no raster cloud mask (its MSK_CLOUDS_B00.gml is "
            "not read), so clouds are not masked"
        )
    else:
        r20 = f"{granule}/IMG_DATA/R20m/"
        if members is not None:
            scl = [zip_prefix + m for m in members if (zip_prefix + m).startswith(r20)]
        else:
            folder = Path(r20)
            scl = [str(p) for p in folder.iterdir()] if folder.is_dir() else []
        scl = [p for p in scl if p.endswith("_SCL_20m.jp2")]
        if scl:
            cloud_mask, cloud_kind = scl[0], "SCL"
        else:
            cloud_kind = "none in the product"
            notes.append(f"{name}: no IMG_DATA/R20m/*_SCL_20m.jp2, so clouds are not masked")
    if level == "L2A":
        notes.insert(0, f"{name}: {L2A_NOTE}")
    product_id = tags.get("PRODUCT_URI", "").removesuffix(".SAFE") or Path(name).stem
    return Product(
        source=str(scene),
        product_id=product_id,
        level=level,
        baseline=baseline,
        sensing_date=_sensing_date(tags.get("PRODUCT_START_TIME", "")),
        band_paths=tuple(band_paths),
        quantification=quantification,
        offsets=tuple(offsets),
        cloud_mask=cloud_mask,
        cloud_kind=cloud_kind,
        width=width,
        height=height,
        crs=crs,
        transform=transform,
        notes=tuple(notes),
    )


def _check_bands(paths: list[str], name: str) -> tuple[int, int, object, object]:
    """Each band file's header: readable, one band of unsigned integers, 10 m pixels, all on
    one grid. Returns the grid (width, height, crs, transform)."""
    from rasterio.errors import RasterioIOError

    grid = None
    for band, path in zip(MODEL_BANDS, paths, strict=True):
        shown = path.removeprefix("/vsizip/")
        try:
            with _quiet_open(path) as src:
                dtype, count = src.dtypes[0], src.count
                this = (src.width, src.height, src.crs, src.transform)
        except RasterioIOError as err:
            raise ProductError(f"{shown}: cannot read band {band} ({err})") from None
        if count != 1 or not np.issubdtype(np.dtype(dtype), np.unsignedinteger):
            raise ProductError(
                f"{shown}: band {band} has {count} band(s) of {dtype}; Sentinel-2 band files "
                "hold one band of uint16 digital numbers"
            )
        if this[2] is None or this[3].is_identity:
            raise ProductError(f"{shown}: band {band} has no CRS or geotransform")
        size = (abs(this[3].a), abs(this[3].e))
        if not all(math.isclose(s, BAND_PIXEL_M, rel_tol=1e-6) for s in size):
            raise ProductError(
                f"{shown}: band {band} has {size[0]:g} m pixels; the model needs the 10 m "
                "bands B02, B03, B04"
            )
        if grid is not None and (this[0], this[1], this[3]) != (grid[0], grid[1], grid[3]):
            raise ProductError(f"{shown}: band {band} is not on the grid of B02 ({paths[0]})")
        grid = grid or this
    return grid


def inspect_band_files(scene, baseline: str | None) -> Product:
    """A folder or list of B02, B03, B04 files. Their metadata comes from the SAFE they sit in
    (a MTD_MSIL1C.xml / MTD_MSIL2A.xml up to 4 folders up), else `baseline` gives the offset."""
    if isinstance(scene, BandFiles):
        files = list(scene.files)
        name = str(scene)
        for f in files:
            if not Path(f).is_file():
                raise ProductError(
                    f"{f}: " + ("not a file" if Path(f).exists() else "no such file")
                )
    else:
        folder = Path(scene)
        files = sorted(p for p in folder.iterdir() if p.is_file() and band_of(p))
        name = str(folder)
    by_band: dict[str, Path] = {}
    for f in files:
        band = band_of(Path(f))
        if band is None:
            raise ProductError(f"{f}: not named as a B02, B03 or B04 band file (*_B02.jp2)")
        if band in by_band:
            raise ProductError(f"{name}: two {band} files ({by_band[band].name}, {Path(f).name})")
        by_band[band] = Path(f)
    missing = [b for b in MODEL_BANDS if b not in by_band]
    if missing:
        raise ProductError(f"{name}: band {', '.join(missing)} missing (needs B02, B03, B04)")
    paths = [str(by_band[b]) for b in MODEL_BANDS]
    width, height, crs, transform = _check_bands(paths, name)
    for parent in list(Path(paths[0]).resolve().parents)[:4]:
        if product_metadata_file(parent) is not None:
            safe = inspect_safe(parent)
            if [Path(p).resolve() for p in safe.band_paths] == [Path(p).resolve() for p in paths]:
                return safe
    if baseline is None:
        raise ProductError(
            f"{name}: band files carry no processing baseline, so their radiometric offset "
            "(-1000 from baseline 04.00) is unknown; pass --baseline (e.g. 05.09, the N0509 of "
            "the product's name) or predict the SAFE product itself"
        )
    new = _baseline_tuple(baseline, "--baseline") >= OFFSET_BASELINE
    stem = Path(paths[0]).stem
    product_id = BAND_RE.sub("", stem) or stem
    level = "L2A" if stem.lower().endswith("_10m") else ""
    date = re.search(r"_(\d{8})T\d{6}", stem)
    return Product(
        source=name,
        product_id=product_id,
        level=level,
        baseline=baseline,
        sensing_date=_sensing_date(date.group(1)) if date else "",
        band_paths=tuple(paths),
        quantification=L1C_QUANTIFICATION,
        offsets=(DEFAULT_OFFSET if new else 0.0,) * 3,
        cloud_mask=None,
        cloud_kind="none with band files",
        width=width,
        height=height,
        crs=crs,
        transform=transform,
        notes=(f"{name}: {L2A_NOTE}",) if level == "L2A" else (),
    )


def inspect_product(scene, baseline: str | None = None) -> Product:
    """The header of a product (see `is_product`); ProductError with one line if it is not one
    tailings can predict. Cheap: metadata and file headers only, no pixels, no TensorFlow."""
    if isinstance(scene, BandFiles):
        return inspect_band_files(scene, baseline)
    path = Path(scene)
    if path.is_dir() and product_metadata_file(path) is None:
        return inspect_band_files(path, baseline)
    return inspect_safe(path)


# --------------------------------------------------------------------------- reading
class ProductReader:
    """A product's B2, B3, B4 as float32 reflectance, read window by window.

    Dataset-like for `serving.predict`: `width`, `height`, `crs`, `transform`, `nodata` (None:
    no data is NaN), `close()`, and `read_reflectance(window) -> (pixels [3, h, w] float32, NaN
    where any band is 0; cloudy [h, w] bool or None)`. Only the rows asked for are decoded: a
    full tile never sits in memory."""

    count = 3
    nodata = None

    def __init__(self, product: Product, clouds: bool = True) -> None:
        self.product = product
        self.width, self.height = product.width, product.height
        self.crs, self.transform = product.crs, product.transform
        self.bands = [_quiet_open(p) for p in product.band_paths]
        self.mask = None
        if clouds and product.cloud_mask is not None:
            self.mask = _quiet_open(product.cloud_mask)
            self._check_mask()

    @property
    def closed(self) -> bool:
        return self.bands[0].closed

    def _check_mask(self) -> None:
        t, m = self.transform, self.mask.transform
        factor = m.a / t.a
        self.factor = int(round(factor))
        aligned = (
            math.isclose(factor, self.factor)
            and math.isclose(m.c, t.c)
            and math.isclose(m.f, t.f)
            and self.mask.width * self.factor >= self.width
            and self.mask.height * self.factor >= self.height
        )
        if not aligned:
            raise ProductError(
                f"{self.product.cloud_mask.removeprefix('/vsizip/')}: the cloud mask is not on "
                "the 10 m bands' grid"
            )

    def read_reflectance(self, window) -> tuple[np.ndarray, np.ndarray | None]:
        from rasterio.windows import Window

        top, left = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        pixels = np.empty((3, h, w), dtype=np.float32)
        nodata = np.zeros((h, w), dtype=bool)
        p = self.product
        for i, src in enumerate(self.bands):
            dn = src.read(1, window=Window(left, top, w, h))
            nodata |= dn == 0
            pixels[i] = (dn.astype(np.float32) + np.float32(p.offsets[i])) / np.float32(
                p.quantification
            )
        pixels[:, nodata] = np.nan
        cloudy = None
        if self.mask is not None:
            cloudy = self._cloudy(top, left, h, w) & ~nodata
        return pixels, cloudy

    def _cloudy(self, top: int, left: int, h: int, w: int) -> np.ndarray:
        """The mask's pixels over rows top..top+h-1, repeated onto the 10 m grid (nearest)."""
        from rasterio.windows import Window

        f = self.factor
        r0, c0 = top // f, left // f
        r1 = min(-(-(top + h) // f), self.mask.height)
        c1 = min(-(-(left + w) // f), self.mask.width)
        window = Window(c0, r0, c1 - c0, r1 - r0)
        if self.product.cloud_kind == "MSK_CLASSI":
            opaque, cirrus = self.mask.read((1, 2), window=window)
            coarse = (opaque > 0) | (cirrus > 0)
        else:
            coarse = np.isin(self.mask.read(1, window=window), CLOUD_SCL_CLASSES)
        fine = np.repeat(np.repeat(coarse, f, axis=0), f, axis=1)
        dy, dx = top - r0 * f, left - c0 * f
        return fine[dy : dy + h, dx : dx + w]

    def close(self) -> None:
        for src in self.bands:
            src.close()
        if self.mask is not None:
            self.mask.close()


def open_product(scene, clouds: bool = True, baseline: str | None = None) -> ProductReader:
    """Inspect and open a product for reading (the caller closes it)."""
    return ProductReader(inspect_product(scene, baseline), clouds=clouds)
