"""Drift between two datasets' statistics with TFDV's comparators, thresholds from the schema.

The curated schema sets a `drift_comparator` (Jensen-Shannon divergence) on the numeric summary
features; `tfdv.validate_statistics(..., previous_statistics=...)` measures every one of them
and raises an anomaly where a divergence is above its threshold. Nothing here re-implements
the measure: TFDV's numbers and verdicts are shown as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.reports.config import DEFAULTS, ReportConfig
from pipeline.reports.stats import DataStats, ReportError

if TYPE_CHECKING:
    from tensorflow_metadata.proto.v0 import schema_pb2

# Anomaly reasons a drift comparator raises (e.g. COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH).
COMPARATOR_PREFIX, HIGH_SUFFIX = "COMPARATOR_", "_HIGH"


@dataclass(frozen=True)
class Drift:
    """One feature's divergence between a split and the reference split it is compared with."""

    split: str
    reference_split: str
    feature: str
    measure: str  # TFDV's name of the comparator, e.g. JENSEN_SHANNON_DIVERGENCE
    value: float
    threshold: float
    drifted: bool  # TFDV's verdict: it raised a drift anomaly for this feature


def load_schema(path: str | None = None) -> schema_pb2.Schema:
    """The curated schema, which holds the drift thresholds."""
    import tensorflow_data_validation as tfdv

    from pipeline.pipeline import SCHEMA_FILE

    schema = tfdv.load_schema_text(path or SCHEMA_FILE)
    if not any(f.HasField("drift_comparator") for f in schema.feature):
        raise ReportError(f"{path or SCHEMA_FILE} sets no drift_comparator on any feature")
    return schema


def split_pairs(
    current: DataStats, reference: DataStats, rc: ReportConfig = DEFAULTS
) -> list[tuple[str, str]]:
    """(split, reference split): like with like; a folder against the reference's train split."""
    pairs = []
    for split in current.statistics:
        if split in reference.statistics:
            pairs.append((split, split))
        elif rc.drift_reference_split in reference.statistics:
            pairs.append((split, rc.drift_reference_split))
    if not pairs:
        raise ReportError(
            f"nothing to compare: {current.source} has splits {', '.join(current.statistics)}, "
            f"{reference.source} has {', '.join(reference.statistics)}"
        )
    return pairs


def compare(
    current: DataStats,
    reference: DataStats,
    schema: schema_pb2.Schema,
    rc: ReportConfig = DEFAULTS,
) -> list[Drift]:
    """Every drift measurement TFDV makes between `current` and `reference`, split by split."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2

    reason_name = anomalies_pb2.AnomalyInfo.Type.Name
    measure_name = anomalies_pb2.DriftSkewInfo.Measurement.Type.Name
    found = []
    for split, ref_split in split_pairs(current, reference, rc):
        result = tfdv.validate_statistics(
            statistics_pb2.DatasetFeatureStatisticsList(datasets=[current.statistics[split]]),
            schema,
            previous_statistics=statistics_pb2.DatasetFeatureStatisticsList(
                datasets=[reference.statistics[ref_split]]
            ),
        )
        drifted = {
            name
            for name, info in result.anomaly_info.items()
            if any(_is_drift(reason_name(reason.type)) for reason in info.reason)
        }
        for info in result.drift_skew_info:
            feature = ".".join(info.path.step)
            for measurement in info.drift_measurements:
                found.append(
                    Drift(
                        split=split,
                        reference_split=ref_split,
                        feature=feature,
                        measure=measure_name(measurement.type),
                        value=measurement.value,
                        threshold=measurement.threshold,
                        drifted=feature in drifted,
                    )
                )
    return sorted(found, key=lambda d: (d.split, d.feature))


def _is_drift(reason: str) -> bool:
    return reason.startswith(COMPARATOR_PREFIX) and reason.endswith(HIGH_SUFFIX)
