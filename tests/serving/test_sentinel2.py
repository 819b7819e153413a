"""Sentinel-2 products as `tailings predict` scenes (issue 30): SAFE folders and zips built by
`tests.fixtures.sentinel2` after ESA's format, band-file folders and lists; reflectance, no
data, clouds, bad products in one line, and `tailings predict` end to end."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from serving.config import PredictConfig
from serving.fleet import (
    FleetOutputs,
    FleetProgress,
    find_scenes,
    name_scenes,
    plan_fleet,
    predict_fleet,
)
from serving.predict import MASK_NODATA, PredictError, inspect_scene, predict_scene
from serving.sentinel2 import L2A_NOTE, BandFiles, ProductError, inspect_product, open_product
from tailings.cli import main
from tests.conftest import PROJECT_ROOT
from tests.fixtures.cli import MAIN_CASES
from tests.fixtures.geotiffs import scene
from tests.fixtures.pipeline import TILE
from tests.fixtures.sentinel2 import EPSG, band_folder, make_product, product_name, zip_product
from tests.serving.test_predict import PixelModel

CFG = PredictConfig(tile=TILE, overlap=16, batch_size=4)
H, W = 96, 114  # multiples of 6: whole 20 m and 60 m pixels


def study_tile(seed: int = 3) -> np.ndarray:
    """[3, H, W] reflectance like the study's tiles (B2, B3, B4, 0..0.6, bright tailings)."""
    image, _ = scene(H, W, seed=seed, blobs=3)
    return image


def quantized(reflectance: np.ndarray, offset: int = 1000) -> np.ndarray:
    """What a product can give back: reflectance to ESA's 1/10000 steps, digital numbers from 1
    (0 is no data)."""
    dn = np.clip(np.rint(reflectance * 10000) + offset, 1, 65534)
    return ((dn - offset) / 10000).astype(np.float32)


def read_all(scene_path, **kwargs) -> tuple[np.ndarray, np.ndarray | None]:
    reader = open_product(scene_path, **kwargs)
    try:
        return reader.read_reflectance(Window(0, 0, reader.width, reader.height))
    finally:
        reader.close()


# --------------------------------------------------------------------------- reflectance
@pytest.mark.parametrize(
    ("level", "baseline"), [("L1C", "02.08"), ("L1C", "04.00"), ("L1C", "05.09"), ("L2A", "05.09")]
)
def test_products_give_back_the_reflectance_they_were_made_from(tmp_path, level, baseline):
    """Before 04.00 reflectance = DN / 10000; from 04.00 (DN - 1000) / 10000 (L2A: BOA_...)."""
    image = study_tile()
    image[:, 5:9, 20:40] = np.nan  # no data: DN 0 in every band
    product = make_product(tmp_path, image, level, baseline)
    offset = 1000 if baseline >= "04.00" else 0
    with rasterio.open(product.bands["B02"]) as src:  # the fixture really wrote the offset
        dn = src.read(1)
    np.testing.assert_array_equal(dn[0, :3], np.rint(image[0, 0, :3] * 10000) + offset)
    for source in (product.safe, zip_product(product), product.metadata):
        info = inspect_product(source)
        assert (info.level, info.baseline, info.sensing_date) == (level, baseline, "2023-08-23")
        assert info.product_id == product.product_id
        assert info.crs.to_epsg() == EPSG and (info.width, info.height) == (W, H)
        pixels, _ = read_all(source)
        nodata = np.isnan(image[0])
        assert np.isnan(pixels[:, nodata]).all() and not np.isnan(pixels[:, ~nodata]).any()
        expected = quantized(image, offset)[:, ~nodata]
        np.testing.assert_allclose(pixels[:, ~nodata], expected, atol=1e-6)


@pytest.mark.parametrize("as_tif", [False, True])
def test_band_files_need_a_baseline_unless_their_product_is_around_them(tmp_path, as_tif):
    image = study_tile(4)
    product = make_product(tmp_path / "p", image)
    folder = band_folder(product, tmp_path / "bands", as_tif=as_tif)
    with pytest.raises(ProductError, match="pass --baseline") as err:
        inspect_product(folder)
    assert str(err.value).startswith(f"{folder}: band files carry no processing baseline")
    for source in (folder, BandFiles(tuple(sorted(folder.iterdir())))):
        pixels, cloudy = read_all(source, baseline="05.09")
        np.testing.assert_allclose(pixels, quantized(image), atol=1e-6)
        assert cloudy is None
    old, _ = read_all(folder, baseline="03.01")  # before 04.00: no offset
    np.testing.assert_allclose(old, quantized(image) + 0.1, atol=1e-6)
    # The band files inside a SAFE: its metadata, not a --baseline.
    img_data = product.bands["B02"].parent
    info = inspect_product(BandFiles(tuple(product.bands[b] for b in ("B02", "B03", "B04"))))
    assert (info.level, info.baseline, info.product_id) == ("L1C", "05.09", product.product_id)
    assert img_data.is_dir()


