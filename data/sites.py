"""Sites: the places the tiles show, their labels, and whole-site scenes.

The study's tiles are not places. Tiles whose footprints intersect show the same ground, and
each tile's mask marks only the facility the tile was centred on, so a pond is tailings in one
tile and background in the tile beside it. This module turns tiles back into places:

- `plan_sites`: tiles grouped into sites, the connected groups of tiles whose footprints
  intersect (an overlap of positive area; tiles that only touch along an edge are two places).
  Footprints are compared in one CRS (longitude/latitude, WGS 84) whatever each file's CRS:
  each tile's outline, densified to 21 points an edge, taken there by `rasterio.warp`, and two
  convex outlines intersect unless a separating axis (the outlines' own edges) parts them.
  Only headers are read. A site's id is `site-<first pair id>` (the ids' natural order), so
  it depends on its own tiles alone: adding or removing unrelated pairs never changes it.
  Pairs excluded by review (`labels.yaml`) still mark their ground (a site is a place, and a
  review must not move tiles between train and eval), but their masks join no label.
- `site_labels`: each tile's site label, the union of its site's masks reprojected (nearest)
  onto the tile's own grid with `rasterio.warp.reproject`, and the site's label agreement.
- `merge_site`: a site as one raster on one grid (rasterio's merge logic, below) with the
  union as its label and `MASK_NODATA` where no tile lies; `cut_site_windows` cuts it into
  tile-sized windows on a shifted grid: the scene split of real places (`data.scenes`).

Written here rather than with `rasterio.merge.merge`: merge pastes datasets of one CRS into the
first's grid but does not reproject, and needs open datasets, while a site may span two CRSs
(UTM zones) and its tiles are already in memory. So the grid is merge's (the union of the
tiles' bounds in the first tile's CRS, at its resolution, aligned to its pixels, so the first
tile's pixels land unchanged) and every tile is warped onto it with `rasterio.warp.reproject`
(nearest), which is what merge does per dataset; the image takes the first tile that covers a
pixel (merge's `method="first"`, tiles in pair-id order), the label the union of the masks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from data.pairs import SITE_PREFIX, GeoPair, PairSpec, _natural_key
from schemas import features as F

# One JSON line per site in a conversion's output (`tailings convert`, the ConversionReport).
SITES_FILE = "sites.jsonl"
# Points along each edge of a tile's outline taken to longitude/latitude: the outline of a
# projected tile is curved there; 21 points keep the chord error far below a pixel for tiles up
# to the 10000-pixel limit of `ValidationConfig.max_pixels`.
_DENSIFY = 21
# Two footprints intersect when they overlap by more than this share of a pixel across the
# thinnest direction: tiles exported side by side share an edge up to float noise.
_OVERLAP_PIXELS = 0.01


@dataclass(frozen=True)
class Footprint:
    """A tile's outline in longitude/latitude (a closed convex ring) and its pixel size there."""

    pair_id: str
    ring: tuple[tuple[float, float], ...]
    pixel_degrees: float

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        xs, ys = zip(*self.ring, strict=True)
        return min(xs), min(ys), max(xs), max(ys)


@dataclass(frozen=True)
class Site:
    """One place: its tiles (pair ids, natural order) and its extent in longitude/latitude."""

    site_id: str
    pair_ids: tuple[str, ...]
    bounds: tuple[float, float, float, float]  # west, south, east, north (degrees)

    def to_dict(self) -> dict:
        return {"site": self.site_id, "tiles": list(self.pair_ids), "bounds": list(self.bounds)}


@dataclass(frozen=True)
class SitePlan:
    """Every site of a data set, and which site each pair belongs to."""

    sites: tuple[Site, ...]
    site_of: Mapping[str, str] = field(default_factory=dict)  # pair id -> site id


def site_id_of(pair_ids: Iterable[str]) -> str:
    """`site-<first id>`: the first pair id in natural order names its site."""
    return SITE_PREFIX + min(pair_ids, key=_natural_key)


