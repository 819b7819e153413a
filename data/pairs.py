"""Find image/mask pairs in two folders and validate each pair with rasterio.

Validation returns a `Rejection` (a stable reason code plus a human detail) instead of raising,
so one bad file never stops a conversion and every bad pair is reported with its cause.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.config import PairingConfig, ValidationConfig

# Stable reason codes: they appear in rejected.jsonl and summary.json, so users can grep them.
MISSING_MASK = "missing_mask"
MISSING_IMAGE = "missing_image"
DUPLICATE_ID = "duplicate_id"
UNREADABLE_IMAGE = "unreadable_image"
UNREADABLE_MASK = "unreadable_mask"
IMAGE_BAND_COUNT = "image_band_count"
IMAGE_DTYPE = "image_dtype"
MASK_BAND_COUNT = "mask_band_count"
MASK_VALUES = "mask_values"
SHAPE_MISMATCH = "shape_mismatch"
MISSING_CRS = "missing_crs"
CRS_MISMATCH = "crs_mismatch"
TRANSFORM_MISMATCH = "transform_mismatch"
NON_FINITE_PIXELS = "non_finite_pixels"
BROKEN_LINK = "broken_link"  # a symbolic link that resolves to nothing (dangling, or a loop)
TOO_LARGE = "too_large"  # the header claims more pixels than ValidationConfig.max_pixels
TILE_SIZE = "tile_size"  # not the tile size the pipeline trains on
CONVERSION_FAILED = "conversion_failed"  # anything else one pair raised while converting
# A site's id: this prefix and the first of its pair ids (`data.sites`).
SITE_PREFIX = "site-"
# Not a file problem: a person excluded the pair in labels.yaml (see `data.labels`).
EXCLUDED_BY_REVIEW = "excluded_by_review"


@dataclass(frozen=True)
class PairSpec:
    """One candidate pair as found on disk; either path may be missing."""

    pair_id: str
    image: str | None
    mask: str | None
    # Every file claiming this id when more than one does (then the pair is rejected).
    duplicates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rejection:
    """Why a pair was not converted."""

    pair_id: str
    image: str | None
    mask: str | None
    reason: str
    detail: str

    @classmethod
    def of(cls, spec: PairSpec, reason: str, detail: str) -> Rejection:
        return cls(spec.pair_id, spec.image, spec.mask, reason, detail)

    def to_dict(self) -> dict[str, str | None]:
        return {
            "id": self.pair_id,
            "image": self.image,
            "mask": self.mask,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class GeoPair:
    """A validated pair: pixels plus the georeference to write predictions back onto."""

    pair_id: str
    image: np.ndarray  # float32, H x W x bands, file band order
    mask: np.ndarray  # uint8, H x W
    band_names: tuple[str, ...]
    crs_wkt: str
    epsg: int
    transform: tuple[float, float, float, float, float, float]
    # The place it shows (`data.sites`) and its site label (the union of the site's masks on
    # this grid); unset until the pair's site is known: then it is a site of its own.
    site_id: str = ""
    site_mask: np.ndarray | None = None

    @property
    def site(self) -> str:
        return self.site_id or SITE_PREFIX + self.pair_id

    @property
    def site_label(self) -> np.ndarray:
        return self.mask if self.site_mask is None else self.site_mask


class PairError(Exception):
    """Raised inside validation; carries the reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _Uri(str):
    """An object URI with the two `Path` attributes pairing uses (`str()` is the URI)."""

    @property
    def stem(self) -> str:
        return Path(self.rsplit("/", 1)[-1]).stem


def _pair_key(path: Path, prefix: str) -> str:
    stem = path.stem
    return stem[len(prefix) :] if stem.startswith(prefix) and len(stem) > len(prefix) else stem


def _list_rasters(folder: Path, cfg: PairingConfig) -> list[Path]:
    # Hidden files (macOS `._img_1.tif` resource forks, editors' temp files) are not rasters.
    # A broken symbolic link is listed too, so it becomes a rejected pair with its reason.
    return sorted(
        p
        for p in folder.iterdir()
        if (p.is_file() or p.is_symlink())
        and not p.name.startswith(".")
        and p.suffix.lower() in cfg.extensions
    )


