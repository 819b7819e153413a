"""GeoTiffExampleGen and labels.yaml: the file invalidates the cache, is checked early, and the
pairs it excludes reach no split (the scene split included)."""

import json
import os
from pathlib import Path

import pytest
from tfx.types import standard_artifacts

from components.example_gen import (
    EXAMPLES_KEY,
    REJECTED_FILE,
    REPORT_KEY,
    SCENE_LAYOUT_FILE,
    ConversionReport,
    Executor,
    GeoTiffExampleGen,
    input_fingerprint,
)
from data.config import SplitConfig
from data.convert import ConversionError
from data.labels import EXCLUDE, KEEP, LABELS_FILE, LabelDecision, LabelsFileError, write_labels
from data.pairs import EXCLUDED_BY_REVIEW, TILE_SIZE
from data.reader import read_dataset
from tests.fixtures.geotiffs import make_pair, make_pairs, pairs_in_both_splits


def test_fingerprint_covers_the_labels_file_content(tmp_path):
    make_pairs(tmp_path, 2, size=(16, 16))
    without = input_fingerprint(str(tmp_path))
    labels = tmp_path / LABELS_FILE
    write_labels(labels, [LabelDecision("1", EXCLUDE, "bad polygon")])
    with_file = input_fingerprint(str(tmp_path))
    assert with_file != without
    stat = labels.stat()
    write_labels(labels, [LabelDecision("1", EXCLUDE, "bad polygon, forest")])
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # content alone must count
    assert input_fingerprint(str(tmp_path)) not in (without, with_file)
    write_labels(labels, [LabelDecision("1", EXCLUDE, "bad polygon")])
    assert input_fingerprint(str(tmp_path)) == with_file
    labels.unlink()
    assert input_fingerprint(str(tmp_path)) == without


def test_fingerprint_changes_with_the_features_an_example_carries(tmp_path, monkeypatch):
    """An output folder made before a feature existed must not keep its cached examples."""
    from schemas import features

    make_pairs(tmp_path, 2, size=(16, 16))
    before = input_fingerprint(str(tmp_path))
    spec = features.feature_spec()
    monkeypatch.setattr(features, "feature_spec", lambda: {**spec, "band_median_b4": None})
    assert input_fingerprint(str(tmp_path)) != before


def test_fingerprint_skips_a_dangling_symlink(tmp_path):
    make_pairs(tmp_path, 2, size=(16, 16))
    before = input_fingerprint(str(tmp_path))
    (tmp_path / "img" / "img_3.tif").symlink_to(tmp_path / "nowhere.tif")
    (tmp_path / "mask" / "mask_sub.tif").mkdir()
    assert input_fingerprint(str(tmp_path)) == before


def test_component_refuses_a_labels_file_with_an_unknown_pair(tmp_path):
    make_pairs(tmp_path, 3, size=(16, 16))
    write_labels(
        tmp_path / LABELS_FILE,
        [LabelDecision("2", KEEP, ""), LabelDecision("99", EXCLUDE, "bad polygon")],
    )
    with pytest.raises(LabelsFileError) as info:
        GeoTiffExampleGen(str(tmp_path))
    message = str(info.value)
    assert message.startswith(str(tmp_path / LABELS_FILE))
    assert 'entry 2 (id "99"): unknown pair id; the data has 3 pairs' in message


def test_component_accepts_a_valid_labels_file(tmp_path):
    make_pairs(tmp_path, 3, size=(16, 16))
    write_labels(tmp_path / LABELS_FILE, [LabelDecision("2", EXCLUDE, "bad polygon")])
    component = GeoTiffExampleGen(str(tmp_path))
    assert component.exec_properties["input_fingerprint"] == input_fingerprint(str(tmp_path))


def _executor_inputs(root: Path, config: SplitConfig):
    examples = standard_artifacts.Examples()
    examples.uri = str(root / "examples")
    report = ConversionReport()
    report.uri = str(root / "report")
    outputs = {EXAMPLES_KEY: [examples], REPORT_KEY: [report]}
    properties = {
        "input_base": str(root / "data"),
        "splits": json.dumps([list(s) for s in config.splits]),
        "scene": json.dumps({"seed": config.scene.seed}),
        "shards": config.shards,
    }
    return outputs, properties


def _split_ids(examples_uri: Path, split: str) -> set[str]:
    ids = set()
    for shard in sorted((examples_uri / f"Split-{split}").glob("*.gz")):
        ids |= {i.decode() for i, _, _ in read_dataset(shard, with_ids=True).as_numpy_iterator()}
    return ids


def test_executor_rejects_excluded_pairs_from_every_split(tmp_path):
    config = SplitConfig(shards=1)
    data = tmp_path / "data"
    by_split = pairs_in_both_splits(data, config.splits)
    excluded = {by_split["eval"][0], by_split["train"][0]}
    write_labels(
        data / LABELS_FILE,
        [LabelDecision(i, EXCLUDE, f"bad polygon {i}") for i in sorted(excluded)]
        + [LabelDecision(by_split["eval"][1], KEEP, "checked")],
    )
    outputs, properties = _executor_inputs(tmp_path, config)

    Executor().Do({}, outputs, properties)

    report = Path(outputs[REPORT_KEY][0].uri)
    rows = [json.loads(line) for line in (report / REJECTED_FILE).read_text().splitlines()]
    assert {r["id"]: r["reason"] for r in rows} == dict.fromkeys(excluded, EXCLUDED_BY_REVIEW)
    assert {r["id"]: r["detail"] for r in rows} == {
        i: f"excluded by review in labels.yaml: bad polygon {i}" for i in excluded
    }
    examples = Path(outputs[EXAMPLES_KEY][0].uri)
    assert _split_ids(examples, "train") == set(by_split["train"]) - excluded
    assert _split_ids(examples, "eval") == set(by_split["eval"]) - excluded
    layout = json.loads((report / SCENE_LAYOUT_FILE).read_text())
    in_scene = {t for site in layout["sites"] for t in site["tiles"]}
    assert in_scene == set(by_split["eval"]) - excluded
    assert _split_ids(examples, "scene")  # windows were written, from the kept eval tiles only
    assert outputs[REPORT_KEY][0].get_int_custom_property("rejected") == len(excluded)