def footprint(pair_id: str, crs, transform, height: int, width: int) -> Footprint:
    """A tile's outline in longitude/latitude, densified along each edge."""
    from rasterio.crs import CRS
    from rasterio.warp import transform as warp_points

    t = _affine(transform)
    steps = np.linspace(0.0, 1.0, _DENSIFY)[:-1]
    cols = np.concatenate(
        [steps * width, np.full_like(steps, width), (1 - steps) * width, 0 * steps]
    )
    rows = np.concatenate(
        [0 * steps, steps * height, np.full_like(steps, height), (1 - steps) * height]
    )
    xs, ys = t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f
    crs = CRS.from_user_input(crs)
    if crs.is_geographic and crs.to_epsg() == 4326:
        lon, lat = np.asarray(xs, float), np.asarray(ys, float)
    else:
        lon, lat = (np.asarray(v, float) for v in warp_points(crs, "EPSG:4326", xs, ys))
    ring = tuple(zip(lon.tolist(), lat.tolist(), strict=True))
    # Pixel size in degrees: the tile's extent over its pixels, the smaller direction.
    w, s, e, n = min(lon), min(lat), max(lon), max(lat)
    return Footprint(pair_id, ring, min((e - w) / width, (n - s) / height))


def read_footprint(spec: PairSpec) -> Footprint | None:
    """The footprint of a pair from its image's header (its mask's if the image is missing or
    unreadable); None when neither header says where the tile lies (it forms a site alone)."""
    import rasterio
    from rasterio.errors import RasterioError

    for path in (spec.image, spec.mask):
        if not path:
            continue
        try:
            with rasterio.open(path) as src:
                if src.crs is None or src.transform.is_identity:
                    continue
                return footprint(spec.pair_id, src.crs, src.transform, src.height, src.width)
        except (RasterioError, OSError, ValueError):
            continue
    return None


def _overlap(a: Footprint, b: Footprint) -> bool:
    """Whether two convex outlines overlap by more than `_OVERLAP_PIXELS` (separating axes)."""
    aw, as_, ae, an = a.bounds
    bw, bs, be, bn = b.bounds
    margin = _OVERLAP_PIXELS * min(a.pixel_degrees, b.pixel_degrees)
    if min(ae, be) - max(aw, bw) <= margin or min(an, bn) - max(as_, bs) <= margin:
        return False  # the common case, and exact for north-up tiles in longitude/latitude
    pa, pb = np.asarray(a.ring), np.asarray(b.ring)
    for ring in (pa, pb):
        edges = np.roll(ring, -1, axis=0) - ring
        normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
        lengths = np.hypot(normals[:, 0], normals[:, 1])
        keep = lengths > 0
        normals = normals[keep] / lengths[keep, None]
        proj_a, proj_b = pa @ normals.T, pb @ normals.T
        gap = np.minimum(proj_a.max(0), proj_b.max(0)) - np.maximum(proj_a.min(0), proj_b.min(0))
        if (gap <= margin).any():
            return False
    return True


def group_footprints(pair_ids: Sequence[str], footprints: Mapping[str, Footprint]) -> SitePlan:
    """Connected groups of intersecting footprints; a pair without a footprint is a site alone."""
    parent = {pid: pid for pid in pair_ids}

    def root(pid: str) -> str:
        while parent[pid] != pid:
            parent[pid] = parent[parent[pid]]
            pid = parent[pid]
        return pid

    located = [pid for pid in pair_ids if footprints.get(pid) is not None]
    # Sorted by west edge, a tile is compared with those whose west edge lies before its east.
    located.sort(key=lambda pid: footprints[pid].bounds[0])
    for i, a in enumerate(located):
        east = footprints[a].bounds[2]
        for b in located[i + 1 :]:
            if footprints[b].bounds[0] >= east:
                break
            if _overlap(footprints[a], footprints[b]):
                parent[root(a)] = root(b)
    groups: dict[str, list[str]] = {}
    for pid in pair_ids:
        groups.setdefault(root(pid), []).append(pid)
    sites = []
    for members in groups.values():
        members.sort(key=_natural_key)
        boxes = [footprints[m].bounds for m in members if footprints.get(m) is not None]
        bounds = (
            (
                min(b[0] for b in boxes),
                min(b[1] for b in boxes),
                max(b[2] for b in boxes),
                max(b[3] for b in boxes),
            )
            if boxes
            else (math.nan,) * 4
        )
        sites.append(Site(site_id_of(members), tuple(members), tuple(round(v, 7) for v in bounds)))
    sites.sort(key=lambda s: _natural_key(s.pair_ids[0]))
    return SitePlan(tuple(sites), {pid: site.site_id for site in sites for pid in site.pair_ids})


