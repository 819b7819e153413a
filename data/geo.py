"""Areas on the ground for raster pixels and polygons, in any CRS rasterio reads.

Projected CRSs: the affine determinant times the unit's size in metres, squared. Geographic
CRSs (the data's EPSG:4326): a pixel is a quadrangle on the ellipsoid whose area depends on
latitude. The area between the equator and latitude phi, per radian of longitude, is

    F(phi) = b^2 / 2 * (sin phi / (1 - e^2 sin^2 phi) + atanh(e sin phi) / e)

(the authalic-latitude integral), so a pixel row spanning phi1..phi2 and dlon radians covers
|F(phi1) - F(phi2)| * dlon exactly, and a polygon's area is the line integral of F(phi) dlon
around its rings (exact for the axis-aligned rings that pixel polygons have). The ellipsoid comes
from the CRS itself. pyproj is not a dependency here, so these few lines replace its Geod.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SQUARE_METRES_PER_HECTARE = 10_000.0
_SPHEROID = re.compile(
    r'(?:SPHEROID|ELLIPSOID)\["[^"]*",\s*([0-9.eE+-]+),\s*([0-9.eE+-]+)', re.IGNORECASE
)


class AreaError(ValueError):
    """A CRS this module cannot measure areas in."""


@dataclass(frozen=True)
class Ellipsoid:
    a: float = 6378137.0  # WGS 84
    inverse_flattening: float = 298.257223563

    @property
    def e2(self) -> float:
        f = 1.0 / self.inverse_flattening if self.inverse_flattening else 0.0
        return f * (2.0 - f)

    @property
    def b(self) -> float:
        return self.a * math.sqrt(1.0 - self.e2)

    def zone(self, lat_degrees: np.ndarray) -> np.ndarray:
        """F(phi): area from the equator to phi per radian of longitude, in m^2."""
        s = np.sin(np.radians(np.asarray(lat_degrees, dtype=np.float64)))
        e2 = self.e2
        if e2 == 0.0:
            return self.a**2 * s
        e = math.sqrt(e2)
        return self.b**2 / 2.0 * (s / (1.0 - e2 * s * s) + np.arctanh(e * s) / e)

    def local_area(self, lat_degrees: np.ndarray) -> np.ndarray:
        """m^2 per square degree at a latitude: M(phi) * N(phi) * cos(phi) in (rad/deg)^2."""
        phi = np.radians(np.asarray(lat_degrees, dtype=np.float64))
        w = 1.0 - self.e2 * np.sin(phi) ** 2
        meridian = self.a * (1.0 - self.e2) / w**1.5
        normal = self.a / np.sqrt(w)
        return meridian * normal * np.cos(phi) * (math.pi / 180.0) ** 2


def ellipsoid_of(crs) -> Ellipsoid:
    """The ellipsoid named in a rasterio CRS's WKT (WGS 84 if the WKT names none)."""
    match = _SPHEROID.search(crs.to_wkt())
    if not match:
        return Ellipsoid()
    return Ellipsoid(float(match.group(1)), float(match.group(2)))


def _metres_per_unit(crs) -> float:
    try:
        _, factor = crs.linear_units_factor
    except Exception as err:  # CRSError: no linear unit (e.g. an engineering CRS)
        raise AreaError(f"cannot tell the linear unit of {crs}: {err}") from None
    return float(factor)


def pixel_areas(transform, crs, height: int, width: int) -> np.ndarray:
    """Area of every pixel in m^2: shape (height, 1) when rows share one area, else (H, W)."""
    a, b, d, e, f = transform.a, transform.b, transform.d, transform.e, transform.f
    if crs is None:
        raise AreaError("the raster has no CRS, so its pixels have no area on the ground")
    if not crs.is_geographic:
        return np.full((height, 1), abs(a * e - b * d) * _metres_per_unit(crs) ** 2)
    ellipsoid = ellipsoid_of(crs)
    if b == 0.0 and d == 0.0:  # north-up: exact band areas per row
        edges = f + e * np.arange(height + 1, dtype=np.float64)
        zones = ellipsoid.zone(np.clip(edges, -90.0, 90.0))
        return (np.abs(np.diff(zones)) * abs(math.radians(a)))[:, None]
    rows, cols = np.mgrid[0:height, 0:width] + 0.5  # rotated grid: local element at centres
    lat = d * cols + e * rows + f
    return ellipsoid.local_area(lat) * abs(a * e - b * d)


def ring_area(ring: Sequence[Sequence[float]], crs) -> float:
    """Unsigned area in m^2 of one closed ring of (x, y) coordinates in `crs`."""
    xy = np.asarray(ring, dtype=np.float64)
    if len(xy) < 4:
        return 0.0
    x0, y0, x1, y1 = xy[:-1, 0], xy[:-1, 1], xy[1:, 0], xy[1:, 1]
    if not crs.is_geographic:
        return abs(0.5 * float(np.sum(x0 * y1 - x1 * y0))) * _metres_per_unit(crs) ** 2
    zones = ellipsoid_of(crs).zone(np.clip(np.stack([y0, y1]), -90.0, 90.0))
    return abs(float(np.sum(np.radians(x1 - x0) * (zones[0] + zones[1]) / 2.0)))


def polygon_area(geometry: dict, crs) -> float:
    """m^2 of a GeoJSON-like Polygon: the outer ring minus its holes."""
    rings = geometry["coordinates"]
    outer = ring_area(rings[0], crs)
    return outer - sum(ring_area(hole, crs) for hole in rings[1:])
