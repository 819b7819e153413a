"""A run's search read back from its TunerResults artifact, for the summary and the report."""

from __future__ import annotations

import json

from ml_metadata.proto import metadata_store_pb2

from components.config import TRIALS_FILE
from pipeline import metadata, nodes
from pipeline.reports.run_report import _tuning
from pipeline.tuning import read_search, search_lines

SEARCH = {
    "objective": "scene_iou",
    "direction": "max",
    "algorithm": "BayesianOptimizationOracle",
    "max_trials": 3,
    "workers": 2,
    "seconds": 612.4,
    "trials": [
        {
            "trial": "0",
            "status": "COMPLETED",
            "score": 0.21,
            "hyperparameters": {"train.learning_rate": 0.0005, "model.loss": "bce_dice"},
            "metrics": {"scene_iou": 0.21, "seconds": 190.0},
        },
        {
            "trial": "1",
            "status": "COMPLETED",
            "score": 0.27,
            "hyperparameters": {"train.learning_rate": 0.0011, "model.loss": "bce"},
            "metrics": {"scene_iou": 0.27, "seconds": 201.0},
        },
        {
            "trial": "2",
            "status": "FAILED",
            "score": None,
            "hyperparameters": {"train.learning_rate": 0.0002, "model.loss": "bce"},
            "metrics": {},
        },
    ],
}


def _run(tmp_path, with_tuner: bool = True) -> metadata.RunRecord:
    (tmp_path / TRIALS_FILE).write_text(json.dumps(SEARCH))
    outputs = {nodes.TUNER_RESULTS: [metadata_store_pb2.Artifact(uri=str(tmp_path))]}
    tuner = metadata.NodeRun(nodes.TUNER, "COMPLETE", 0, 1, outputs)
    return metadata.RunRecord("r", 0, {nodes.TUNER: tuner} if with_tuner else {})


def test_the_best_completed_trial_is_the_one_the_trainer_got(tmp_path) -> None:
    search = read_search(_run(tmp_path))
    assert search.best.trial == "1" and search.workers == 2
    lines = search_lines(search)
    assert "2 of 3 trials completed" in lines[0] and "held-out fold of the train split" in lines[0]
    assert lines[1] == "  best trial 1: scene_iou 0.270"
    assert "model.loss=bce, train.learning_rate=0.0011" in lines[2]
    assert "did not complete: 2" in lines[3]


def test_a_run_without_a_tuner_has_no_search(tmp_path) -> None:
    assert read_search(_run(tmp_path, with_tuner=False)) is None


def test_the_report_lists_every_trial_with_its_duration_and_plots_the_scores(tmp_path) -> None:
    page = _tuning(read_search(_run(tmp_path)))
    assert "Hyperparameter search" in page and "data:image/png;base64," in page
    assert page.count("<tr") == 4  # header and three trials
    assert ">201<" in page and ">0.270<" in page and ">failed<" in page
    assert "class='good'" in page  # the best trial is marked


def test_the_run_summary_shows_the_search(tmp_path) -> None:
    from pipeline.summary import summarize_record

    lines = summarize_record(_run(tmp_path), 1.0).lines()
    assert any(line.startswith("tuning: 2 of 3 trials completed") for line in lines)
    assert "  best trial 1: scene_iou 0.270" in lines