def plan_sites(specs: Sequence[PairSpec]) -> SitePlan:
    """The sites of a data set's pairs, from their headers alone."""
    footprints = {spec.pair_id: read_footprint(spec) for spec in specs}
    return group_footprints([s.pair_id for s in specs], footprints)


def worst_first(rows: Iterable[dict]) -> list[dict]:
    """Site rows of a sites file (`SITES_FILE`) with a converted tile, lowest label agreement
    first (then the most disputed pixels, then the id): where the labels most need a look."""
    kept = [r for r in rows if r.get("converted")]
    return sorted(
        kept,
        key=lambda r: (
            r.get("agreement", 1.0),
            -r.get("disputed_pixels", 0),
            _natural_key(r["site"]),
        ),
    )


def site_cells(row: dict) -> tuple[str, str, str, str, str]:
    """One site as the reports show it: id, split, tiles (converted / all), agreement, and
    the disputed pixels over the union."""
    tiles = f"{len(row.get('converted', []))} / {len(row.get('tiles', row.get('converted', [])))}"
    agreement = f"{row['agreement']:.2f}" if "agreement" in row else "-"
    disputed = f"{row.get('disputed_pixels', 0)} / {row.get('union_pixels', 0)}"
    return row["site"], row.get("split", "") or "-", tiles, agreement, disputed


SITE_COLUMNS = (
    "site",
    "split",
    "tiles (converted / all)",
    "label agreement",
    "disputed / union px",
)


def site_digest(site_id: str) -> int:
    """A stable 64-bit hash of a site id (splits and folds are cut by it)."""
    return int.from_bytes(hashlib.sha256(site_id.encode()).digest()[:8], "big")


# --- Site labels ----------------------------------------------------------------------------


def _affine(transform):
    from affine import Affine

    return transform if isinstance(transform, Affine) else Affine(*tuple(transform)[:6])


def _crs(wkt: str):
    from rasterio.crs import CRS

    return CRS.from_user_input(wkt)  # WKT, or "EPSG:4326" as tests write it


def _warp(bands: np.ndarray, src: GeoPair, crs_wkt: str, transform, nodata, shape) -> np.ndarray:
    """`bands` (B x H x W, on `src`'s grid) on another grid, nearest; `nodata` where `src`
    does not reach."""
    from rasterio.warp import Resampling, reproject

    out = np.full((bands.shape[0], *shape), nodata, bands.dtype)
    reproject(
        source=np.ascontiguousarray(bands),
        destination=out,
        src_transform=_affine(src.transform),
        src_crs=_crs(src.crs_wkt),
        src_nodata=nodata,
        dst_transform=_affine(transform),
        dst_crs=_crs(crs_wkt),
        dst_nodata=nodata,
        resampling=Resampling.nearest,
    )
    return out


def warp_mask(src: GeoPair, crs_wkt: str, transform, shape: tuple[int, int]) -> np.ndarray:
    """`src`'s mask on another grid (nearest), `MASK_NODATA` where `src` does not reach."""
    mask = src.mask.astype(np.uint8)[None]
    return _warp(mask, src, crs_wkt, transform, F.MASK_NODATA, shape)[0]


def warp_image(src: GeoPair, crs_wkt: str, transform, shape: tuple[int, int]) -> np.ndarray:
    """`src`'s image on another grid (nearest): H x W x bands, NaN where `src` does not reach."""
    image = np.moveaxis(src.image, -1, 0).astype(np.float32)
    return np.moveaxis(_warp(image, src, crs_wkt, transform, np.nan, shape), 0, -1)


def site_label(tile: GeoPair, others: Sequence[GeoPair]) -> np.ndarray:
    """A tile's site label: its own mask or'ed with every other mask of its site (`others`)
    warped (nearest) onto the tile's own grid."""
    union = tile.mask.astype(bool)
    for other in others:
        if other.pair_id != tile.pair_id:
            union |= warp_mask(other, tile.crs_wkt, tile.transform, tile.mask.shape) == 1
    return union.astype(np.uint8)


def site_labels(tiles: Sequence[GeoPair]) -> dict[str, np.ndarray]:
    """Every tile's site label (`site_label`); `tiles` are one site's labelled tiles."""
    return {tile.pair_id: site_label(tile, tiles) for tile in tiles}


