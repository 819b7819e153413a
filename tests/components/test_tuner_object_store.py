"""The Tuner's files in a gs:// bucket (tests/fixtures/object_store.py): its trials file, and
the spec file a worker process reads (`python -m components.tuner SPEC`)."""

from __future__ import annotations

import json
import time

import keras_tuner as kt
import tensorflow as tf

from components import tuner, tuner_lib
from components.config import TuneConfig
from tests.components.test_tuner import TINY


def test_trials_file_goes_to_a_bucket(object_store, tmp_path):
    hp = tuner_lib.search_space(TINY, TuneConfig())
    oracle = tuner_lib.PresetFirstOracle(
        objective=kt.Objective(tuner_lib.OBJECTIVE, "max"),
        max_trials=2,
        hyperparameters=hp,
        num_initial_points=1,
        seed=1,
    )
    search = tuner_lib.SceneWindowTuner(oracle=oracle, directory=str(tmp_path), project_name="t")
    trial = oracle.create_trial("tuner0")
    path = object_store.uri("tuner", "results", tuner.TRIALS_FILE)

    tuner.write_trials(search, path, workers=1, started=time.monotonic())

    written = json.loads(tf.io.gfile.GFile(path).read())
    assert written["max_trials"] == 2
    assert [t["trial"] for t in written["trials"]] == [trial.trial_id]
    assert written["trials"][0]["hyperparameters"] == trial.hyperparameters.values
