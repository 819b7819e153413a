"""The Tuner's files in a gs:// bucket (tests/fixtures/object_store.py): its trials file, and
the spec file a worker process reads (`python -m components.tuner SPEC`)."""

from __future__ import annotations

import json
import time

import tensorflow as tf

from components import tuner
from tests.components.test_tuner import tiny_search


def test_trials_file_goes_to_a_bucket(object_store, tmp_path):
    oracle, search = tiny_search(tmp_path, max_trials=2, num_initial_points=1)
    trial = oracle.create_trial("tuner0")
    path = object_store.uri("tuner", "results", tuner.TRIALS_FILE)

    tuner.write_trials(search, path, workers=1, started=time.monotonic())

    written = json.loads(tf.io.gfile.GFile(path).read())
    assert written["max_trials"] == 2
    assert [t["trial"] for t in written["trials"]] == [trial.trial_id]
    assert written["trials"][0]["hyperparameters"] == trial.hyperparameters.values