def attach_sites(pairs: Sequence[GeoPair], site_of: Mapping[str, str]) -> list[GeoPair]:
    """`pairs` (validated) with their site ids and site labels, as the conversion writes them:
    the union over the pairs given (leave out excluded ones to keep their masks out)."""
    import dataclasses

    groups: dict[str, list[GeoPair]] = {}
    for pair in pairs:
        groups.setdefault(site_of.get(pair.pair_id) or SITE_PREFIX + pair.pair_id, []).append(pair)
    out = {}
    for site_id, tiles in groups.items():
        for tile in tiles:
            label = site_label(tile, tiles)
            out[tile.pair_id] = dataclasses.replace(tile, site_id=site_id, site_mask=label)
    return [out[p.pair_id] for p in pairs]


def site_votes(tiles: Sequence[GeoPair]) -> tuple[np.ndarray, np.ndarray]:
    """On the site's grid (`site_grid`): how many tiles label each pixel tailings, and how
    many label it background."""
    return _votes(tiles, *site_grid(tiles))


def _votes(tiles: Sequence[GeoPair], crs_wkt: str, transform, shape) -> tuple[np.ndarray, ...]:
    """`site_votes` on a given grid."""
    yes = np.zeros(shape, np.uint8)
    no = np.zeros(shape, np.uint8)
    for tile in tiles:
        mask = warp_mask(tile, crs_wkt, transform, shape)
        yes += mask == 1
        no += mask == 0
    return yes, no


def agreement(votes_tailings: np.ndarray, votes_background: np.ndarray) -> dict:
    """Label agreement of a site: pixels one tile labels tailings and an overlapping tile
    labels background ("disputed"), as a share of the union of the site's masks."""
    union = int((votes_tailings > 0).sum())
    disputed = int(((votes_tailings > 0) & (votes_background > 0)).sum())
    return {
        "union_pixels": union,
        "disputed_pixels": disputed,
        "agreement": round(1 - disputed / union, 4) if union else 1.0,
    }


def site_agreement(tiles: Sequence[GeoPair]) -> dict:
    """`agreement` of one site's labelled tiles."""
    return agreement(*site_votes(tiles))


# --- Whole-site rasters ---------------------------------------------------------------------


@dataclass
class SiteRaster:
    """A site merged onto one grid: image (0 where no tile lies), union label (`MASK_NODATA`
    where no tile lies) and how many tiles call each pixel tailings / background."""

    site_id: str
    pair_ids: tuple[str, ...]
    image: np.ndarray  # float32 H x W x bands
    label: np.ndarray  # uint8 H x W: 0 / 1 / MASK_NODATA
    votes_tailings: np.ndarray  # uint8 H x W
    votes_background: np.ndarray  # uint8 H x W
    crs_wkt: str
    epsg: int
    transform: tuple[float, ...]
    band_names: tuple[str, ...]

    @property
    def agreement(self) -> dict:
        return agreement(self.votes_tailings, self.votes_background)


def site_grid(tiles: Sequence[GeoPair]) -> tuple[str, tuple[float, ...], tuple[int, int]]:
    """Merge's grid for `tiles`: the first tile's CRS and pixels, the union of all bounds."""
    from rasterio.warp import transform_bounds

    first = tiles[0]
    t0 = _affine(first.transform)
    if t0.b or t0.d:
        raise ValueError(f"tile {first.pair_id}: a rotated grid cannot anchor a site raster")
    crs0 = _crs(first.crs_wkt)
    lefts, bottoms, rights, tops = [], [], [], []
    for tile in tiles:
        t = _affine(tile.transform)
        h, w = tile.mask.shape
        cols, rows = np.array([0, w, w, 0]), np.array([0, 0, h, h])
        xs, ys = t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f
        bounds = (min(xs), min(ys), max(xs), max(ys))
        if tile is not first and _crs(tile.crs_wkt) != crs0:
            bounds = transform_bounds(_crs(tile.crs_wkt), crs0, *bounds, densify_pts=_DENSIFY)
        left, bottom, right, top = bounds
        lefts.append(left), bottoms.append(bottom), rights.append(right), tops.append(top)
    # Whole pixels of the first tile's grid, outwards (a hair of float noise is not a pixel).
    eps = 1e-6
    col0 = math.floor((min(lefts) - t0.c) / t0.a + eps)
    col1 = math.ceil((max(rights) - t0.c) / t0.a - eps)
    row0 = math.floor((max(tops) - t0.f) / t0.e + eps)
    row1 = math.ceil((min(bottoms) - t0.f) / t0.e - eps)
    transform = (t0.a, 0.0, t0.c + col0 * t0.a, 0.0, t0.e, t0.f + row0 * t0.e)
    return first.crs_wkt, transform, (row1 - row0, col1 - col0)


