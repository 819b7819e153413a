"""ExampleValidationGate: stop the pipeline when ExampleValidator found anomalies.

TFX's ExampleValidator records anomalies (and a per-split `blessed` flag) but lets the run go
on; training on data that broke the schema wastes the run and can bless a model trained on
garbage. This component fails on any anomaly, and Transform is made to depend on it, so nothing
downstream runs. `list_anomalies` is shared with the CLI, which prints each anomaly.
"""

import os
from dataclasses import dataclass

from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

ANOMALIES_FILE = "SchemaDiff.pb"  # where ExampleValidator writes each split's anomalies


@dataclass(frozen=True)
class Anomaly:
    split: str
    feature: str
    problem: str

    def __str__(self) -> str:
        return f"[{self.split}] {self.feature}: {self.problem}"


class AnomaliesFound(RuntimeError):
    """The data broke the curated schema; the message lists every anomaly."""

    def __init__(self, anomalies: list[Anomaly]) -> None:
        lines = "\n".join(f"  {a}" for a in anomalies)
        super().__init__(f"{len(anomalies)} data anomalies; the run stops here:\n{lines}")
        self.anomalies = anomalies


def list_anomalies(uri: str, split_names: "list[str]") -> "list[Anomaly]":
    """Every anomaly in an ExampleAnomalies artifact, by split and feature."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found = []
    for split in split_names:
        path = os.path.join(uri, f"Split-{split}", ANOMALIES_FILE)
        if not os.path.exists(path):
            continue
        with open(path, "rb") as fh:
            anomalies = anomalies_pb2.Anomalies.FromString(fh.read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            problem = info.description or info.short_description
            found.append(Anomaly(split, feature, problem))
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            found.append(Anomaly(split, "(dataset)", info.description or info.short_description))
    return found


@component
def ExampleValidationGate(  # noqa: N802 - TFX names components like classes
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
) -> None:
    """Fail the run when the ExampleValidator's anomalies artifact is not empty."""
    found = list_anomalies(anomalies.uri, artifact_utils.decode_split_names(anomalies.split_names))
    if found:
        raise AnomaliesFound(found)
