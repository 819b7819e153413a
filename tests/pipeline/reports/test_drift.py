"""Drift and skew with TFDV's comparators and the thresholds in the curated schema."""

from __future__ import annotations

import math

import pytest
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import statistics_pb2

from pipeline.pipeline import SCHEMA_FILE
from pipeline.reports import drift as drift_lib
from pipeline.reports.stats import DataStats, ReportError
from pipeline.reports.terminal import drift_lines
from schemas import features as F

FOLDER = "folder"
RED_BAND = {F.band_feature(s, "B4") for s in F.BAND_STATISTICS}
BRIGHT_BANDS = {F.band_feature(s, b) for s in (F.BAND_MEAN, F.BAND_MAX) for b in F.BAND_ORDER}


def test_schema_compares_every_band_on_its_own_and_the_tailings_fraction():
    schema = drift_lib.load_schema()
    for name in F.COMPARED_FEATURES:
        feature = tfdv.get_feature(schema, name)
        assert 0.0 < feature.drift_comparator.jensen_shannon_divergence.threshold < 1.0, name
        assert 0.0 < feature.skew_comparator.jensen_shannon_divergence.threshold < 1.0, name
    drift = [f.name for f in schema.feature if f.HasField("drift_comparator")]
    skew = [f.name for f in schema.feature if f.HasField("skew_comparator")]
    assert sorted(drift) == sorted(skew) == sorted(F.COMPARED_FEATURES)
    assert len(F.PER_BAND_FEATURES) == 4 * 3  # mean, std, min, max x B2, B3, B4


def test_a_schema_without_comparators_is_refused(tmp_path):
    plain = tmp_path / "schema.pbtxt"
    plain.write_text(
        "\n".join(
            line for line in open(SCHEMA_FILE).read().splitlines() if "drift_comparator" not in line
        )
    )
    with pytest.raises(ReportError, match="sets no drift_comparator"):
        drift_lib.load_schema(str(plain))


def test_the_red_band_alone_drifts_and_is_caught_in_that_band_only(red_stats, same_stats):
    """Issue 17: B4 x 1.3, B2 and B3 unchanged. The pooled band vectors hid it."""
    found = drift_lib.compare(red_stats, same_stats, drift_lib.load_schema())
    assert {(d.split, d.reference_split) for d in found} == {(FOLDER, FOLDER)}
    assert {d.feature for d in found} == set(F.COMPARED_FEATURES)
    drifted = {d.feature for d in found if d.drifted}
    assert drifted and drifted <= RED_BAND, found
    assert drift_lib.found(found)
    for d in found:
        assert not d.problem and d.drifted == (d.value > d.threshold)
        if d.feature not in RED_BAND:  # the other bands and the masks: the very same values
            assert d.value == pytest.approx(0.0, abs=1e-9), d


def test_a_folder_against_itself_does_not_drift(same_stats):
    found = drift_lib.compare(same_stats, same_stats, drift_lib.load_schema())
    assert len(found) == len(F.COMPARED_FEATURES)
    assert not drift_lib.found(found)
    assert all(d.value == pytest.approx(0.0, abs=1e-9) for d in found)


def test_a_reference_without_per_band_statistics_is_not_a_pass(same_stats):
    """Statistics from before the per-band features (e.g. an older run): the check could not
    happen, so it is reported per feature and counts as found."""
    old = statistics_pb2.DatasetFeatureStatistics()
    old.CopyFrom(same_stats.statistics[FOLDER])
    del old.features[:]
    old.features.extend(
        f
        for f in same_stats.statistics[FOLDER].features
        if f.path.step[0] not in F.PER_BAND_FEATURES
    )
    reference = DataStats(source="run old", statistics={"train": old})
    found = drift_lib.compare(same_stats, reference, drift_lib.load_schema())
    unmeasured = {d.feature: d for d in found if d.problem}
    assert set(unmeasured) == set(F.PER_BAND_FEATURES)
    d = unmeasured[F.band_feature(F.BAND_MEAN, "B4")]
    assert math.isnan(d.value) and d.verdict == "not measured: no statistics in train"
    assert drift_lib.found(found)
    assert "12 not measured" in drift_lines(found, reference)[0]


def test_skew_compares_every_split_with_train(same_stats, red_stats):
    data = DataStats(
        source="run x",
        statistics={
            "train": same_stats.statistics[FOLDER],
            "eval": same_stats.statistics[FOLDER],
            "scene": red_stats.statistics[FOLDER],
        },
    )
    found = drift_lib.skew(data, drift_lib.load_schema())
    assert {(d.split, d.reference_split, d.kind) for d in found} == {
        ("eval", "train", drift_lib.SKEW),
        ("scene", "train", drift_lib.SKEW),
    }
    assert not [d for d in found if d.split == "eval" and (d.drifted or d.value > 1e-9)]
    skewed = {d.feature for d in found if d.split == "scene" and d.drifted}
    assert skewed <= RED_BAND and {d.feature for d in found if d.drifted} == skewed
    assert drift_lib.skew(DataStats("folder x", {FOLDER: data.statistics["train"]}), None) == []


def test_a_single_split_reference_is_compared_with_every_split(same_stats):
    run = DataStats(
        "run x", {"train": same_stats.statistics[FOLDER], "eval": same_stats.statistics[FOLDER]}
    )
    assert drift_lib.split_pairs(run, same_stats) == [("train", FOLDER), ("eval", FOLDER)]
    assert drift_lib.split_pairs(same_stats, run) == [(FOLDER, "train")]


@pytest.mark.slow
def test_a_run_against_itself_has_zero_divergence(run_stats):
    found = drift_lib.compare(run_stats, run_stats, drift_lib.load_schema())
    pairs = {(d.split, d.reference_split) for d in found}
    assert pairs == {("train", "train"), ("eval", "eval"), ("scene", "scene")}
    assert {d.feature for d in found} == set(F.COMPARED_FEATURES)
    assert all(d.measure == "JENSEN_SHANNON_DIVERGENCE" for d in found)
    assert all(d.value == pytest.approx(0.0, abs=1e-9) and not d.drifted for d in found)


@pytest.mark.slow
def test_the_same_pairs_in_a_folder_do_not_drift_from_the_run(same_stats, run_stats):
    found = drift_lib.compare(same_stats, run_stats, drift_lib.load_schema())
    assert {(d.split, d.reference_split) for d in found} == {(FOLDER, "train")}
    assert len(found) == len(F.COMPARED_FEATURES)
    assert not drift_lib.found(found), found


@pytest.mark.slow
def test_brighter_images_drift_in_the_bands_only(bright_stats, run_stats):
    found = drift_lib.compare(bright_stats, run_stats, drift_lib.load_schema())
    drifted = {d.feature for d in found if d.drifted}
    assert BRIGHT_BANDS <= drifted <= set(F.PER_BAND_FEATURES), found  # masks unchanged
    for d in found:
        assert d.drifted == (d.value > d.threshold)
    lines = drift_lines(found, run_stats)
    assert lines[0].startswith(f"drift against {run_stats.source}")
    assert f"{len(drifted)} of {len(F.COMPARED_FEATURES)}" in lines[0]
    assert sum(line.endswith("DRIFT") for line in lines) == len(drifted)


def test_nothing_to_compare_is_an_error(same_stats):
    other = DataStats(
        source="run x",
        statistics={"test": same_stats.statistics[FOLDER], "x": same_stats.statistics[FOLDER]},
    )
    with pytest.raises(ReportError, match="nothing to compare"):
        drift_lib.split_pairs(same_stats, other)