def test_executor_reports_a_bad_labels_file_as_a_conversion_error(tmp_path):
    make_pairs(tmp_path / "data", 2, size=(16, 16))
    (tmp_path / "data" / LABELS_FILE).write_text('pairs:\n  - id: "7"\n    decision: keep\n')
    outputs, properties = _executor_inputs(tmp_path, SplitConfig())
    with pytest.raises(ConversionError, match=r"labels\.yaml: entry 1 \(id \"7\"\): unknown"):
        Executor().Do({}, outputs, properties)


def test_executor_rejects_pairs_of_another_tile_size(tmp_path):
    """A 16 x 16 pair among 32 x 32 ones is rejected in ExampleGen (reason tile_size, both
    sizes named), so Transform never sees it; with no tile size set it would be converted."""
    config = SplitConfig(shards=1)
    data = tmp_path / "data"
    make_pairs(data, 8, size=(32, 32))
    make_pair(data / "img", data / "mask", "odd", size=(16, 16), seed=99)
    outputs, properties = _executor_inputs(tmp_path, config)
    properties["tile_size"] = 32

    Executor().Do({}, outputs, properties)

    report = Path(outputs[REPORT_KEY][0].uri)
    rows = [json.loads(line) for line in (report / REJECTED_FILE).read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rows] == [("odd", TILE_SIZE)]
    assert "16x16 (WxH)" in rows[0]["detail"] and "32x32" in rows[0]["detail"]
    examples = Path(outputs[EXAMPLES_KEY][0].uri)
    kept = _split_ids(examples, "train") | _split_ids(examples, "eval")
    assert kept == {str(i) for i in range(1, 9)}


def test_the_pipeline_gives_example_gen_its_tile_size(tmp_path):
    from pipeline.pipeline import create_pipeline
    from tests.fixtures.pipeline import TILE, tiny_config

    make_pairs(tmp_path / "data", 2, size=(TILE, TILE))
    pipeline = create_pipeline(tiny_config(tmp_path, tmp_path / "data"))
    [example_gen] = [c for c in pipeline.components if isinstance(c, GeoTiffExampleGen)]
    assert example_gen.exec_properties["tile_size"] == TILE


def test_executor_keeps_each_site_on_one_side_and_merges_eval_sites_into_scenes(tmp_path):
    """Three overlapping tiles (one site) among tiles of their own places: every site's tiles
    share a split, sites.jsonl lists every site, and the scene split holds one merged scene
    per eval site, its windows named and sliced by the site."""
    from rasterio.transform import from_origin

    from data.convert import SITES_FILE
    from data.examples import decode_pair
    from tests.fixtures.geotiffs import PIXEL_DEGREES

    config = SplitConfig(shards=1)
    data = tmp_path / "data"
    for k, pid in enumerate(("1", "2", "3")):
        origin = from_origin(-50.0 + 10 * k * PIXEL_DEGREES, -10.0, PIXEL_DEGREES, PIXEL_DEGREES)
        make_pair(data / "img", data / "mask", pid, size=(32, 32), seed=k, transform=origin)
    for n in range(4, 16):
        make_pair(data / "img", data / "mask", str(n), size=(32, 32), seed=n)
    outputs, properties = _executor_inputs(tmp_path, config)

    Executor().Do({}, outputs, properties)

    report = Path(outputs[REPORT_KEY][0].uri)
    sites = [json.loads(line) for line in (report / SITES_FILE).read_text().splitlines()]
    assert [s["site"] for s in sites][:2] == ["site-1", "site-4"] and len(sites) == 13
    assert sites[0]["tiles"] == ["1", "2", "3"] and "agreement" in sites[0]
    assert outputs[REPORT_KEY][0].get_int_custom_property("sites") == 13
    examples = Path(outputs[EXAMPLES_KEY][0].uri)
    side = {pid: split for split in ("train", "eval") for pid in _split_ids(examples, split)}
    assert len({side[p] for p in ("1", "2", "3")}) == 1
    eval_sites = {s["site"] for s in sites if s["split"] == "eval"}
    assert eval_sites and {
        side[t] for s in sites for t in s["tiles"] if s["site"] in eval_sites
    } == {"eval"}
    layout = json.loads((report / SCENE_LAYOUT_FILE).read_text())
    assert {s["site"] for s in layout["sites"]} == eval_sites
    import tensorflow as tf

    files = sorted(str(p) for p in (examples / "Split-scene").glob("*.gz"))
    windows = [decode_pair(r) for r in tf.data.TFRecordDataset(files, "GZIP").as_numpy_iterator()]
    assert {w.site_id for w in windows} == eval_sites
    assert all(w.pair_id.startswith(w.site_id + "_y") for w in windows)
