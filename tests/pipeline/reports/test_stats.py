"""Statistics from a TFRecord folder and from a pipeline run, and the terminal tables."""

from __future__ import annotations

import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import statistics_pb2

from pipeline.config import PipelineConfig
from pipeline.reports import stats
from pipeline.reports.config import ReportConfig
from pipeline.reports.stats import Bucket, FeatureRow, ReportError, shared_histograms
from pipeline.reports.terminal import number, percent, sparkline, stats_lines
from schemas import features as F
from tests.pipeline.reports.conftest import PAIRS


def rows_by_name(dataset) -> dict[str, FeatureRow]:
    return {row.name: row for row in stats.feature_rows(dataset)}


def test_folder_statistics_cover_every_converted_pair(same_stats, same_folder):
    split = ReportConfig().folder_split
    assert list(same_stats.statistics) == [split]
    assert same_stats.statistics[split].num_examples == PAIRS
    rows = rows_by_name(same_stats.statistics[split])
    assert set(F.feature_spec()) <= set(rows)
    mean = rows[F.BAND_MEAN]
    assert (mean.kind, mean.count, mean.missing, mean.values_per_example) == (
        "numeric",
        PAIRS,
        0,
        3,
    )
    assert 0.0 < mean.min <= mean.mean <= mean.max < 1.0
    assert len(mean.histogram) == 10 and sum(b.count for b in mean.histogram) == pytest.approx(
        3 * PAIRS
    )
    for band in F.BAND_ORDER:  # each band on its own: one value per example
        one = rows[F.band_feature(F.BAND_MEAN, band)]
        assert (one.kind, one.count, one.values_per_example) == ("numeric", PAIRS, 1)
        assert one.min <= one.quantile(0.1) <= one.median <= one.quantile(0.9) <= one.max
        assert one.median == one.quantile(0.5) and len(one.quantiles) == 11
    assert rows[F.TRANSFORM].zeros_percent == pytest.approx(100 * 2 / 6)  # b and d of 6 values
    assert rows[F.TAILINGS_FRACTION].missing_percent == 0.0
    assert rows[F.IMAGE].kind == "bytes" and rows[F.IMAGE].note == "49.2 kB each"  # 64*64*3*4
    assert rows[F.BAND_NAMES].note == "3 unique: B2, B3, B4"
    assert same_stats.anomalies == []
    assert [(r["id"], r["reason"]) for r in same_stats.rejected] == [("broken", "mask_values")]
    assert len(same_stats.example_files[split]) == 2


def test_raw_digital_numbers_are_anomalies_in_a_folder(raw_dn_folder):
    data = stats.from_examples(raw_dn_folder)
    flagged = {a.feature for a in data.anomalies}
    assert {F.BAND_MEAN, F.BAND_MAX} <= flagged, data.anomalies
    assert F.band_feature(F.BAND_MEAN, "B4") in flagged  # each band has its own domain too
    lines = stats_lines(data)
    assert any(line.startswith("band_mean[3]") and line.endswith("<- anomaly") for line in lines)


@pytest.mark.slow
def test_run_statistics_have_both_splits_and_their_examples(run_stats):
    assert sorted(run_stats.statistics) == ["eval", "scene", "train"]
    total = sum(run_stats.statistics[s].num_examples for s in ("train", "eval"))
    assert total == PAIRS
    assert run_stats.statistics["scene"].num_examples > run_stats.statistics["eval"].num_examples
    assert run_stats.anomalies == [] and run_stats.rejected == []
    assert all(run_stats.example_files[s] for s in ("train", "eval"))
    only_eval = run_stats.only("eval")
    assert list(only_eval.statistics) == ["eval"] and list(only_eval.example_files) == ["eval"]


def test_terminal_table_lists_every_feature_with_rejections(same_stats):
    lines = stats_lines(same_stats)
    text = "\n".join(lines)
    assert lines[0] == f"statistics of {same_stats.source}: examples folder {PAIRS}"
    for name in ("band_mean[3]", "band_mean_b4", "tailings_fraction", "image", "pair_id"):
        assert any(line.startswith(name + " ") for line in lines), name
    assert "anomalies: none" in text
    assert "rejected pairs: 1" in text and "  broken: mask_values" in text
    # Every fixture pair is a place of its own; the broken one has no converted tile.
    assert f"sites: {PAIRS} (least label agreement first)" in text


