"""The validation gate reads an ExampleAnomalies artifact in a gs:// bucket
(tests/fixtures/object_store.py), as on Vertex AI / Kubeflow."""

from __future__ import annotations

import pytest
import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact_utils, standard_artifacts

from components.anomalies import ANOMALIES_FILE, list_anomalies
from components.validation_gate import AnomaliesFound, ExampleValidationGate


def _anomalies_artifact(uri: str, bad: dict[str, str]) -> standard_artifacts.ExampleAnomalies:
    artifact = standard_artifacts.ExampleAnomalies()
    artifact.uri = uri
    artifact.split_names = artifact_utils.encode_split_names(["train", "eval"])
    for split in ("train", "eval"):
        anomalies = anomalies_pb2.Anomalies()
        if split in bad:
            anomalies.anomaly_info["image"].description = bad[split]
        with tf.io.gfile.GFile(f"{uri}/Split-{split}/{ANOMALIES_FILE}", "wb") as fh:
            fh.write(anomalies.SerializeToString())
    return artifact


def test_the_gate_reads_anomalies_from_a_bucket(object_store):
    clean = _anomalies_artifact(object_store.uri("gate", "clean"), {})
    broken = _anomalies_artifact(object_store.uri("gate", "broken"), {"eval": "wrong shape"})
    gate = ExampleValidationGate.EXECUTOR_SPEC.executor_class()

    gate.Do({"anomalies": [clean]}, {}, {})  # nothing found: the run goes on
    with pytest.raises(AnomaliesFound, match="wrong shape"):
        gate.Do({"anomalies": [broken]}, {}, {})
    assert [str(a) for a in list_anomalies(broken.uri, ["train", "eval", "scene"])] == [
        str(a) for a in list_anomalies(broken.uri, ["eval"])
    ]
