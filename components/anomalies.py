"""Read ExampleValidator's anomalies (TFDV's `SchemaDiff.pb` per split), without TFX.

The ExampleValidationGate (`components.validation_gate`, a TFX component) stops a run on them;
the run summary, `tailings runs` (for a run recorded without its summary) and `tailings stats`
list them. Those readers must not pay for TFX's import (about 9 s), hence this module of its
own: it needs only TFDV's protos (`tensorflow_metadata`, protobuf alone), loaded when called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ANOMALIES_FILE = "SchemaDiff.pb"  # where ExampleValidator writes each split's anomalies


@dataclass(frozen=True)
class Anomaly:
    split: str
    feature: str
    problem: str

    def __str__(self) -> str:
        return f"[{self.split}] {self.feature}: {self.problem}"


def list_anomalies(uri: str, split_names: list[str]) -> list[Anomaly]:
    """Every anomaly in an ExampleAnomalies artifact, by split and feature."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found = []
    for split in split_names:
        path = os.path.join(uri, f"Split-{split}", ANOMALIES_FILE)
        content = _read_if_there(path)
        if content is None:
            continue
        anomalies = anomalies_pb2.Anomalies.FromString(content)
        for feature, info in sorted(anomalies.anomaly_info.items()):
            problem = info.description or info.short_description
            found.append(Anomaly(split, feature, problem))
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            found.append(Anomaly(split, "(dataset)", info.description or info.short_description))
    return found


def _read_if_there(path: str) -> bytes | None:
    """A file's bytes, or None when it does not exist. A gs:// artifact is read with
    tf.io.gfile (what TFX's fileio uses); a local one with plain Python, so the readers of a
    local store (`tailings runs`, `stats`) do not import TensorFlow for it."""
    if "://" in path:
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path, "rb") as fh:
            return fh.read()
    if not os.path.exists(path):
        return None
    with open(path, "rb") as fh:
        return fh.read()
