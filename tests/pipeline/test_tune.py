"""`tailings run --tune`: TFX's Tuner in the pipeline, trials in parallel processes, and its best
hyperparameters in the model the Trainer exports."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from components import progress, trainer_lib, tuner_lib
from components.config import TRIALS_FILE, TuneConfig
from pipeline import metadata, nodes
from pipeline.pipeline import create_pipeline
from tests.fixtures.geotiffs import make_pairs
from tests.fixtures.pipeline import TILE, tiny_config


def test_a_run_without_tune_has_no_tuner(tmp_path) -> None:
    pipeline = create_pipeline(tiny_config(tmp_path, tmp_path / "data"))
    ids = [c.id for c in pipeline.components]
    assert nodes.TUNER not in ids and nodes.TRAINER in ids


def test_tuner_sits_between_transform_and_trainer(tmp_path) -> None:
    cfg = dataclasses.replace(tiny_config(tmp_path, tmp_path / "data"), tune=TuneConfig())
    ids = [c.id for c in create_pipeline(cfg).components]
    assert ids.index(nodes.TRANSFORM) < ids.index(nodes.TUNER) < ids.index(nodes.TRAINER)


@pytest.mark.slow
def test_parallel_trials_and_the_best_hyperparameters_reach_the_exported_model(
    tmp_path, monkeypatch
) -> None:
    """Two trials in two worker processes (KerasTuner's chief oracle on 127.0.0.1); the Trainer
    trains with the best trial's values, read back from the exported model's config. The
    Evaluators and the Pusher are the session pipeline's business: this run stops after the
    Trainer."""
    from tfx import v1 as tfx
    from tfx.orchestration.pipeline import RunOptions

    make_pairs(tmp_path / "data", 14, size=(TILE, TILE))
    tune = TuneConfig(trials=2, epochs=1, workers=2, folds=2, initial_points=1)
    cfg = dataclasses.replace(tiny_config(tmp_path, tmp_path / "data"), tune=tune)
    # The file `tailings run` names for the components' progress lines, as its runner does.
    progress_file = tmp_path / "run.progress"
    monkeypatch.setenv(progress.PROGRESS_FILE_ENV, str(progress_file))
    # A partial run (TFX's RunOptions) up to the Trainer.
    tfx.orchestration.LocalDagRunner().run(
        create_pipeline(cfg), run_options=RunOptions(to_nodes=[nodes.TRAINER])
    )

    run = metadata.load_run(metadata.open_store(str(cfg.metadata_path)))
    assert run.nodes[nodes.TUNER].state == "COMPLETE"
    best_dir = run.artifact(nodes.TUNER, nodes.BEST_HYPERPARAMETERS).uri
    with open(os.path.join(best_dir, "best_hyperparameters.txt")) as f:
        best = json.load(f)["values"]
    results_dir = run.artifact(nodes.TUNER, nodes.TUNER_RESULTS).uri
    with open(os.path.join(results_dir, TRIALS_FILE)) as f:
        search = json.load(f)
    assert search["workers"] == 2 and search["objective"] == tuner_lib.OBJECTIVE
    assert [t["status"] for t in search["trials"]] == ["COMPLETED", "COMPLETED"]
    preset = cfg.trainer()  # the first trial is the preset's own values
    first = search["trials"][0]["hyperparameters"]
    assert tuner_lib.trial_config(preset, first, preset.train.epochs) == preset
    scores = [t["score"] for t in search["trials"]]
    assert max(scores) == pytest.approx(
        next(t["score"] for t in search["trials"] if t["hyperparameters"] == best)
    )
    # Each process logs to the TunerResults artifact; the trials ran in the worker processes
    # (each epoch is a line `tunerN trial T epoch e/E: ...`), none in the chief.
    logs = {
        name: open(os.path.join(results_dir, f"{name}.log")).read()
        for name in ("chief", "tuner0", "tuner1")
    }
    ran = {
        trial
        for worker in ("tuner0", "tuner1")
        for trial in ("0", "1")
        if f"{worker} trial {trial} epoch 1/1" in logs[worker]
    }
    assert ran == {"0", "1"}, logs
    assert "epoch 1/1" not in logs["chief"]
    # A progress line per trial from the worker processes, one per epoch from the Trainer.
    lines = progress_file.read_text().splitlines()
    trials = sorted(line.split(":")[0] for line in lines if line.startswith("Tuner trial "))
    assert trials == ["Tuner trial 1/2", "Tuner trial 2/2"], lines
    epochs = [line for line in lines if line.startswith("Trainer epoch ")]
    assert len(epochs) == cfg.trainer().train.epochs, lines

    model_dir = run.artifact(nodes.TRAINER, nodes.MODEL).uri
    config_path = os.path.join(
        model_dir, "Format-Serving", trainer_lib.ASSETS_EXTRA, trainer_lib.CONFIG_FILE
    )
    with open(config_path) as f:
        exported = json.load(f)
    assert exported["train"]["learning_rate"] == pytest.approx(best[tuner_lib.LEARNING_RATE])
    assert exported["train"]["batch_size"] == best[tuner_lib.BATCH_SIZE]
    assert exported["train"]["augment_color"] == pytest.approx(best[tuner_lib.BAND_JITTER])
    assert exported["model"]["loss"] == best[tuner_lib.LOSS]
    assert exported["model"]["base_width"] == best[tuner_lib.BASE_WIDTH]
    # The Trainer trains the preset's epochs, not the trials'.
    assert exported["train"]["epochs"] == cfg.trainer().train.epochs