# --------------------------------------------------------------------------- bad products
def _argvs(tmp_path: Path) -> list[tuple[list[str], str]]:
    image = study_tile(5)
    missing = make_product(tmp_path / "missing", image, skip_bands=("B03",))
    coarse = make_product(tmp_path / "coarse", image, band_resolution={"B03": 20})
    l1b = make_product(tmp_path / "l1b", image, product_type="S2MSI1B")
    good = make_product(tmp_path / "good", image)
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(zip_product(good).read_bytes()[:3000])
    not_s2 = tmp_path / "other.zip"
    with __import__("zipfile").ZipFile(not_s2, "w") as z:
        z.writestr("readme.txt", "hello")
    bands = band_folder(good, tmp_path / "bands")
    (bands / next(p.name for p in bands.iterdir() if "_B04" in p.name)).unlink()
    coarse_b03 = coarse.bands["B03"].relative_to(coarse.safe.parent)
    return [
        ([str(missing.safe)], f"{missing.safe}: band B03 is missing (no *_B03.jp2 in the"),
        ([str(coarse.safe)], f"{tmp_path / 'coarse' / coarse_b03}: band B03 has 20 m pixels;"),
        ([str(l1b.safe)], f"{l1b.safe}: product type S2MSI1B; tailings predicts Level-1C"),
        ([str(damaged)], f"{damaged}: not a readable zip ("),
        ([str(not_s2)], f"{not_s2}: no <name>.SAFE/MTD_MSIL1C.xml or MTD_MSIL2A.xml in the zip"),
        ([str(bands), "--baseline", "05.09"], f"{bands}: band B04 missing (needs B02, B03, B04)"),
        ([str(bands), "--baseline", "5.9"], "baseline must be a processing baseline such as"),
    ]


