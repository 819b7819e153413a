"""Statistics from a TFRecord folder and from a pipeline run, and the terminal tables."""

from __future__ import annotations

import pytest

from pipeline.config import PipelineConfig
from pipeline.reports import stats
from pipeline.reports.config import ReportConfig
from pipeline.reports.stats import Bucket, FeatureRow, ReportError
from pipeline.reports.terminal import number, row_line, sparkline, stats_lines
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
    assert rows[F.IMAGE].kind == "bytes" and rows[F.IMAGE].note == "49.2 kB each"  # 64*64*3*4
    assert rows[F.BAND_NAMES].note == "3 unique: B2, B3, B4"
    assert same_stats.anomalies == []
    assert [(r["id"], r["reason"]) for r in same_stats.rejected] == [("broken", "mask_values")]
    assert len(same_stats.example_files[split]) == 2


def test_raw_digital_numbers_are_anomalies_in_a_folder(raw_dn_folder):
    data = stats.from_examples(raw_dn_folder)
    flagged = {a.feature for a in data.anomalies}
    assert {F.BAND_MEAN, F.BAND_MAX} <= flagged, data.anomalies
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
    assert f"split folder: {PAIRS} examples" in text
    for name in ("band_mean[3]", "tailings_fraction", "image", "pair_id"):
        assert any(line.startswith(name + " ") for line in lines), name
    assert "anomalies: none" in text
    assert "rejected pairs: 1" in text and "  broken: mask_values" in text


def test_sparkline_and_numbers():
    rising = tuple(Bucket(i, i + 1, float(i)) for i in range(8))
    assert sparkline(rising) == "▁▂▃▄▅▆▇█"
    assert sparkline((Bucket(64, 64, 11.0),)) == "all 64"
    assert sparkline(()) == ""
    assert number(0.000123456) == "1.235e-04" and number(0.5) == "0.5" and number(None) == "-"
    row = FeatureRow("x", "string", 5, 1, 1.0, note="2 unique: a, b")
    assert row_line(row).split()[:3] == ["x", "5", "1"] and row_line(row).endswith("a, b")


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