def merge_site(site_id: str, tiles: Sequence[GeoPair]) -> SiteRaster:
    """`tiles` (one site's, validated) as one raster: see the module docstring."""
    tiles = sorted(tiles, key=lambda t: _natural_key(t.pair_id))
    crs_wkt, transform, shape = site_grid(tiles)
    bands = tiles[0].image.shape[-1]
    image = np.full((*shape, bands), np.nan, np.float32)
    for tile in tiles:  # merge's method="first"
        warped = warp_image(tile, crs_wkt, transform, shape)
        empty = np.isnan(image[..., 0])
        image[empty] = warped[empty]
    yes, no = _votes(tiles, crs_wkt, transform, shape)
    covered = ~np.isnan(image[..., 0])
    label = np.where(covered, (yes > 0).astype(np.uint8), np.uint8(F.MASK_NODATA)).astype(np.uint8)
    image[~covered] = 0.0
    return SiteRaster(
        site_id=site_id,
        pair_ids=tuple(t.pair_id for t in tiles),
        image=image,
        label=label,
        votes_tailings=yes,
        votes_background=no,
        crs_wkt=crs_wkt,
        epsg=tiles[0].epsg,
        transform=tuple(float(v) for v in transform),
        band_names=tiles[0].band_names,
    )


def shifted(transform: Sequence[float], rows: int, cols: int) -> tuple[float, ...]:
    """An affine (a, b, c, d, e, f) moved so that pixel (rows, cols) becomes the origin."""
    a, b, c, d, e, f = transform
    return (a, b, c + a * cols + b * rows, d, e, f + d * cols + e * rows)


def window_offset(site_id: str, seed: int, size: int) -> tuple[int, int]:
    """The shifted grid's offset (oy, ox) for one site, in [size/8, 7 size/8): drawn from the
    seed and the site id alone, so a site's windows do not depend on the other sites."""
    rng = np.random.default_rng([seed, site_digest(site_id)])
    low, high = size // 8, size - size // 8
    return int(rng.integers(low, high)), int(rng.integers(low, high))


def window_origins(
    shape: tuple[int, int], size: int, offset: tuple[int, int]
) -> list[tuple[int, int]]:
    """Origins of tile-sized windows on a grid shifted by `offset` covering every pixel."""
    (height, width), (oy, ox) = shape, offset
    return [(y, x) for y in range(-oy, height, size) for x in range(-ox, width, size)]


def cut_site_windows(
    site: SiteRaster, size: int, offset: tuple[int, int]
) -> Iterator[tuple[GeoPair, str]]:
    """Every window of a site raster with at least one pixel of data, as (GeoPair, site id).

    Its label is the site's union (in both masks: a place has one label), `MASK_NODATA`
    outside the tiles; its georeference is the site grid's, moved to the window's origin.
    """
    height, width = site.label.shape
    bands = site.image.shape[-1]
    for y, x in window_origins((height, width), size, offset):
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + size, height), min(x + size, width)
        label = np.full((size, size), F.MASK_NODATA, np.uint8)
        label[y0 - y : y1 - y, x0 - x : x1 - x] = site.label[y0:y1, x0:x1]
        if not (label != F.MASK_NODATA).any():
            continue
        image = np.zeros((size, size, bands), np.float32)
        image[y0 - y : y1 - y, x0 - x : x1 - x] = site.image[y0:y1, x0:x1]
        yield (
            GeoPair(
                pair_id=f"{site.site_id}_y{y}_x{x}",
                image=image,
                mask=label,
                band_names=site.band_names,
                crs_wkt=site.crs_wkt,
                epsg=site.epsg,
                transform=shifted(site.transform, rows=y, cols=x),
            ),
            site.site_id,
        )