def list_objects(folder: str, cfg: PairingConfig) -> list[tuple[str, int, float]]:
    """(URI, size, last update in seconds) of the rasters directly in an object store
    "folder" (gs://bucket/data/img), sorted, from one listing with Beam's FileSystems (its
    `*` does not cross `/`). Hidden names are skipped as on disk; a prefix with no objects
    lists nothing (object stores have no empty folders)."""
    from apache_beam.io.filesystems import FileSystems

    pattern = FileSystems.join(folder.rstrip("/"), "*")
    found = []
    for meta in FileSystems.match([pattern])[0].metadata_list:
        name = meta.path.rsplit("/", 1)[-1]
        if name and not name.startswith(".") and Path(name).suffix.lower() in cfg.extensions:
            found.append((meta.path, meta.size_in_bytes, meta.last_updated_in_seconds))
    return sorted(found)


def discover_pairs(
    images_dir: str | Path, masks_dir: str | Path, cfg: PairingConfig = PairingConfig()
) -> list[PairSpec]:
    """Pair `img_<id>.tif` with `mask_<id>.tif` (or equal file names) across two folders.

    Unpaired files come back as specs with one side missing, so they are rejected and reported
    like any other bad pair instead of being silently ignored. The folders may be object store
    URIs (gs://...): listed with `list_objects`, and a spec's paths are then URIs, which GDAL
    opens directly (/vsigs/).
    """
    if "://" in str(images_dir) or "://" in str(masks_dir):
        remote = {
            "image": [o[0] for o in list_objects(str(images_dir), cfg)],
            "mask": [o[0] for o in list_objects(str(masks_dir), cfg)],
        }
        for label, side, folder in (("images", "image", images_dir), ("masks", "mask", masks_dir)):
            if not remote[side]:
                raise FileNotFoundError(f"{label} folder has no rasters: {folder}")
    else:
        images_dir, masks_dir = Path(images_dir), Path(masks_dir)
        for label, folder in (("images", images_dir), ("masks", masks_dir)):
            if not folder.is_dir():
                raise FileNotFoundError(f"{label} folder does not exist: {folder}")
        remote = None
    by_key: dict[str, dict[str, list[Path]]] = {}
    for side, folder, prefix in (
        ("image", images_dir, cfg.image_prefix),
        ("mask", masks_dir, cfg.mask_prefix),
    ):
        paths = _list_rasters(folder, cfg) if remote is None else [_Uri(u) for u in remote[side]]
        for path in paths:
            by_key.setdefault(_pair_key(path, prefix), {"image": [], "mask": []})[side].append(path)
    specs = []
    for key in sorted(by_key, key=_natural_key):
        sides = by_key[key]
        image = [str(p) for p in sides["image"]]
        mask = [str(p) for p in sides["mask"]]
        if len(image) > 1 or len(mask) > 1:
            # Two files claim the same id: keep the ambiguity visible rather than guess.
            first_image, first_mask = (image or [None])[0], (mask or [None])[0]
            specs.append(PairSpec(key, first_image, first_mask, (*image, *mask)))
        else:
            specs.append(PairSpec(key, image[0] if image else None, mask[0] if mask else None))
    return specs


