"""Areas and lengths on the ground, on the ellipsoid of the CRS, for rasters and polygons in any
CRS rasterio reads (geodesic areas, as GIS tools call them; never the grid's own area).

Why not the grid: a projected CRS's square metres are the map's, not the ground's. EPSG:3857 at
21 degrees south counts every ground square metre as 1 / cos^2(21) = 1.15 of its own; UTM is
off by its scale factor squared (-0.08 % on the central meridian to +0.2 % at a zone's edge).

pyproj does the geodesy:

- The CRS (`pyproj.CRS` from the rasterio CRS's WKT) gives its ellipsoid (`crs.ellipsoid`) and
  its own geographic CRS (`crs.geodetic_crs`); a `pyproj.Transformer` from the one to the other
  is the inverse projection alone, on the CRS's own datum (no datum shift). One per CRS, cached.
- Polygons: Karney's geodesic polygon area, `pyproj.Geod.polygon_area_perimeter`, of each ring
  in longitude/latitude; holes subtract. Geod sums, edge by edge, the area between the edge
  and the equator, terms far larger than a small polygon, so its area carries ~1e-7 m^2 of
  rounding per vertex (measured on 10 m pixels: median 2e-7, at most 6e-6 m^2): nothing
  against the 1e-6 ha areas are printed to. Lengths (`pixel_size_m`): `Geod.inv`.

Written here, and why:

- Per-pixel areas. Geod measures one polygon per call; a Sentinel-2 scene has 1.2e8 pixels.
  Measured on one 448 x 448 tile of 10 m UTM pixels (2 shared, busy cores): Geod, one
  `polygon_area_perimeter` per pixel on its 4 corners (already in longitude/latitude),
  2.1-2.3 s; the vectorised code below, corners' transform included, 0.074-0.079 s (about 30
  times faster: 22 minutes against 46 s for a Sentinel-2 scene's 600 such tiles). Over
  the tile the two agree to 6e-13; per pixel to 6e-8, which is Geod's rounding on a 100 m^2
  polygon (above): the code below is 3e-9 from the hand-derived UTM scale factor, Geod 6e-8.
  It uses the authalic-latitude integral: on the ellipsoid (semi-major axis a, eccentricity
  e, both from pyproj) the area between the equator and latitude phi, per radian of
  longitude, is

      F(phi) = b^2 / 2 * (sin phi / (1 - e^2 sin^2 phi) + atanh(e sin phi) / e)

  and (lon, lat) -> (lon, F(lat)) is the ellipsoid's cylindrical equal-area projection: a
  region's area on the ellipsoid is its plain (shoelace) area in those coordinates. So:
  - A north-up geographic raster's pixel rows are bands between two parallels and two
    meridians, straight lines in (lon, F(lat)): |F(phi1) - F(phi2)| * dlon is their exact area,
    one per row.
  - Any other raster (every projected CRS, rotated grids): each pixel's four corners, taken to
    longitude/latitude by the pyproj Transformer, and the shoelace area in (lon, F(lat)). Its
    edges are straight in the source CRS and are taken as straight in (lon, F(lat)); the only
    error is the sliver between the two curves, which shrinks as an edge's length cubed: a whole
    4.48 km UTM tile taken as 4 straight edges is 1.2e-8 off; a 10 m pixel agrees with PROJ's
    areal scale factor times its grid area to 4e-9, float rounding included. Neighbouring
    pixels share corners, so inside any group of pixels the slivers cancel and only its outline
    counts; summed, the 448 x 448 tile is 6e-13 from Geod's area of its outline
    (tests/data/test_geo.py).
  Limit: a pixel that encloses a pole is not measured right (no such scene here).
- Densifying polygon edges at the pixel size (`max_segment`), in the source CRS: pixel outlines
  then follow the pixels' edges, so a polygon's area is the sum of its pixels' areas. Neither
  pyproj nor any other dependency here segmentizes a ring (shapely is not one).
- Radii of curvature (`Ellipsoid.radii`, `local_area`): two closed formulas pyproj does not
  expose; the tests' hand-computed references use them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyproj
from pyproj.exceptions import CRSError, ProjError

SQUARE_METRES_PER_HECTARE = 10_000.0
_RADIANS_PER_DEGREE = math.pi / 180.0


class AreaError(ValueError):
    """A CRS or grid this module cannot measure on the ground."""


@dataclass(frozen=True)
class Ellipsoid:
    a: float = 6378137.0  # WGS 84
    inverse_flattening: float = 298.257223563  # 0: a sphere
    name: str = "WGS 84"

    @functools.cached_property
    def geod(self) -> pyproj.Geod:
        """pyproj's geodesics on this ellipsoid."""
        rf = self.inverse_flattening
        return pyproj.Geod(a=self.a, f=1.0 / rf if rf else 0.0)

    @property
    def e2(self) -> float:
        return self.geod.es

    @property
    def b(self) -> float:
        return self.geod.b

    def zone(self, lat_degrees: np.ndarray) -> np.ndarray:
        """F(phi): area from the equator to phi per radian of longitude, in m^2."""
        s = np.sin(np.radians(np.asarray(lat_degrees, dtype=np.float64)))
        e2 = self.e2
        if e2 == 0.0:
            return self.a**2 * s
        e = math.sqrt(e2)
        return self.b**2 / 2.0 * (s / (1.0 - e2 * s * s) + np.arctanh(e * s) / e)

    def radii(self, lat_degrees: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, N): the meridian and prime-vertical radii of curvature at a latitude, in m."""
        phi = np.radians(np.asarray(lat_degrees, dtype=np.float64))
        w = 1.0 - self.e2 * np.sin(phi) ** 2
        return self.a * (1.0 - self.e2) / w**1.5, self.a / np.sqrt(w)

    def local_area(self, lat_degrees: np.ndarray) -> np.ndarray:
        """m^2 per square degree at a latitude: M(phi) * N(phi) * cos(phi) in (rad/deg)^2."""
        meridian, normal = self.radii(lat_degrees)
        phi = np.radians(np.asarray(lat_degrees, dtype=np.float64))
        return meridian * normal * np.cos(phi) * _RADIANS_PER_DEGREE**2


@dataclass(frozen=True)
class _Geodesy:
    """What this module needs of one CRS, from pyproj."""

    description: str
    ellipsoid: Ellipsoid
    geographic: bool  # coordinates are longitude/latitude already
    degrees_per_unit: float  # of the longitude/latitude (the CRS's, or its geographic CRS's)
    inverse: pyproj.Transformer | None  # CRS -> its geographic CRS; None if geographic


def _degrees_per_unit(crs: pyproj.CRS) -> float:
    """A geographic CRS's angular unit in degrees (1 for the data's EPSG:4326)."""
    return crs.axis_info[0].unit_conversion_factor / _RADIANS_PER_DEGREE


@functools.lru_cache(maxsize=32)
def _geodesy(wkt: str, description: str) -> _Geodesy:
    try:
        crs = pyproj.CRS.from_wkt(wkt)
    except CRSError as err:
        raise AreaError(f"cannot read the CRS {description}: {err}") from None
    if crs.is_bound:  # WKT1 with TOWGS84: the CRS itself, without its datum shift
        crs = crs.source_crs
    if crs.is_compound:
        crs = crs.sub_crs_list[0]
    geographic_crs = crs.geodetic_crs
    if crs.ellipsoid is None or geographic_crs is None or not geographic_crs.is_geographic:
        raise AreaError(f"{description} is on no ellipsoid, so it has no ground areas")
    pyproj_ellipsoid = crs.ellipsoid
    ellipsoid = Ellipsoid(
        pyproj_ellipsoid.semi_major_metre,
        pyproj_ellipsoid.inverse_flattening,
        pyproj_ellipsoid.name,
    )
    if crs.is_geographic:
        return _Geodesy(description, ellipsoid, True, _degrees_per_unit(crs), None)
    try:
        inverse = pyproj.Transformer.from_crs(crs, geographic_crs, always_xy=True)
    except ProjError as err:
        raise AreaError(f"cannot take {description} to longitude/latitude: {err}") from None
    return _Geodesy(description, ellipsoid, False, _degrees_per_unit(geographic_crs), inverse)


def _geodesy_of(crs) -> _Geodesy:
    """The cached pyproj view of a rasterio (or pyproj) CRS."""
    if crs is None:
        raise AreaError("no CRS, so the raster or polygons have no area on the ground")
    return _geodesy(crs.to_wkt(), crs.to_string() or crs.to_wkt()[:80])


def ellipsoid_of(crs) -> Ellipsoid:
    """The ellipsoid of a rasterio CRS, from pyproj (AreaError if it is on none)."""
    return _geodesy_of(crs).ellipsoid


def area_method(crs) -> str:
    """How areas in `crs` are measured, for a user to read: 'geodesic, on the WGS 84 ellipsoid'."""
    ellipsoid = ellipsoid_of(crs)
    shape = "sphere" if ellipsoid.e2 == 0.0 else "ellipsoid"
    name = ellipsoid.name or f"a = {ellipsoid.a:g} m"
    return f"geodesic, on the {name} {shape}"


def _lonlat(geodesy: _Geodesy, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    scale = geodesy.degrees_per_unit
    if geodesy.inverse is None:
        return x * scale, y * scale
    try:
        lon, lat = geodesy.inverse.transform(x, y)
    except ProjError as err:
        raise AreaError(f"cannot take {geodesy.description} to longitude/latitude: {err}") from None
    lon, lat = np.asarray(lon) * scale, np.asarray(lat) * scale
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise AreaError(
            f"the raster reaches outside the area where {geodesy.description} is defined"
        )
    return lon, lat


def to_lonlat(crs, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude/latitude in degrees, on the CRS's own datum, of points in `crs`."""
    return _lonlat(_geodesy_of(crs), x, y)


