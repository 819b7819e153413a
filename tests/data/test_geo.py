"""Pixel and polygon areas on the ground (geodesic, on the CRS's ellipsoid) in any CRS."""

from __future__ import annotations

import math

import numpy as np
import pyproj
import pytest
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin
from rasterio.warp import transform

from data import geo
from data.geo import (
    AreaError,
    Ellipsoid,
    area_method,
    ellipsoid_of,
    pixel_areas,
    pixel_size_m,
    polygon_area,
    ring_area,
)

WGS84 = CRS.from_epsg(4326)
WGS84_SURFACE_M2 = 510_065_621.724e6  # the ellipsoid's total area (NIMA TR8350.2, table 3.5)


def test_one_octant_of_the_earth_has_an_eighth_of_its_area():
    # 90 x 90 one-degree pixels from the equator to the pole: one eighth of the ellipsoid.
    areas = pixel_areas(from_origin(0.0, 90.0, 1.0, 1.0), WGS84, 90, 90)
    assert areas.shape == (90, 1)
    assert areas.sum() * 90 == pytest.approx(WGS84_SURFACE_M2 / 8, rel=1e-9)


def test_pixel_area_shrinks_with_latitude_like_the_cosine():
    size = 8.93e-5  # the data's ~10 m pixels
    equator = pixel_areas(from_origin(0.0, size / 2, size, size), WGS84, 1, 1)[0, 0]
    brazil = pixel_areas(from_origin(-44.6, -21.0, size, size), WGS84, 1, 1)[0, 0]
    assert 98.0 < equator < 99.5  # ~9.94 m x 9.87 m
    assert brazil / equator == pytest.approx(math.cos(math.radians(21.0)), rel=3e-3)


def test_rows_match_the_local_area_element_at_their_centres():
    transform = from_origin(-44.6, -21.0, 8.93e-5, 8.93e-5)
    rows = pixel_areas(transform, WGS84, 448, 448)[:, 0]
    centres = -21.0 - 8.93e-5 * (np.arange(448) + 0.5)
    local = Ellipsoid().local_area(centres) * 8.93e-5**2
    np.testing.assert_allclose(rows, local, rtol=1e-7)


def test_rotated_geographic_grid_matches_the_north_up_one():
    north_up = pixel_areas(from_origin(-44.6, -21.0, 1e-4, 1e-4), WGS84, 4, 3)
    rotated = pixel_areas(Affine(1e-4, 1e-9, -44.6, 1e-9, -1e-4, -21.0), WGS84, 4, 3)
    assert rotated.shape == (4, 3)
    np.testing.assert_allclose(rotated, np.broadcast_to(north_up, (4, 3)), rtol=1e-5)


# --------------------------------------------------------------------------- projected CRSs
UTM = CRS.from_epsg(32723)  # WGS 84 / UTM 23S: the study area (21 S, 44 W)
WEB_MERCATOR = CRS.from_epsg(3857)
TILE_ORIGIN = (600000.0, 7670000.0)  # a 448 x 448 tile of 10 m pixels, 100 km east of the CM
TILE = 448


def geod_area(crs: CRS, ring: np.ndarray) -> float:
    """The reference: Karney's geodesic area (pyproj's Geod on WGS 84) of a closed ring of
    `crs` coordinates, taken to longitude/latitude by PROJ."""
    to_lonlat = pyproj.Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(ring[:-1, 0], ring[:-1, 1])
    area, _ = pyproj.Geod(ellps="WGS84").polygon_area_perimeter(lon, lat)
    return abs(area)


# Agreement asked of the same region measured two ways: the methods differ only in how a 10 m
# edge runs between two corners (geodesic, straight in the CRS, straight in lon/lat), which
# moves a 4.5 km tile's area by ~1e-11 (measured), and in float rounding of ~1e13 m^2 terms.
SAME_REGION_REL = 1e-9


def utm_scale_factor(easting: np.ndarray, lat: float) -> np.ndarray:
    """Transverse Mercator's point scale factor from the easting, by hand (Ordnance Survey,
    "A guide to coordinate systems in Great Britain", C.3): k0 (1 + x^2/(2 rho nu) + x^4/(24
    rho^2 nu^2)) with x = (E - 500 km) / k0 and the radii rho, nu at the latitude."""
    k0 = 0.9996
    rho, nu = (float(r) for r in Ellipsoid().radii(np.array(lat)))
    x = (easting - 500_000.0) / k0
    return k0 * (1 + x**2 / (2 * rho * nu) + x**4 / (24 * rho**2 * nu**2))


