"""Drift with TFDV's comparators and the thresholds in the curated schema."""

from __future__ import annotations

import pytest
import tensorflow_data_validation as tfdv

from pipeline.pipeline import SCHEMA_FILE
from pipeline.reports import drift as drift_lib
from pipeline.reports.stats import DataStats, ReportError
from pipeline.reports.terminal import drift_lines
from schemas import features as F

BAND_FEATURES = {F.BAND_MEAN, F.BAND_STD, F.BAND_MIN, F.BAND_MAX}


def test_schema_sets_a_js_threshold_on_every_summary_feature():
    schema = drift_lib.load_schema()
    for name in F.SUMMARY_FEATURES:
        comparator = tfdv.get_feature(schema, name).drift_comparator
        assert 0.0 < comparator.jensen_shannon_divergence.threshold < 1.0, name
    others = [f.name for f in schema.feature if f.HasField("drift_comparator")]
    assert sorted(others) == sorted(F.SUMMARY_FEATURES)


def test_a_schema_without_comparators_is_refused(tmp_path):
    plain = tmp_path / "schema.pbtxt"
    plain.write_text(
        "\n".join(
            line for line in open(SCHEMA_FILE).read().splitlines() if "drift_comparator" not in line
        )
    )
    with pytest.raises(ReportError, match="sets no drift_comparator"):
        drift_lib.load_schema(str(plain))


@pytest.mark.slow
def test_a_run_against_itself_has_zero_divergence(run_stats):
    found = drift_lib.compare(run_stats, run_stats, drift_lib.load_schema())
    pairs = {(d.split, d.reference_split) for d in found}
    assert pairs == {("train", "train"), ("eval", "eval"), ("scene", "scene")}
    assert {d.feature for d in found} == set(F.SUMMARY_FEATURES)
    assert all(d.measure == "JENSEN_SHANNON_DIVERGENCE" for d in found)
    assert all(d.value == pytest.approx(0.0, abs=1e-9) and not d.drifted for d in found)


@pytest.mark.slow
def test_the_same_pairs_in_a_folder_do_not_drift_from_the_run(same_stats, run_stats):
    found = drift_lib.compare(same_stats, run_stats, drift_lib.load_schema())
    assert {(d.split, d.reference_split) for d in found} == {("folder", "train")}
    assert len(found) == len(F.SUMMARY_FEATURES)
    assert not [d for d in found if d.drifted], found


@pytest.mark.slow
def test_brighter_images_drift_in_the_bands_only(bright_stats, run_stats):
    found = drift_lib.compare(bright_stats, run_stats, drift_lib.load_schema())
    drifted = {d.feature for d in found if d.drifted}
    assert drifted == BAND_FEATURES, found  # masks are unchanged: tailings_fraction holds
    for d in found:
        assert d.drifted == (d.value > d.threshold)
    lines = drift_lines(found, run_stats)
    assert lines[0].startswith(f"drift against {run_stats.source}") and "4 of 5" in lines[0]
    assert sum(line.endswith("DRIFT") for line in lines) == 4


def test_nothing_to_compare_is_an_error(same_stats):
    other = DataStats(source="folder x", statistics={"test": same_stats.statistics["folder"]})
    with pytest.raises(ReportError, match="nothing to compare"):
        drift_lib.split_pairs(same_stats, other)
