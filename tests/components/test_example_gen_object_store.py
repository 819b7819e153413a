"""GeoTiffExampleGen over an object store: data, examples and report all in gs:// buckets
(tests/fixtures/object_store.py), and the input fingerprint of remote data."""

from __future__ import annotations

import json

import tensorflow as tf

from components.example_gen import (
    EXAMPLES_KEY,
    REJECTED_FILE,
    REPORT_KEY,
    SCENE_LAYOUT_FILE,
    SUMMARY_FILE,
    ConversionReport,
    Executor,
    GeoTiffExampleGen,
    input_fingerprint,
)
from data.config import SplitConfig
from data.labels import EXCLUDE, LABELS_FILE, LabelDecision, write_labels
from data.pairs import EXCLUDED_BY_REVIEW, MISSING_MASK
from tests.fixtures.geotiffs import make_pair, make_pairs, pairs_in_both_splits


def test_fingerprint_of_remote_data_follows_its_objects(object_store, tmp_path):
    images, masks = make_pairs(tmp_path / "data", 3, size=(16, 16))
    base = object_store.upload(tmp_path / "data", object_store.uri("fingerprint", "data"))
    empty = input_fingerprint(object_store.uri("fingerprint", "nothing-here"))

    before = input_fingerprint(base)
    assert before != empty  # the objects count, not a constant
    assert input_fingerprint(base) == before  # nothing changed, same fingerprint

    with tf.io.gfile.GFile(f"{base}/mask/mask_2.tif", "wb") as fh:  # one object rewritten
        fh.write((masks / "mask_3.tif").read_bytes())
    rewritten = input_fingerprint(base)
    assert rewritten != before

    with tf.io.gfile.GFile(f"{base}/{LABELS_FILE}", "w") as fh:  # the review file counts too
        fh.write("")
    assert input_fingerprint(base) != rewritten


def test_executor_reads_and_writes_buckets(object_store, tmp_path):
    config = SplitConfig(shards=1)
    data = tmp_path / "data"
    by_split = pairs_in_both_splits(data, config.splits)
    excluded = by_split["train"][0]
    write_labels(data / LABELS_FILE, [LabelDecision(excluded, EXCLUDE, "bad polygon")])
    make_pair(tmp_path / "lonely", data / "mask-unused", "99", size=(32, 32))
    (data / "img").joinpath("img_99.tif").write_bytes((tmp_path / "lonely/img_99.tif").read_bytes())
    base = object_store.upload(data, object_store.uri("example-gen", "data"))
    GeoTiffExampleGen(base, config)  # the component checks the bucket's labels.yaml

    out = object_store.uri("example-gen", "out")
    examples, report = ConversionReport(), ConversionReport()
    from tfx.types import standard_artifacts

    examples = standard_artifacts.Examples()
    examples.uri = f"{out}/examples"
    report.uri = f"{out}/report"
    properties = {
        "input_base": base,
        "splits": json.dumps([list(s) for s in config.splits]),
        "scene": json.dumps({"seed": config.scene.seed}),
        "shards": config.shards,
    }

    Executor().Do({}, {EXAMPLES_KEY: [examples], REPORT_KEY: [report]}, properties)

    gfile = tf.io.gfile
    rows = [
        json.loads(x) for x in gfile.GFile(f"{report.uri}/{REJECTED_FILE}").read().split("\n") if x
    ]
    assert {r["id"]: r["reason"] for r in rows} == {
        excluded: EXCLUDED_BY_REVIEW,
        "99": MISSING_MASK,
    }
    assert json.loads(gfile.GFile(f"{report.uri}/{SUMMARY_FILE}").read())["rejected"] == 2
    assert json.loads(gfile.GFile(f"{report.uri}/{SCENE_LAYOUT_FILE}").read())["sites"]
    for split in ("train", "eval", "scene"):
        assert gfile.glob(f"{examples.uri}/Split-{split}/data_tfrecord-*.gz"), split
    made = sum(len(ids) for ids in by_split.values())
    assert examples.get_int_custom_property("converted") == made - 1