def test_sites_are_listed_least_agreement_first():
    from pipeline.reports.terminal import site_lines

    rows = [
        {
            "site": "site-9",
            "tiles": ["9"],
            "converted": ["9"],
            "split": "train",
            "agreement": 1.0,
            "disputed_pixels": 0,
            "union_pixels": 50,
        },
        {
            "site": "site-2",
            "tiles": ["2", "3", "5"],
            "converted": ["2", "3"],
            "split": "eval",
            "agreement": 0.25,
            "disputed_pixels": 30,
            "union_pixels": 40,
        },
        {"site": "site-4", "tiles": ["4"], "converted": []},  # nothing converted: not listed
    ]
    lines = site_lines(rows, shown=1)
    assert lines[0] == "sites: 2 (least label agreement first)"
    assert lines[1].split()[:4] == ["site-2", "eval", "tiles", "2"]
    assert "agreement 0.25" in lines[1] and "disputed 30 / 40 px" in lines[1]
    assert lines[2] == "  ... 1 more (all of them in the HTML page)"


def test_terminal_values_are_tfdvs_per_band_numbers(same_stats, same_folder):
    """The red band's own mean, median and spread, as numpy computes them from the pixels."""
    import numpy as np

    from data.reader import read_dataset

    means = np.array(
        [image[..., 2].mean() for image, _ in read_dataset(same_folder).as_numpy_iterator()]
    )
    rows = rows_by_name(same_stats.statistics["folder"])
    red = rows[F.band_feature(F.BAND_MEAN, "B4")]
    assert red.mean == pytest.approx(means.mean(), rel=1e-5)
    assert red.std == pytest.approx(means.std(), rel=1e-4)
    assert (red.min, red.max) == pytest.approx((means.min(), means.max()), rel=1e-5)
    line = next(x for x in stats_lines(same_stats) if x.startswith("band_mean_b4 "))
    assert line.split()[1:6] == ["folder", str(PAIRS), "0%", "0%", number(red.mean)]
    assert number(red.median) in line.split()


def test_a_features_splits_share_one_histogram_range(same_stats, red_stats):
    """Side by side: the reference's row under the split's, both drawn on one range."""
    from pipeline.reports import drift as drift_lib

    found = drift_lib.compare(red_stats, same_stats, drift_lib.load_schema())
    lines = stats_lines(red_stats, found, same_stats)
    name = F.band_feature(F.BAND_MEAN, "B4")
    at = next(i for i, x in enumerate(lines) if x.startswith(name + " "))
    current, reference = lines[at], lines[at + 1]
    assert reference.split()[:2] == ["ref", "folder"]
    span = [x for x in current.split() if ".." in x]
    assert span and span == [x for x in reference.split() if ".." in x]  # one shared range
    assert "drift " in current and "drift " not in reference


def test_shared_histograms_rebucket_onto_one_range():
    low_half = (Bucket(0.0, 1.0, 4.0), Bucket(1.0, 2.0, 4.0))
    high_half = (Bucket(2.0, 4.0, 8.0),)
    constant = (Bucket(3.0, 3.0, 5.0),)
    low, high, counts = shared_histograms([low_half, high_half, constant, ()], 4)
    assert (low, high) == (0.0, 4.0)
    assert counts == [[4.0, 4.0, 0.0, 0.0], [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 0.0, 5.0], [0.0] * 4]
    assert shared_histograms([constant], 10)[:2] == (3.0, 3.0)


def test_sparkline_numbers_and_percentages():
    assert sparkline([float(i) for i in range(8)]) == "▁▂▃▄▅▆▇█"
    assert sparkline([]) == ""
    assert number(0.000123456) == "1.235e-04" and number(0.5) == "0.5" and number(None) == "-"
    assert (percent(0.0), percent(0.4), percent(33.333)) == ("0%", "0.4%", "33%")
    row = FeatureRow("x", "numeric", 90, 10, 6.0, zeros=180, total_values=540)
    assert row.missing_percent == pytest.approx(10.0) and row.zeros_percent == pytest.approx(
        100 / 3
    )