def test_bad_products_are_one_line_each_before_tensorflow_loads(tmp_path):
    cases = _argvs(tmp_path)
    version = tmp_path / "models" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    tail = ["--out", str(tmp_path / "out" / "mask.tif"), "--model", str(version.parent)]
    argvs = [["predict", *argv, *tail] for argv, _ in cases]
    done = subprocess.run(
        [sys.executable, "-c", MAIN_CASES, json.dumps(argvs)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
        timeout=180,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["tensorflow"] is False
    for (argv, message), result in zip(cases, said["results"], strict=True):
        assert result["code"] == 1, argv
        (line,) = result["stderr"]
        assert line.startswith(f"tailings predict: error: {message}"), line


def test_a_damaged_band_file_is_one_line_naming_it(tmp_path):
    product = make_product(tmp_path, study_tile(6))
    b04 = product.bands["B04"]
    b04.write_bytes(b04.read_bytes()[:200])
    with pytest.raises(PredictError) as err:
        inspect_scene(product.safe)
    assert str(err.value).startswith(f"{b04}: cannot read band B04")
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- clouds
@pytest.mark.parametrize("level", ["L1C", "L2A"])
def test_cloudy_pixels_are_no_data_and_counted_unless_switched_off(tmp_path, level):
    image = study_tile(7)
    clouds = np.zeros((H, W), dtype=bool)
    clouds[12:48, 30:66] = True  # whole 60 m (and 20 m) pixels: 36 x 36
    product = make_product(tmp_path, image, level, clouds=clouds)
    result = predict_scene(product.safe, PixelModel(), tmp_path / "m.tif", CFG)
    with rasterio.open(tmp_path / "m.tif") as src:
        mask = src.read(1)
        tags = src.tags()
    np.testing.assert_array_equal(mask == MASK_NODATA, clouds)
    assert result.cloudy_pixels == 36 * 36
    assert result.cloudy_ha == pytest.approx(36 * 36 * 100 / 10000, rel=2e-3)  # UTM 10 m pixels
    assert result.valid_pixels == H * W - 36 * 36
    expected = "MSK_CLASSI opaque and cirrus" if level == "L1C" else "SCL 3,8,9,10"
    assert result.clouds == tags["cloud_mask"] == expected
    assert tags["level"] == level and tags["processing_baseline"] == "05.09"
    assert any(line.startswith("clouds: 1296 pixels, 12.9") for line in result.lines())

    off = predict_scene(
        product.safe,
        PixelModel(),
        tmp_path / "all.tif",
        PredictConfig(**{**vars(CFG), "mask_clouds": False}),
    )
    with rasterio.open(tmp_path / "all.tif") as src:
        assert (src.read(1) != MASK_NODATA).all()
    assert (off.cloudy_pixels, off.clouds, off.valid_pixels) == (0, "off", H * W)


def test_old_l1c_has_no_raster_cloud_mask_and_says_so(tmp_path):
    clouds = np.ones((H, W), dtype=bool)
    product = make_product(tmp_path, study_tile(8), "L1C", "03.01", clouds=clouds)
    info = inspect_product(product.safe)
    assert info.cloud_mask is None
    (note,) = info.notes
    assert note.endswith("has no raster cloud mask (its MSK_CLOUDS_B00.gml is not read), so "
                         "clouds are not masked")  # fmt: skip


# --------------------------------------------------------------------------- fleets
def test_fleets_find_products_in_folders_and_name_them(tmp_path):
    image = study_tile(9)
    a = make_product(tmp_path / "in", image)
    b = zip_product(make_product(tmp_path / "z", image, "L2A"), tmp_path / "in" / "b.zip")
    bands = band_folder(a, tmp_path / "bands")
    found, missing = find_scenes([str(tmp_path / "in"), str(bands)])
    assert missing == []
    assert found == [a.safe, b, bands]
    names = [job.name for job in name_scenes(found)]
    assert names == [a.product_id, "b", "bands"]


def test_fleet_summary_rows_carry_the_product_and_its_clouds(tmp_path):
    image = study_tile(12)
    clouds = np.zeros((H, W), dtype=bool)
    clouds[:12, :] = True
    l1c = make_product(tmp_path / "in", image, "L1C", clouds=clouds)
    zip_product(make_product(tmp_path / "z", image, "L2A"), tmp_path / "in" / "b.zip")
    old = make_product(tmp_path / "old", image, "L1C", "02.08", clouds=clouds)
    shutil.move(old.safe, tmp_path / "in" / old.safe.name)
    paths, _ = find_scenes([str(tmp_path / "in")])
    warned: list[str] = []
    plan = plan_fleet(name_scenes(paths), CFG, False, warn=warned.append)
    assert not plan.failed and len(plan.ready) == 3
    assert [w.split(": ", 1)[1] for w in warned] == [
        "baseline 02.08 has no raster cloud mask (its MSK_CLOUDS_B00.gml is not read), so "
        "clouds are not masked",
        L2A_NOTE,
        "no IMG_DATA/R20m/*_SCL_20m.jp2, so clouds are not masked",
    ]
    out = tmp_path / "out"
    out.mkdir()
    progress = FleetProgress(3, plan.windows, lambda _m: None, stream=io.StringIO())
    records = predict_fleet(plan, PixelModel(), FleetOutputs(out), CFG, progress)
    assert [r.status for r in records] == ["ok"] * 3
    rows = _rows(out)
    new, old_row, l2a = rows[l1c.product_id], rows[old.product_id], rows["b"]
    assert (new["level"], new["baseline"], new["sensing_date"]) == ("L1C", "05.09", "2023-08-23")
    assert float(new["cloudy_ha"]) == pytest.approx(12 * W / 100, rel=2e-3)
    assert new["cloud_mask"] == "MSK_CLASSI opaque and cirrus"
    assert (old_row["baseline"], old_row["cloudy_ha"]) == ("02.08", "")
    assert old_row["cloud_mask"] == "none before baseline 04.00"
    assert (l2a["level"], l2a["product_id"]) == ("L2A", product_name("L2A", "05.09"))
    assert float(new["valid_ha"]) == pytest.approx(float(old_row["valid_ha"]) * (H - 12) / H)


# --------------------------------------------------------------------------- end to end
def _rows(out_dir: Path) -> dict[str, dict]:
    rows = csv.DictReader(io.StringIO((out_dir / "summary.csv").read_text()))
    return {row["name"]: row for row in rows}


@pytest.mark.slow
def test_tailings_predict_on_products_with_a_model(pushed, tmp_path, capsys):
    """SAFE folder, zip, band folder and band list through `tailings predict` with a real
    (tiny) model: masks, polygons, summary with product, level, baseline, date, cloudy_ha."""
    cfg, _ = pushed
    image = study_tile(10)
    clouds = np.zeros((H, W), dtype=bool)
    clouds[:24, :24] = True
    l1c = make_product(tmp_path / "in", image, "L1C", clouds=clouds)
    zip_product(make_product(tmp_path / "l2a", image, "L2A"), tmp_path / "in" / "l2a.zip")
    bands = band_folder(l1c, tmp_path / "bands", as_tif=True)
    common = ["--model", str(cfg.push_dir), "--tile", str(TILE), "--overlap", "16"]
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "in"), str(bands), "--out-dir", str(out), "--polygons"]
    assert main([*argv, *common, "--baseline", "05.09"]) == 0
    err = capsys.readouterr().err
    assert "Level-2A (bottom-of-atmosphere) reflectance; the model was trained on Level-1C" in err
    rows = _rows(out)
    assert set(rows) == {l1c.product_id, "l2a", "bands"}
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["crs"] == f"EPSG:{EPSG}" and (row["width"], row["height"]) == (str(W), str(H))
        assert row["baseline"] == "05.09" and row["sensing_date"] == "2023-08-23"
        assert (out / row["mask"]).is_file() and (out / row["polygons_file"]).is_file()
        assert row["polygons"] != ""
        with rasterio.open(out / row["mask"]) as src:
            assert src.crs.to_epsg() == EPSG and src.transform.a == 10.0
    assert rows[l1c.product_id]["level"] == "L1C" and rows["l2a"]["level"] == "L2A"
    assert float(rows[l1c.product_id]["cloudy_ha"]) == pytest.approx(5.76, rel=2e-3)
    assert rows["bands"]["cloudy_ha"] == "" and rows["bands"]["level"] == ""
    assert rows["bands"]["cloud_mask"] == "none with band files"
    features = json.loads((out / "summary.geojson").read_text())["features"]
    assert {f["properties"]["product_id"] for f in features} >= {l1c.product_id}
    with rasterio.open(out / rows[l1c.product_id]["mask"]) as a:
        with rasterio.open(out / rows["bands"]["mask"]) as b:
            ma, mb = a.read(1), b.read(1)
    np.testing.assert_array_equal(ma == MASK_NODATA, clouds)
    assert (mb != MASK_NODATA).all()  # band files: no cloud mask
    # Same pixels, same model: the SAFE without its cloud mask gives the band files' mask.
    # (With it, pixels near a cloud differ a little: the cloud is fed as 0, as no data is.)
    whole = ["predict", str(l1c.safe), "--out", str(tmp_path / "whole.tif"), "--no-cloud-mask"]
    assert main([*whole, *common]) == 0
    assert "clouds: not masked (off)" in capsys.readouterr().err
    with rasterio.open(tmp_path / "whole.tif") as src:
        np.testing.assert_array_equal(src.read(1), mb)

    # One product with --out: a list of band files, printed with its product line.
    files = [str(p) for p in sorted(bands.iterdir())]
    single = ["predict", *files, "--out", str(tmp_path / "one.tif"), *common, "--baseline", "05.09"]
    assert main(single) == 0
    err = capsys.readouterr().err
    assert "product: T23KPT_20230823T130249 (level unknown, baseline 05.09" in err
    with rasterio.open(tmp_path / "one.tif") as src:
        np.testing.assert_array_equal(src.read(1), mb)


