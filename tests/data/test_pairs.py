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


def _huge_image(path, width: int = 200_000, height: int = 200_000):
    """A GeoTIFF whose header claims width x height float32 RGB pixels; a few MB on disk
    (sparse: no block is written)."""
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=3,
        dtype="float32",
        crs="EPSG:4326",
        transform=from_origin(-43.9, -19.9, PIXEL_DEGREES, PIXEL_DEGREES),
        tiled=True,
        compress="deflate",
        sparse_ok=True,
    ):
        pass
    return path


def test_a_header_claiming_too_many_pixels_is_rejected_unread(tmp_path, monkeypatch):
    img, msk = tmp_path / "img", tmp_path / "mask"
    _, mask_path = make_pair(img, msk, "1", size=(32, 32))
    image_path = _huge_image(img / "img_1.tif")
    read = []
    monkeypatch.setattr(pairs, "_read", lambda *args: read.append(args))  # records any read
    result = pairs.validate(pairs.PairSpec("1", str(image_path), str(mask_path)))
    assert isinstance(result, pairs.Rejection) and result.reason == pairs.TOO_LARGE
    assert "200000x200000" in result.detail and str(image_path) in result.detail
    assert read == []  # no pixel was read
    # With a limit above its size the same header passes the check: it is the size, not the file.
    roomy = pairs.ValidationConfig(max_pixels=200_000 * 200_000)
    assert pairs._check_header(str(image_path), pairs.UNREADABLE_IMAGE, roomy) == (200_000, 200_000)


def test_a_pair_of_another_tile_size_is_rejected_with_both_sizes(tmp_path):
    image_path, mask_path = make_pair(tmp_path / "i", tmp_path / "m", "1", size=(32, 48))
    spec = pairs.PairSpec("1", str(image_path), str(mask_path))
    result = pairs.validate(spec, pairs.ValidationConfig(tile_size=64))
    assert isinstance(result, pairs.Rejection) and result.reason == pairs.TILE_SIZE
    assert "48x32 (WxH)" in result.detail and "64x64" in result.detail
    assert isinstance(pairs.validate(spec, pairs.ValidationConfig(tile_size=None)), pairs.GeoPair)
    square = make_pair(tmp_path / "i", tmp_path / "m", "2", size=(64, 64))
    ok = pairs.validate(
        pairs.PairSpec("2", *map(str, square)), pairs.ValidationConfig(tile_size=64)
    )
    assert isinstance(ok, pairs.GeoPair)


def test_dangling_and_looping_symlinks_are_rejected_pairs(tmp_path):
    img, msk = tmp_path / "img", tmp_path / "mask"
    make_pair(img, msk, "1")
    make_pair(img, msk, "2")
    make_pair(img, msk, "3")
    (img / "img_2.tif").unlink()
    (img / "img_2.tif").symlink_to(tmp_path / "gone.tif")  # dangling
    (img / "img_3.tif").unlink()
    (img / "img_3.tif").symlink_to(img / "img_3.tif")  # a loop
    specs = {s.pair_id: s for s in pairs.discover_pairs(img, msk)}
    assert sorted(specs) == ["1", "2", "3"]  # listed, not silently skipped
    assert isinstance(pairs.validate(specs["1"]), pairs.GeoPair)
    for pair_id in ("2", "3"):
        result = pairs.validate(specs[pair_id])
        assert isinstance(result, pairs.Rejection) and result.reason == pairs.BROKEN_LINK
        assert f"img_{pair_id}.tif" in result.detail and "resolves to nothing" in result.detail