def _natural_key(text: str) -> tuple:
    """Sort `2` before `10`, so listings read like the folder."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text))


def _read(path: str, unreadable: str):
    """Open and fully read a raster; any GDAL failure becomes a reason, not a traceback."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            return src.read(), src.profile, src.crs, src.transform, src.descriptions
    except (RasterioError, OSError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PairError(unreadable, f"{path}: {message}") from None


def _check_header(path: str, unreadable: str, cfg: ValidationConfig) -> tuple[int, int]:
    """What a raster's header says, checked before its pixels are read: a link that resolves,
    a size that fits in memory. Returns (height, width)."""
    import os

    import rasterio
    from rasterio.errors import RasterioError

    if os.path.islink(path) and not os.path.exists(path):
        raise PairError(
            BROKEN_LINK, f"{path}: symbolic link to {os.readlink(path)!r} resolves to nothing"
        )
    try:
        with rasterio.open(path) as src:
            height, width, count = src.height, src.width, src.count
    except (RasterioError, OSError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PairError(unreadable, f"{path}: {message}") from None
    if height * width > cfg.max_pixels:
        raise PairError(
            TOO_LARGE,
            f"{path}: header claims {width}x{height} (WxH) x {count} bands, more than "
            f"{cfg.max_pixels} pixels a band; not read",
        )
    return height, width


def _transforms_match(a, b, tolerance: float) -> bool:
    scale = max(abs(a.a), abs(a.e), abs(a.b), abs(a.d), 1e-12)
    return all(
        math.isclose(x, y, rel_tol=0, abs_tol=tolerance * scale) for x, y in zip(a, b, strict=True)
    )


def load_pair(spec: PairSpec, cfg: ValidationConfig = ValidationConfig()) -> GeoPair:
    """Read and validate one pair, raising `PairError` with the first problem found."""
    if spec.duplicates:
        raise PairError(
            DUPLICATE_ID,
            f"several files share id {spec.pair_id!r}: {', '.join(spec.duplicates)}",
        )
    if spec.mask is None:
        raise PairError(MISSING_MASK, f"{spec.image}: no mask file with id {spec.pair_id!r}")
    if spec.image is None:
        raise PairError(MISSING_IMAGE, f"{spec.mask}: no image file with id {spec.pair_id!r}")

    size = _check_header(spec.image, UNREADABLE_IMAGE, cfg)
    _check_header(spec.mask, UNREADABLE_MASK, cfg)
    if cfg.tile_size is not None and size != (cfg.tile_size, cfg.tile_size):
        raise PairError(
            TILE_SIZE,
            f"{spec.image}: {size[1]}x{size[0]} (WxH) pixels; the pipeline trains on "
            f"{cfg.tile_size}x{cfg.tile_size} tiles (TransformConfig.tile_size)",
        )
    image, image_profile, image_crs, image_tf, descriptions = _read(spec.image, UNREADABLE_IMAGE)
    mask, _, mask_crs, mask_tf, _ = _read(spec.mask, UNREADABLE_MASK)

    if image.shape[0] != cfg.image_bands:
        raise PairError(
            IMAGE_BAND_COUNT,
            f"{spec.image}: {image.shape[0]} bands, expected {cfg.image_bands}",
        )
    if not np.issubdtype(image.dtype, np.floating):
        raise PairError(IMAGE_DTYPE, f"{spec.image}: dtype {image.dtype}, expected a float type")
    if mask.shape[0] != 1:
        raise PairError(MASK_BAND_COUNT, f"{spec.mask}: {mask.shape[0]} bands, expected 1")
    if image.shape[1:] != mask.shape[1:]:
        raise PairError(
            SHAPE_MISMATCH,
            f"image {spec.image} is {image.shape[2]}x{image.shape[1]} (WxH) but mask "
            f"{spec.mask} is {mask.shape[2]}x{mask.shape[1]}",
        )
    if image_crs is None:
        raise PairError(MISSING_CRS, f"{spec.image}: no CRS; predictions could not be placed")
    if mask_crs != image_crs:
        raise PairError(CRS_MISMATCH, f"image CRS {image_crs} != mask CRS {mask_crs} ({spec.mask})")
    if not _transforms_match(image_tf, mask_tf, cfg.transform_tolerance):
        raise PairError(
            TRANSFORM_MISMATCH,
            f"image transform {tuple(image_tf)[:6]} != mask transform {tuple(mask_tf)[:6]}"
            f" ({spec.mask})",
        )
    finite = np.isfinite(image)
    if not finite.all():
        n_nan = int(np.isnan(image).sum())
        n_inf = int(np.isinf(image).sum())
        raise PairError(NON_FINITE_PIXELS, f"{spec.image}: {n_nan} NaN and {n_inf} infinite values")
    values = np.unique(mask)
    if not set(values.tolist()) <= set(cfg.mask_values):
        shown = ", ".join(str(v) for v in values[:8]) + (" ..." if values.size > 8 else "")
        raise PairError(
            MASK_VALUES,
            f"{spec.mask}: values {{{shown}}}, expected only {set(cfg.mask_values)}",
        )

    band_names = tuple(
        d if d else f"band_{i + 1}" for i, d in enumerate(descriptions or [None] * image.shape[0])
    )
    return GeoPair(
        pair_id=spec.pair_id,
        image=np.ascontiguousarray(np.transpose(image, (1, 2, 0)), dtype="<f4"),
        mask=np.ascontiguousarray(mask[0], dtype=np.uint8),
        band_names=band_names,
        crs_wkt=image_crs.to_wkt(),
        epsg=int(image_crs.to_epsg() or 0),
        transform=tuple(float(v) for v in tuple(image_tf)[:6]),
    )


def excluded_by_review(spec: PairSpec, reason: str) -> Rejection:
    """The rejection of a pair a person excluded in labels.yaml (`data.labels`); not read."""
    return Rejection.of(spec, EXCLUDED_BY_REVIEW, f"excluded by review in labels.yaml: {reason}")


def validate(spec: PairSpec, cfg: ValidationConfig = ValidationConfig()) -> GeoPair | Rejection:
    """`load_pair`, with failures returned as a `Rejection` value."""
    try:
        return load_pair(spec, cfg)
    except PairError as err:
        return Rejection(spec.pair_id, spec.image, spec.mask, err.reason, err.detail)
