"""Pairing and per-pair validation, one reason per kind of bad input."""

import numpy as np
from rasterio.transform import from_origin

from data import pairs
from tests.fixtures.geotiffs import PIXEL_DEGREES, make_pair, read_pixels, scene


def test_pairs_by_prefix_and_by_equal_names(tmp_path):
    img, msk = tmp_path / "img", tmp_path / "mask"
    make_pair(img, msk, "2")
    make_pair(img, msk, "10")
    (img / "img_2.tif").rename(img / "scene_a.tif")
    (msk / "mask_2.tif").rename(msk / "scene_a.tif")
    make_pair(img, msk, "7")
    (msk / "mask_7.tif").unlink()
    specs = pairs.discover_pairs(img, msk)
    assert [(s.pair_id, bool(s.image), bool(s.mask)) for s in specs] == [
        ("7", True, False),
        ("10", True, True),
        ("scene_a", True, True),
    ]


def test_valid_pair_keeps_pixels_band_names_and_georeference(tmp_path):
    image_path, mask_path = make_pair(tmp_path / "i", tmp_path / "m", "1", size=(32, 48))
    pair = pairs.load_pair(pairs.PairSpec("1", str(image_path), str(mask_path)))
    assert pair.image.shape == (32, 48, 3) and pair.image.dtype == np.float32
    np.testing.assert_array_equal(pair.image, np.transpose(read_pixels(image_path), (1, 2, 0)))
    np.testing.assert_array_equal(pair.mask, read_pixels(mask_path)[0])
    assert pair.band_names == ("B2", "B3", "B4")
    assert pair.epsg == 4326 and "WGS 84" in pair.crs_wkt
    assert pair.transform[0] == PIXEL_DEGREES


def test_transform_float_noise_is_tolerated_but_a_shift_is_not(tmp_path):
    base = from_origin(-43.9, -19.9, PIXEL_DEGREES, PIXEL_DEGREES)
    noisy = from_origin(-43.9 + 1e-12, -19.9, PIXEL_DEGREES, PIXEL_DEGREES)
    shifted = from_origin(-43.9 + 0.5 * PIXEL_DEGREES, -19.9, PIXEL_DEGREES, PIXEL_DEGREES)
    ok = make_pair(tmp_path / "i", tmp_path / "m", "ok", transform=base, mask_transform=noisy)
    bad = make_pair(tmp_path / "i", tmp_path / "m", "bad", transform=base, mask_transform=shifted)
    assert isinstance(pairs.validate(pairs.PairSpec("ok", *map(str, ok))), pairs.GeoPair)
    rejection = pairs.validate(pairs.PairSpec("bad", *map(str, bad)))
    assert rejection.reason == pairs.TRANSFORM_MISMATCH


def test_integer_image_is_rejected_with_its_dtype(tmp_path):
    image, _ = scene(16, 16)
    paths = make_pair(tmp_path / "i", tmp_path / "m", "1", image=(image * 1e4).astype(np.uint16))
    rejection = pairs.validate(pairs.PairSpec("1", *map(str, paths)))
    assert rejection.reason == pairs.IMAGE_DTYPE and "uint16" in rejection.detail


def test_duplicate_ids_are_rejected_not_guessed(tmp_path):
    img, msk = tmp_path / "img", tmp_path / "mask"
    make_pair(img, msk, "1")
    (img / "1.tif").write_bytes((img / "img_1.tif").read_bytes())
    (spec,) = pairs.discover_pairs(img, msk)
    rejection = pairs.validate(spec)
    assert rejection.reason == pairs.DUPLICATE_ID
    assert str(img / "1.tif") in rejection.detail and str(img / "img_1.tif") in rejection.detail


def test_semicolon_in_a_folder_name_is_just_a_path(tmp_path):
    img, msk = tmp_path / "a;b" / "img", tmp_path / "a;b" / "mask"
    make_pair(img, msk, "1")
    (spec,) = pairs.discover_pairs(img, msk)
    assert isinstance(pairs.validate(spec), pairs.GeoPair)


def test_hidden_files_are_not_candidate_rasters(tmp_path):
    img, msk = tmp_path / "img", tmp_path / "mask"
    make_pair(img, msk, "1")
    (img / "._img_1.tif").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    assert [s.pair_id for s in pairs.discover_pairs(img, msk)] == ["1"]