def tile_outline(x0: float, y0: float, n: int, size: float) -> np.ndarray:
    """The closed outline of an n x n grid of `size` pixels from (x0, y0), every pixel corner."""
    edge = np.arange(n + 1) * size
    top = np.c_[x0 + edge, np.full(n + 1, y0)]
    right = np.c_[np.full(n, x0 + size * n), y0 - edge[1:]]
    bottom = np.c_[x0 + edge[::-1][1:], np.full(n, y0 - size * n)]
    left = np.c_[np.full(n, x0), y0 - edge[::-1][1:]]
    return np.vstack([top, right, bottom, left])


# Karney's area of the tile's outline, a vertex at every pixel corner: 2008.13 ha.
GEOD_TILE_M2 = geod_area(UTM, tile_outline(*TILE_ORIGIN, TILE, 10.0))


def test_utm_pixels_have_their_ground_area_not_their_grid_area():
    # Issue 16, defect 6: a projected CRS's pixels were their grid area (here 100 m^2).
    areas = pixel_areas(from_origin(*TILE_ORIGIN, 10, 10), UTM, TILE, TILE)
    assert areas.shape == (TILE, TILE)  # the scale factor varies along rows, not only down
    centres = TILE_ORIGIN[0] + 10 * (np.arange(TILE) + 0.5)
    by_hand = 100.0 / utm_scale_factor(centres, lat=-21.05) ** 2  # ~100.055 m^2
    np.testing.assert_allclose(areas, np.broadcast_to(by_hand, areas.shape), rtol=1e-8)
    assert areas.sum() == pytest.approx(GEOD_TILE_M2, rel=SAME_REGION_REL)


def test_web_mercator_pixels_shrink_with_latitude():
    # EPSG:3857 puts ellipsoidal latitudes on a sphere's Mercator: a pixel's ground area is
    # its grid area times M N cos^2(phi) / a^2 (phi from the row's y), 0.866 at 21 S.
    x0, y0 = -4902220.79, -2400015.22  # TILE_ORIGIN in EPSG:3857
    areas = pixel_areas(from_origin(x0, y0, 10, 10), WEB_MERCATOR, TILE, TILE)
    y = y0 - 10 * (np.arange(TILE) + 0.5)
    lat = np.degrees(2 * np.arctan(np.exp(y / 6378137.0)) - np.pi / 2)
    meridian, normal = Ellipsoid().radii(lat)
    by_hand = 100.0 * meridian * normal * np.cos(np.radians(lat)) ** 2 / 6378137.0**2
    np.testing.assert_allclose(areas, np.broadcast_to(by_hand[:, None], areas.shape), rtol=1e-8)
    assert areas.sum() / 1e4 == pytest.approx(1738.55, abs=0.01)  # the grid says 2007.04 ha


def test_one_region_has_one_area_in_utm_web_mercator_and_lonlat():
    """The UTM tile's outline, its corners taken to EPSG:3857 and EPSG:4326 coordinates, is the
    same ground: the same hectares in each CRS, and Karney's (pyproj's Geod) to 1e-9."""
    ring = tile_outline(*TILE_ORIGIN, TILE, 10.0)
    for crs in (UTM, WEB_MERCATOR, WGS84):
        x, y = transform(UTM, crs, ring[:, 0], ring[:, 1])
        area = ring_area(np.c_[x, y], crs)
        assert area == pytest.approx(GEOD_TILE_M2, rel=SAME_REGION_REL), crs.to_string()
    # Its four corners alone: edges straight in UTM, densified back at the pixel size.
    corners = ring[[0, TILE, 2 * TILE, 3 * TILE, 0]]
    assert ring_area(corners, UTM, max_segment=10.0) == pytest.approx(GEOD_TILE_M2, rel=1e-9)


def test_feet_are_converted_and_scaled():
    feet = CRS.from_epsg(2229)  # California zone 5, US survey feet; Lambert conformal
    area = pixel_areas(from_origin(6500000, 1850000, 10, 10), feet, 1, 1)[0, 0]
    # PROJ's areal scale factor there is 0.99998218: the ground is 1.8e-5 larger than the grid.
    assert area == pytest.approx(100 * 0.3048006096**2 / 0.9999821765, rel=1e-8)


def test_strips_give_the_same_areas_as_the_whole_grid(monkeypatch):
    grid = from_origin(*TILE_ORIGIN, 10, 10)
    whole = pixel_areas(grid, UTM, 40, 30)
    strips = [pixel_areas(grid, UTM, 40, 30, rows=(a, b)) for a, b in ((0, 7), (7, 40))]
    np.testing.assert_allclose(np.vstack(strips), whole, rtol=1e-12)
    monkeypatch.setattr(geo, "_CORNERS_PER_CHUNK", 31 * 3)  # 3 rows of corners at a time
    np.testing.assert_allclose(pixel_areas(grid, UTM, 40, 30), whole, rtol=1e-12)
    assert pixel_areas(grid, UTM, 40, 30, rows=(9, 9)).shape == (0, 30)
    degrees = from_origin(-44.6, -21.0, 8.93e-5, 8.93e-5)
    whole = pixel_areas(degrees, WGS84, 40, 30)
    np.testing.assert_array_equal(pixel_areas(degrees, WGS84, 40, 30, rows=(5, 9)), whole[5:9])
    with pytest.raises(ValueError, match="rows 30..41"):
        pixel_areas(grid, UTM, 40, 30, rows=(30, 41))


