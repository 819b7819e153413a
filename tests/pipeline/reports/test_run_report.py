"""`load_report`: what the run page is built from, read from ML Metadata and the artifacts."""

from __future__ import annotations

import pytest

from pipeline.metadata import NodeRun
from pipeline.reports.run_report import RunReport, load_report, report_html
from pipeline.summary import RunSummary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_a_run_stopped_by_anomalies_gets_a_page_without_training():
    summary = RunSummary(
        run_id="r1",
        seconds=12.0,
        converted=6,
        anomalies=["[train] band_max: out of range"],
        rejected=[{"id": "23", "reason": "shape_mismatch", "detail": "48 px wide"}],
    )
    nodes = [
        NodeRun("ExampleGen", "COMPLETE", 0, 2000),
        NodeRun("ExampleValidator", "FAILED", 0, 1),
    ]
    page = report_html(RunReport(summary=summary, started="2026-01-01 00:00:00", nodes=nodes))
    assert "<b>STOPPED: data anomalies</b>" in page
    assert "[train] band_max: out of range" in page and "shape_mismatch" in page
    assert "This run has no evaluation." in page and "This run did not train a model." in page
    assert "<tr class='bad'><td class='text'>ExampleValidator</td>" in page
    assert "<img" not in page


@pytest.mark.slow
def test_report_uses_the_thresholds_the_run_applied(pipeline_run):
    cfg, summary = pipeline_run
    report = load_report(cfg, summary.run_id)
    # The tiny run used its own bounds (tests/fixtures/pipeline.py), not PipelineConfig's.
    assert report.summary.thresholds == {
        "pixel_accuracy": 0.5,
        "accuracy_gain": -1.0,
        "facility_recall": 0.0,
        "iou": 0.0,
    }


@pytest.mark.slow
def test_report_reads_outcome_training_and_figures(pipeline_run):
    cfg, summary = pipeline_run
    report = load_report(cfg, summary.run_id)
    assert report.summary.run_id == summary.run_id
    assert report.summary.blessed and report.summary.pushed_version == "1"
    assert "all_background_accuracy" in report.summary.metrics
    assert sorted(report.split_counts) == ["eval", "train"]
    assert sum(report.split_counts.values()) == summary.converted
    assert report.curves_png.startswith(PNG_MAGIC)
    assert len(report.history["loss"]) >= 1
    assert len(report.figures) == cfg.trainer().train.max_figures
    assert all(png.startswith(PNG_MAGIC) for _, png in report.figures)
    nodes = [n.node_id for n in report.nodes]
    assert nodes[0] in ("ExampleGen", "ImportSchemaGen") and "Pusher" in nodes
    # An error map for every example each Evaluator scored (the scene windows from the
    # ScenePredictor's blended predictions), worst first as in the tables.
    for split, evaluation in report.summary.evaluations.items():
        assert [pid for pid, _ in report.error_maps[split]] == [r.pair_id for r in evaluation.tiles]
        assert all(png.startswith(PNG_MAGIC) for _, png in report.error_maps[split])
