"""Pixel and polygon areas on the ellipsoid and in projected CRSs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

from data.geo import AreaError, Ellipsoid, ellipsoid_of, pixel_areas, polygon_area, ring_area

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


def test_rotated_geographic_grid_uses_the_local_element():
    north_up = pixel_areas(from_origin(-44.6, -21.0, 1e-4, 1e-4), WGS84, 4, 3)
    rotated = pixel_areas(Affine(1e-4, 1e-9, -44.6, 1e-9, -1e-4, -21.0), WGS84, 4, 3)
    assert rotated.shape == (4, 3)
    np.testing.assert_allclose(rotated, np.broadcast_to(north_up, (4, 3)), rtol=1e-5)


def test_projected_pixels_are_their_size_in_metres():
    utm = CRS.from_epsg(32723)
    assert pixel_areas(from_origin(600000, 7700000, 10, 10), utm, 5, 7)[0, 0] == 100.0
    feet = CRS.from_epsg(2229)  # California zone 5, US survey feet
    area = pixel_areas(from_origin(0, 0, 10, 10), feet, 1, 1)[0, 0]
    assert area == pytest.approx(100 * 0.3048006096**2, rel=1e-6)


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