def test_utm_polygon_area_equals_its_pixels():
    grid = from_origin(*TILE_ORIGIN, 10, 10)
    areas = pixel_areas(grid, UTM, 6, 5)
    x0, y0 = TILE_ORIGIN
    # Rows 1..4, columns 0..4, less the pixel (2, 1): one polygon with a hole.
    outer = [(x0, y0 - 10), (x0 + 50, y0 - 10), (x0 + 50, y0 - 50), (x0, y0 - 50), (x0, y0 - 10)]
    hx, hy = x0 + 10, y0 - 20
    hole = [(hx, hy), (hx, hy - 10), (hx + 10, hy - 10), (hx + 10, hy), (hx, hy)]
    polygon = {"coordinates": [outer, hole]}
    expected = areas[1:5].sum() - areas[2, 1]
    # Geod sums, per edge, the area between the edge and the equator, terms far larger than
    # this polygon, so its area carries ~1e-7 m^2 of rounding per vertex (measured on single
    # 10 m pixels: median 2e-7, at most 6e-6 m^2); this ring and hole have 22 vertices.
    assert polygon_area(polygon, UTM, max_segment=10.0) == pytest.approx(expected, abs=1e-5)


def test_pixel_size_on_the_ground():
    x, y = pixel_size_m(from_origin(*TILE_ORIGIN, 10, 10), UTM, TILE, TILE)
    scale = float(utm_scale_factor(np.array(TILE_ORIGIN[0] + 10 * TILE / 2), lat=-21.05))
    assert x == pytest.approx(10 / scale, rel=1e-7) and y == pytest.approx(10 / scale, rel=1e-7)
    # The study's img_23: 0.000833 x 0.0000893 degree pixels at 20.4 S.
    img_23 = from_origin(-43.8867, -20.3971, 8.333865e-4, 8.928166e-5)
    x, y = pixel_size_m(img_23, WGS84, 448, 48)
    assert x == pytest.approx(87.0, abs=0.05) and y == pytest.approx(9.88, abs=0.01)


def test_area_method_names_the_ellipsoid():
    assert area_method(UTM) == "geodesic, on the WGS 84 ellipsoid"
    assert area_method(CRS.from_epsg(31983)) == "geodesic, on the GRS 1980 ellipsoid"


def test_a_crs_on_no_ellipsoid_has_no_areas():
    engineering = CRS.from_wkt('LOCAL_CS["site grid",UNIT["metre",1]]')
    with pytest.raises(AreaError, match="on no ellipsoid"):
        pixel_areas(from_origin(0, 0, 10, 10), engineering, 2, 2)


def test_polygon_area_equals_its_pixels():
    transform = from_origin(-44.6, -21.0, 1e-3, 1e-3)
    rows = pixel_areas(transform, WGS84, 5, 4)[:, 0]
    # A 3 x 4-pixel rectangle (rows 1..3, all 4 columns) with the pixel (2, 1) as a hole.
    x0, x1 = -44.6, -44.6 + 4e-3
    y0, y1 = -21.0 - 1e-3, -21.0 - 4e-3
    outer = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    hx, hy = -44.6 + 1e-3, -21.0 - 2e-3
    hole = [(hx, hy), (hx, hy - 1e-3), (hx + 1e-3, hy - 1e-3), (hx + 1e-3, hy), (hx, hy)]
    expected = 4 * rows[1:4].sum() - rows[2]
    assert polygon_area({"coordinates": [outer, hole]}, WGS84) == pytest.approx(expected, 1e-9)
    assert ring_area(outer[::-1], WGS84) == pytest.approx(4 * rows[1:4].sum(), rel=1e-9)


def test_ellipsoid_comes_from_the_crs():
    sirgas = ellipsoid_of(CRS.from_epsg(4674))  # SIRGAS 2000: GRS 1980
    assert sirgas.a == 6378137.0 and sirgas.inverse_flattening == pytest.approx(298.257222101)
    sphere = Ellipsoid(6371000.0, 0.0)
    assert sphere.zone(np.array([90.0]))[0] == pytest.approx(6371000.0**2)


def test_no_crs_is_an_error():
    with pytest.raises(AreaError, match="no CRS"):
        pixel_areas(from_origin(0, 0, 1, 1), None, 1, 1)