def test_bad_inputs_are_one_clear_line(tmp_path):
    with pytest.raises(ReportError, match="--examples folder does not exist: .*nope"):
        stats.from_examples(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=r"no \*\.tfrecord\.gz shards in .*empty"):
        stats.from_examples(tmp_path / "empty")
    with pytest.raises(ReportError, match="no metadata store at .*metadata.sqlite"):
        stats.from_run(PipelineConfig(output_dir=tmp_path))


@pytest.mark.slow
def test_unknown_run_and_split_are_named(pipeline_run, run_stats):
    cfg, _ = pipeline_run
    with pytest.raises(ReportError, match="no run 'nope'; known runs: "):
        stats.from_run(cfg, "nope")
    with pytest.raises(ReportError, match="has no split 'test' .*train, eval|eval, train"):
        run_stats.only("test")


def corrupt_copy(folder, tmp_path, damage) -> tuple:
    """A copy of a converted folder whose second shard is damaged by `damage(bytes)`."""
    import shutil

    copy = tmp_path / "examples"
    shutil.copytree(folder, copy)
    shard = sorted(copy.glob("*.tfrecord.gz"))[1]
    shard.write_bytes(damage(shard.read_bytes()))
    return copy, shard


def truncated(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def scrambled(raw: bytes) -> bytes:
    middle = len(raw) // 2
    return raw[:middle] + bytes(b ^ 0xFF for b in raw[middle : middle + 64]) + raw[middle + 64 :]


@pytest.mark.parametrize(
    ("damage", "problem"),
    [(truncated, "truncated: the gzip stream ends early"), (scrambled, "corrupt")],
)
def test_a_damaged_shard_is_named_with_its_problem(same_folder, tmp_path, damage, problem):
    folder, shard = corrupt_copy(same_folder, tmp_path, damage)
    assert stats.shard_problem(str(sorted(folder.glob("*.tfrecord.gz"))[0])) is None
    with pytest.raises(ReportError) as caught:
        stats.from_examples(folder)
    message = str(caught.value)
    assert message.startswith(f"cannot read shard {shard}: {problem}"), message
    assert "\n" not in message
    with pytest.raises(ReportError, match=f"cannot read shard {shard}"):
        stats.read_examples([str(p) for p in sorted(folder.glob("*.tfrecord.gz"))], 100)


def test_statistics_files_in_every_tfdv_format(same_stats, tmp_path):
    dataset = same_stats.statistics["folder"]
    statistics = statistics_pb2.DatasetFeatureStatisticsList(datasets=[dataset])
    split_dir = tmp_path / "Split-train"
    split_dir.mkdir()
    (split_dir / "FeatureStats.pb").write_bytes(statistics.SerializeToString())
    tfdv.write_stats_text(statistics, str(tmp_path / "stats.pbtxt"))
    tfrecord = tmp_path / "stats.tfrecord"
    with tf.io.TFRecordWriter(str(tfrecord)) as writer:
        writer.write(statistics.SerializeToString())
    binary = stats.from_statistics_file(split_dir / "FeatureStats.pb")
    assert list(binary.statistics) == ["train"]  # named by StatisticsGen's folder
    for path in (tmp_path / "stats.pbtxt", tfrecord):
        loaded = stats.from_statistics_file(path)
        assert list(loaded.statistics) == ["file"] and loaded.source == f"file {path}"
        assert loaded.statistics["file"] == dataset
    junk = tmp_path / "notes.txt"
    junk.write_text("not statistics")
    with pytest.raises(ReportError, match=f"{junk} is not a TFDV statistics file"):
        stats.from_statistics_file(junk)


def test_compare_takes_a_folder_a_file_or_a_run_id(same_stats, same_folder, tmp_path):
    tfdv.write_stats_text(
        statistics_pb2.DatasetFeatureStatisticsList(datasets=[same_stats.statistics["folder"]]),
        str(tmp_path / "stats.pbtxt"),
    )
    cfg = PipelineConfig(output_dir=tmp_path)
    assert stats.load_reference(str(tmp_path / "stats.pbtxt"), cfg).source.startswith("file ")
    assert stats.load_reference(str(same_folder), cfg).source == f"folder {same_folder}"
    with pytest.raises(ReportError, match="--compare nope: not a folder or statistics file, and"):
        stats.load_reference("nope", cfg)
