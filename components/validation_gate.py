"""ExampleValidationGate: stop the pipeline when ExampleValidator found anomalies.

TFX's ExampleValidator records anomalies (and a per-split `blessed` flag) but lets the run go
on; training on data that broke the schema wastes the run and can bless a model trained on
garbage. This component fails on any anomaly, and Transform is made to depend on it, so nothing
downstream runs. Reading the anomalies needs no TFX (`components.anomalies`, which the CLI's
readers use too).
"""

from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

from components.anomalies import Anomaly, list_anomalies


class AnomaliesFound(RuntimeError):
    """The data broke the curated schema; the message lists every anomaly."""

    def __init__(self, anomalies: list[Anomaly]) -> None:
        lines = "\n".join(f"  {a}" for a in anomalies)
        super().__init__(f"{len(anomalies)} data anomalies; the run stops here:\n{lines}")
        self.anomalies = anomalies


@component
def ExampleValidationGate(  # noqa: N802 - TFX names components like classes
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
) -> None:
    """Fail the run when the ExampleValidator's anomalies artifact is not empty."""
    found = list_anomalies(anomalies.uri, artifact_utils.decode_split_names(anomalies.split_names))
    if found:
        raise AnomaliesFound(found)