@pytest.mark.slow
def test_products_on_beam_and_through_a_server_give_the_in_process_outputs(
    pushed, server, tmp_path, capsys
):
    """The --beam fleet (RunInference, DirectRunner) and --server read products with the same
    code (`open_scene`): the same masks and summary rows as in-process."""
    cfg, _ = pushed
    image = study_tile(11)
    clouds = np.zeros((H, W), dtype=bool)
    clouds[48:, 60:] = True
    product = make_product(tmp_path / "in", image, "L1C", clouds=clouds)
    zipped = zip_product(make_product(tmp_path / "l2a", image, "L2A", clouds=clouds))
    shutil.move(zipped, tmp_path / "in" / zipped.name)
    common = ["--model", str(cfg.push_dir), "--tile", str(TILE), "--overlap", "16"]
    runs = {"local": [], "beam": ["--beam"]}
    for name, extra in runs.items():
        argv = ["predict", str(tmp_path / "in"), "--out-dir", str(tmp_path / name)]
        assert main([*argv, *common, *extra]) == 0, capsys.readouterr().err
    local, beam = _rows(tmp_path / "local"), _rows(tmp_path / "beam")
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in local.values()] == [
        {k: v for k, v in r.items() if k not in drop} for r in beam.values()
    ]
    for row in beam.values():  # 48 x 54 pixels of 10 m (UTM's scale: a little less)
        assert float(row["cloudy_ha"]) == pytest.approx(25.92, rel=2e-3), row
    for row in local.values():
        with rasterio.open(tmp_path / "local" / row["mask"]) as a:
            with rasterio.open(tmp_path / "beam" / row["mask"]) as b:
                np.testing.assert_array_equal(a.read(), b.read())
    # --server, one product: the in-process mask.
    remote = ["predict", str(product.safe), "--out", str(tmp_path / "remote.tif")]
    remote += ["--server", server.url, "--tile", str(TILE), "--overlap", "16"]
    assert main(remote) == 0, capsys.readouterr().err
    with rasterio.open(tmp_path / "remote.tif") as a:
        with rasterio.open(tmp_path / "local" / local[product.product_id]["mask"]) as b:
            np.testing.assert_array_equal(a.read(), b.read())