def _wrap(dlon_radians: np.ndarray) -> np.ndarray:
    """Longitude differences into [-pi, pi): pixels across the antimeridian stay small."""
    return (dlon_radians + math.pi) % (2.0 * math.pi) - math.pi


def _grid_points(transform, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = transform
    return t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f


def pixel_areas(
    transform, crs, height: int, width: int, rows: tuple[int, int] | None = None
) -> np.ndarray:
    """Ground area of every pixel in m^2 (geodesic, on the CRS's ellipsoid; see the module).

    Shape (n, 1) when each row's pixels share one area (north-up geographic grids), else
    (n, width); n is `height`, or `stop - start` for `rows=(start, stop)`: a strip of a large
    scene, so that memory stays at a strip's corners whatever the scene's size."""
    start, stop = rows if rows is not None else (0, height)
    if not 0 <= start <= stop <= height:
        raise ValueError(f"rows {start}..{stop} are not inside a raster of {height} rows")
    if crs is None:
        raise AreaError("the raster has no CRS, so its pixels have no area on the ground")
    geodesy = _geodesy_of(crs)
    t = transform
    if geodesy.geographic and t.b == 0.0 and t.d == 0.0:  # north-up: exact band areas per row
        degrees = geodesy.degrees_per_unit
        edges = (t.f + t.e * np.arange(start, stop + 1, dtype=np.float64)) * degrees
        zones = geodesy.ellipsoid.zone(np.clip(edges, -90.0, 90.0))
        return (np.abs(np.diff(zones)) * abs(math.radians(t.a * degrees)))[:, None]
    # 250,000 corners at a time: one 448-row strip of a 10980-pixel-wide Sentinel-2 tile at
    # once took 0.7 GB (measured; 0.16 GB in chunks, 2.4 s either way).
    step = max(1, _CORNERS_PER_CHUNK // (width + 1))
    chunks = [
        _corner_areas(t, geodesy, row, min(row + step, stop), width)
        for row in range(start, stop, step)
    ]
    return np.vstack(chunks) if chunks else np.zeros((0, width))


_CORNERS_PER_CHUNK = 250_000


def _corner_areas(t, geodesy: _Geodesy, start: int, stop: int, width: int) -> np.ndarray:
    """Areas of rows start..stop-1 from their pixels' corners in (lon, F(lat))."""
    r, c = np.mgrid[start : stop + 1, 0 : width + 1].astype(np.float64)
    lon, lat = _lonlat(geodesy, *_grid_points(t, c, r))
    lam, g = np.radians(lon), geodesy.ellipsoid.zone(np.clip(lat, -90.0, 90.0))
    # Corners A (r, c), B (r, c+1), C (r+1, c+1), D (r+1, c): twice a quadrilateral's area is
    # the cross product of its diagonals, (C - A) x (D - B), in (lon, F(lat)).
    ac = _wrap(lam[1:, 1:] - lam[:-1, :-1])
    bd = _wrap(lam[1:, :-1] - lam[:-1, 1:])
    return 0.5 * np.abs(ac * (g[1:, :-1] - g[:-1, 1:]) - (g[1:, 1:] - g[:-1, :-1]) * bd)


def pixel_size_m(transform, crs, height: int, width: int) -> tuple[float, float]:
    """(along a row, down a column): the ground length in metres of one pixel step at the
    raster's centre, on the CRS's ellipsoid (the geodesic between the step's ends, Geod.inv)."""
    geodesy = _geodesy_of(crs)
    cols = np.array([width / 2.0, width / 2.0 + 1.0, width / 2.0])
    rows = np.array([height / 2.0, height / 2.0, height / 2.0 + 1.0])
    lon, lat = _lonlat(geodesy, *_grid_points(transform, cols, rows))
    _, _, lengths = geodesy.ellipsoid.geod.inv(lon[[0, 0]], lat[[0, 0]], lon[1:], lat[1:])
    return float(lengths[0]), float(lengths[1])


def _densify(xy: np.ndarray, max_segment: float) -> np.ndarray:
    """A closed ring with points added so that no edge is longer than `max_segment`."""
    start, step = xy[:-1], np.diff(xy, axis=0)
    length = np.hypot(step[:, 0], step[:, 1])
    # 1e-9 of slack: an edge of exactly n pixels gets n pieces, not n + 1.
    pieces = np.maximum(1, np.ceil(length / max_segment - 1e-9)).astype(np.int64)
    edge = np.repeat(np.arange(len(step)), pieces)
    k = np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    t = (k / np.repeat(pieces, pieces))[:, None]
    return np.vstack([start[edge] + t * step[edge], xy[-1:]])


def _ring_areas(rings: Sequence[np.ndarray], crs, max_segment: float | None) -> list[float]:
    """Unsigned geodesic areas in m^2 of closed (x, y) rings (Geod.polygon_area_perimeter),
    with one longitude/latitude transform for them all."""
    if crs is None:
        raise AreaError("no CRS, so the polygons have no area on the ground")
    if max_segment is not None:
        rings = [_densify(ring, max_segment) if len(ring) >= 4 else ring for ring in rings]
    if not rings:
        return []
    geodesy = _geodesy_of(crs)
    points = np.vstack(rings)
    lon, lat = _lonlat(geodesy, points[:, 0], points[:, 1])
    lat = np.clip(lat, -90.0, 90.0)
    geod = geodesy.ellipsoid.geod
    areas, at = [], 0
    for ring in rings:
        n = len(ring)
        if n < 4:
            areas.append(0.0)
        else:
            # Geod closes the ring itself: the repeated first vertex is left out.
            area, _ = geod.polygon_area_perimeter(lon[at : at + n - 1], lat[at : at + n - 1])
            areas.append(abs(area))
        at += n
    return areas


def ring_area(ring: Sequence[Sequence[float]], crs, max_segment: float | None = None) -> float:
    """Unsigned ground area in m^2 of one closed ring of (x, y) coordinates in `crs`.

    Edges are geodesics between the vertices. Pass `max_segment` (CRS units; the pixel size
    for pixel outlines) to follow edges that are straight in the CRS instead, as a projected
    or rotated grid's pixel edges are."""
    return _ring_areas([np.asarray(ring, dtype=np.float64)], crs, max_segment)[0]


def polygon_areas(geometries: Iterable[dict], crs, max_segment: float | None = None) -> list[float]:
    """m^2 of GeoJSON-like Polygons (outer ring minus holes), with one transform for them all."""
    rings: list[np.ndarray] = []
    counts: list[int] = []
    for geometry in geometries:
        polygon = [np.asarray(ring, dtype=np.float64) for ring in geometry["coordinates"]]
        rings += polygon
        counts.append(len(polygon))
    areas = _ring_areas(rings, crs, max_segment)
    out, at = [], 0
    for n in counts:
        out.append(areas[at] - sum(areas[at + 1 : at + n]))
        at += n
    return out


def polygon_area(geometry: dict, crs, max_segment: float | None = None) -> float:
    """m^2 of a GeoJSON-like Polygon: the outer ring minus its holes."""
    return polygon_areas([geometry], crs, max_segment)[0]
