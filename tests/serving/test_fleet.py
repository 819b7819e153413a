"""`tailings predict SCENE... --out-dir DIR`: many scenes, one model, per-scene outputs, one
summary; a failed scene is reported and the others still run; the same on Beam."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from data.errors import EXIT_FAILED, EXIT_OK, EXIT_SOME_FAILED
from serving.config import PredictConfig
from serving.fleet import (
    FAILED,
    OK,
    FleetOutputs,
    FleetProgress,
    FleetRecord,
    exit_code,
    find_scenes,
    name_scenes,
    plan_fleet,
    predict_fleet,
    write_summary,
)
from serving.predict import Grid, predict_scene
from tailings.cli import main
from tests.fixtures.geotiffs import PIXEL_DEGREES, scene, write_geotiff
from tests.fixtures.pipeline import TILE
from tests.serving.test_predict import PixelModel

CFG = PredictConfig(tile=TILE, overlap=16, batch_size=3)


def _scene(path: Path, height: int = 90, width: int = 110, seed: int = 0, **kwargs) -> Path:
    image, _ = scene(height, width, seed=seed, blobs=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_geotiff(path, image, descriptions=("B2", "B3", "B4"), **kwargs)


def _truncated(path: Path) -> Path:
    """A GeoTIFF whose header reads but whose pixels stop halfway (a copy cut short)."""
    image, _ = scene(256, 256)
    profile = {"driver": "GTiff", "width": 256, "height": 256, "count": 3, "dtype": "float32"}
    full = path.with_name("full-" + path.name)
    with rasterio.open(full, "w", crs="EPSG:4326", **profile) as dst:
        dst.transform = from_origin(-44.61, -21.07, PIXEL_DEGREES, PIXEL_DEGREES)
        dst.write(image)  # uncompressed: the header first, the pixels after it
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def _summary(out_dir: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((out_dir / "summary.csv").read_text())))


class Lines(list):
    """A `say` that keeps what it was told."""

    def __call__(self, line: str) -> None:
        self.append(line)


class NotATerminal(io.StringIO):
    def isatty(self) -> bool:
        return False


# --------------------------------------------------------------------------- finding scenes
def test_scenes_from_files_folders_and_patterns_each_once_in_order(tmp_path):
    a = _scene(tmp_path / "in" / "a.tif")
    b = _scene(tmp_path / "in" / "b.TIFF")
    (tmp_path / "in" / "notes.txt").write_text("not a scene")
    c = _scene(tmp_path / "deep" / "x" / "c.tif")
    d = _scene(tmp_path / "deep" / "y" / "d.tif")
    arguments = [
        str(tmp_path / "in"),  # a folder: its .tif/.tiff files, sorted
        str(a),  # again: once only
        str(tmp_path / "deep" / "**" / "*.tif"),  # a recursive pattern
        str(tmp_path / "none-*.tif"),  # matches nothing: a failed record
        str(tmp_path / "empty"),  # a folder without scenes
        str(tmp_path / "missing.tif"),  # kept: its check says "no such file"
    ]
    (tmp_path / "empty").mkdir()
    found, missing = find_scenes(arguments)
    assert found == [a, b, c, d, tmp_path / "missing.tif"]
    assert [(r.scene, r.status) for r in missing] == [
        (arguments[3], FAILED),
        (arguments[4], FAILED),
    ]
    assert "matches no file" in missing[0].error
    assert "no *.tif, *.tiff, *.zip or SAFE product in folder" in missing[1].error


def test_output_names_are_stems_with_folders_only_where_stems_clash(tmp_path):
    paths = [
        tmp_path / "2024" / "a" / "scene.tif",
        tmp_path / "2024" / "b" / "scene.tif",
        tmp_path / "2024" / "b" / "other.tif",
    ]
    assert [job.name for job in name_scenes(paths)] == ["a__scene", "b__scene", "other"]


def test_exit_code_says_whether_any_scene_failed():
    ok, failed = FleetRecord("a", "a", OK), FleetRecord("b", "b", FAILED)
    assert exit_code([ok, ok]) == EXIT_OK
    assert exit_code([ok, failed]) == EXIT_SOME_FAILED == 6
    assert exit_code([failed]) == EXIT_FAILED


# --------------------------------------------------------------------------- in-process fleet
def test_fleet_writes_each_scene_and_a_summary_and_survives_failures(tmp_path):
    scenes = tmp_path / "scenes"
    good = [_scene(scenes / f"s{i}.tif", seed=i) for i in range(3)]
    bad_header = write_geotiff(scenes / "one_band.tif", np.zeros((1, 16, 16), np.float32))
    cut = _truncated(scenes / "cut.tif")
    out = tmp_path / "out"
    out.mkdir()
    paths, missing = find_scenes([str(scenes), str(tmp_path / "nothing-*.tif")])
    warnings = Lines()
    plan = plan_fleet(name_scenes(paths), CFG, False, warnings, missing)
    assert {job.path for job, _ in plan.ready} == {*good, cut}
    assert len(plan.failed) == 2 and not warnings
    said = Lines()
    progress = FleetProgress(len(plan.ready), plan.windows, said, stream=NotATerminal())
    model = PixelModel()
    records = predict_fleet(plan, model, FleetOutputs(out, polygons=True), CFG, progress)

    by_name = {r.name: r for r in records}
    assert by_name["cut"].status == FAILED
    assert by_name["cut"].error.startswith(f"{cut}: cannot read rows")
    assert (
        by_name["one_band"].error
        == f"{bad_header}: has 1 band(s); the model needs 3: B2, B3, B4 reflectance"
    )
    for path in good:
        record = by_name[path.stem]
        assert record.status == OK and record.result.tailings_pixels > 0
        # Each scene's mask is the single-scene prediction's, byte for byte.
        alone = predict_scene(path, PixelModel(), tmp_path / f"{path.stem}.alone.tif", CFG)
        assert record.result.tailings_pixels == alone.tailings_pixels
        with (
            rasterio.open(out / f"{path.stem}.mask.tif") as a,
            rasterio.open(tmp_path / f"{path.stem}.alone.tif") as b,
        ):
            np.testing.assert_array_equal(a.read(), b.read())
        assert (out / f"{path.stem}.polygons.geojson").is_file()
    # A failed scene leaves nothing; nothing but outputs, the summary and no lock remain.
    assert not list(out.glob("cut.*")) and not list(out.glob(".*"))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"s{i}.{kind}" for i in range(3) for kind in ("mask.tif", "polygons.geojson")]
        + ["summary.csv", "summary.geojson"]
    )

    rows = _summary(out)
    assert [row["scene"] for row in rows] == sorted(row["scene"] for row in rows)
    assert {(row["scene"], row["name"], row["status"]) for row in rows} == {
        (str(cut), "cut", FAILED),
        (str(bad_header), "one_band", FAILED),
        (str(tmp_path / "nothing-*.tif"), "", FAILED),  # the pattern, as given
        *((str(path), path.stem, OK) for path in good),
    }
    row = next(row for row in rows if row["name"] == "s1")
    record = by_name["s1"]
    assert int(row["tailings_pixels"]) == record.result.tailings_pixels
    assert float(row["tailings_ha"]) == pytest.approx(record.tailings_ha, abs=1e-4)
    share = 100 * record.tailings_ha / record.valid_ha
    assert float(row["tailings_share_pct"]) == pytest.approx(share, abs=1e-4)
    assert row["crs"] == "EPSG:4326" and row["mask"] == "s1.mask.tif"
    assert row["area_method"] == "geodesic, on the WGS 84 ellipsoid"

    # The GeoJSON: a feature per scene, the scene's outline in lon/lat, the same properties.
    features = json.loads((out / "summary.geojson").read_text())["features"]
    assert len(features) == len(rows) == 6
    feature = next(f for f in features if f["properties"]["name"] == "s1")
    ring = np.array(feature["geometry"]["coordinates"][0])
    with rasterio.open(good[1]) as src:
        left, bottom, right, top = src.bounds
    assert ring[:, 0].min() == pytest.approx(left) and ring[:, 0].max() == pytest.approx(right)
    assert ring[:, 1].min() == pytest.approx(bottom) and ring[:, 1].max() == pytest.approx(top)
    assert (ring[0] == ring[-1]).all()
    assert next(f for f in features if f["properties"]["name"] == "")["geometry"] is None

    # Progress: a line per scene, in order, with an ETA until the last.
    assert len(said) == 4
    assert said[0].startswith("[1/4] ") and "ETA " in said[0]
    assert "FAILED: " in next(line for line in said if "cut:" in line)
    assert said[-1].startswith("[4/4] ") and "ETA" not in said[-1]


def test_a_record_is_its_scene_result_plus_the_fleet_fields_and_survives_json(tmp_path):
    """What `predict_scene` returns is kept whole, also through the JSON the Beam path uses."""
    path = _scene(tmp_path / "s.tif")
    ((job, info),) = plan_fleet(name_scenes([path]), CFG, False, Lines()).ready
    result = predict_scene(path, PixelModel(), tmp_path / "s.mask.tif", CFG)
    record = FleetRecord.described(job, info).succeed(result)
    assert record.result is result and record.tailings_ha == result.tailings_ha
    back = FleetRecord.from_json(record.to_json())
    assert back == record and back.result == result
    failed = FleetRecord.from_json(FleetRecord.described(job, info).fail("x: broken").to_json())
    assert failed.result is None and failed.properties()["tailings_ha"] == ""
    assert failed.crs == "EPSG:4326" and (failed.width, failed.height) == (110, 90)


def test_a_stopped_fleet_leaves_a_summary_of_what_it_did(tmp_path):
    """The summary is rewritten after every scene: a job stopped midway keeps its rows."""
    scenes = [_scene(tmp_path / f"s{i}.tif", seed=i) for i in range(3)]
    out = tmp_path / "out"
    out.mkdir()

    grid = Grid.of(90, 110, CFG.tile, CFG.overlap)
    calls_per_scene = len(grid.rows) * math.ceil(len(grid.cols) / CFG.batch_size)

    class StopsAtTheThird(PixelModel):
        def __call__(self, tiles):
            if self.calls >= 2 * calls_per_scene:  # Ctrl-C during the third scene
                raise KeyboardInterrupt
            return super().__call__(tiles)

    plan = plan_fleet(name_scenes(scenes), CFG, False, Lines())
    progress = FleetProgress(3, plan.windows, Lines(), stream=NotATerminal())
    with pytest.raises(KeyboardInterrupt):
        predict_fleet(plan, StopsAtTheThird(), FleetOutputs(out), CFG, progress)
    assert [row["name"] for row in _summary(out)] == ["s0", "s1"]
    assert not (out / "s2.mask.tif").exists()


def test_summary_columns_of_a_projected_scene_footprint_in_wgs84(tmp_path):
    utm = from_origin(600000.0, 7700000.0, 10.0, 10.0)
    path = _scene(tmp_path / "utm.tif", 100, 120, crs="EPSG:32723", transform=utm)
    plan = plan_fleet(name_scenes([path]), CFG, False, Lines())
    ((job, info),) = plan.ready
    record = FleetRecord.described(job, info)
    ring = np.array(record.footprint["coordinates"][0])
    # UTM 23S, 600 km E / 7700 km N: about 44.0 W, 20.8 S; 1.2 km x 1 km.
    assert -44.1 < ring[:, 0].min() < ring[:, 0].max() < -43.9
    assert -20.9 < ring[:, 1].min() < ring[:, 1].max() < -20.7
    write_summary(tmp_path, [record])
    (row,) = _summary(tmp_path)
    assert row["crs"] == "EPSG:32723" and row["status"] == FAILED


# --------------------------------------------------------------------------- the command line
FLAG_CASES = [
    (["{scene}", "{scene}", "--out", "{tmp}/m.tif"], "--out writes one scene's mask; for several"),
    (["{folder}", "--out", "{tmp}/m.tif"], "--out writes one scene's mask; for several"),
    (["{scene}", "--out-dir", "{tmp}/o", "--probabilities", "p.tif"], "--probabilities p.tif: "),
    (["{scene}", "--out", "{tmp}/m.tif", "--beam"], "--beam, --workers and Beam options predict"),
    (["{scene}", "--out-dir", "{tmp}/o", "--beam", "--server", "http://h:1"], "--beam runs the"),
    (["{scene}", "--out-dir", "{tmp}/o", "--workers", "0"], "--workers must be at least 1"),
    (["{scene}", "--out-dir", "{tmp}/o", "--", "--runer=x"], "Beam does not know --runer=x"),
    (
        ["{scene}", "--out-dir", "{tmp}/o", "--", "--runner=DataflowRunner", "--project=p"],
        "--runner DataflowRunner: `tailings predict --beam` reads scenes",
    ),
]


@pytest.mark.parametrize(("argv", "message"), FLAG_CASES)
def test_fleet_flags_are_checked_first(tmp_path, capsys, argv, message):
    folder = tmp_path / "scenes"
    scene_path = _scene(folder / "a.tif")
    names = {"scene": scene_path, "folder": folder, "tmp": tmp_path}
    assert main(["predict", *(arg.format(**names) for arg in argv)]) == EXIT_FAILED
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("tailings predict: error: ") and message in line, line
    assert not (tmp_path / "m.tif").exists() and not list((tmp_path / "o").glob("*"))


@pytest.mark.slow
def test_fleet_command_matches_single_scene_predictions(pushed, tmp_path, capsys):
    cfg, _ = pushed
    scenes = tmp_path / "scenes"
    paths = [_scene(scenes / f"s{i}.tif", 100, 130, seed=10 + i) for i in range(2)]
    write_geotiff(scenes / "one_band.tif", np.zeros((1, 16, 16), np.float32))
    common = ["--model", str(cfg.push_dir), "--tile", str(TILE), "--overlap", "16"]
    out = tmp_path / "out"
    code = main(["predict", str(scenes), "--out-dir", str(out), "--probabilities", *common])
    err = capsys.readouterr().err
    assert code == EXIT_SOME_FAILED, err
    assert "2 of 3 scene(s) predicted, 1 failed" in err
    for path in paths:
        single = tmp_path / f"{path.stem}.tif"
        assert main(["predict", str(path), "--out", str(single), *common]) == EXIT_OK
        with rasterio.open(single) as a, rasterio.open(out / f"{path.stem}.mask.tif") as b:
            np.testing.assert_array_equal(a.read(), b.read())
        assert (out / f"{path.stem}.probabilities.tif").is_file()
    capsys.readouterr()
    # All scenes failing is exit 1; the summary still says why.
    code = main(["predict", str(scenes / "one_band.tif"), "--out-dir", str(out / "bad"), *common])
    assert code == EXIT_FAILED
    assert [row["status"] for row in _summary(out / "bad")] == [FAILED]


@pytest.mark.slow
def test_beam_fleet_gives_the_in_process_outputs(pushed, tmp_path, capsys):
    """RunInference with Beam's TensorFlow model handler, DirectRunner, 2 worker processes:
    the same masks, probabilities, polygons and summary as the in-process path."""
    cfg, _ = pushed
    scenes = tmp_path / "scenes"
    for i in range(3):
        _scene(scenes / f"s{i}.tif", 100 + 20 * i, 130, seed=20 + i)
    _truncated(scenes / "cut.tif")
    common = ["--model", str(cfg.push_dir), "--tile", str(TILE), "--overlap", "16"]
    common += ["--probabilities", "--polygons"]
    runs = {
        "local": [],
        "beam": ["--beam", "--workers", "2", "--", "--direct_running_mode=multi_processing"],
    }
    for name, extra in runs.items():
        code = main(["predict", str(scenes), "--out-dir", str(tmp_path / name), *common, *extra])
        err = capsys.readouterr().err
        assert code == EXIT_SOME_FAILED, err
        assert "Unable to register cu" not in err and "FutureWarning" not in err, err
    local, beam = tmp_path / "local", tmp_path / "beam"
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in beam.iterdir())
    for path in sorted(local.glob("*.tif")):
        with rasterio.open(path) as a, rasterio.open(beam / path.name) as b:
            np.testing.assert_array_equal(a.read(), b.read())
    for path in sorted(local.glob("*.polygons.geojson")):
        assert path.read_text() == (beam / path.name).read_text()
    drop = ("seconds",)
    rows = {
        n: [{k: v for k, v in r.items() if k not in drop} for r in _summary(tmp_path / n)]
        for n in runs
    }
    assert rows["local"] == rows["beam"]
    assert [r["status"] for r in rows["beam"]] == [FAILED, OK, OK, OK]
    assert rows["beam"][0]["error"].startswith(f"{scenes / 'cut.tif'}: cannot read rows")


def test_progress_on_a_terminal_is_a_bar_over_windows_with_the_scene(tmp_path):
    """The CLI's stderr is a pipe to a line filter, so it says `terminal=True` itself."""
    stream, said = NotATerminal(), Lines()
    progress = FleetProgress(2, 8, said, stream=stream, terminal=True)
    job = name_scenes([tmp_path / "a.tif"])[0]
    progress.start(1, job, 4)
    progress.advance(4)
    progress.finish(1, FleetRecord(str(job.path), job.name, FAILED, error="x: broken"))
    progress.close()
    text = stream.getvalue()
    assert "scene 1/2 a" in text and "4/8" in text and "window" in text
    assert "[1/2] a: FAILED: x: broken" in text and not said  # above the bar, not a plain line
