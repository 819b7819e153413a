"""Drift and skew between statistics with TFDV's comparators, thresholds from the schema.

The curated schema sets a `drift_comparator` and a `skew_comparator` (Jensen-Shannon
divergence) on the per-band features and `tailings_fraction`.
`tfdv.validate_statistics(..., previous_statistics=...)` measures drift between two datasets
and `tfdv.validate_statistics(..., serving_statistics=...)` skew between two splits; TFDV
raises an anomaly where a divergence is above its threshold. Nothing here re-implements the
measure: TFDV's numbers and verdicts are shown as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.reports.config import DEFAULTS, ReportConfig
from pipeline.reports.stats import DataStats, ReportError

if TYPE_CHECKING:
    from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

# Anomaly reasons a comparator raises (e.g. COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH).
COMPARATOR_PREFIX, HIGH_SUFFIX = "COMPARATOR_", "_HIGH"
DRIFT, SKEW = "drift", "skew"


@dataclass(frozen=True)
class Drift:
    """One feature's divergence between a split and the split it is compared with.

    `kind` is DRIFT (against another dataset, `--compare`) or SKEW (against the same dataset's
    train split). `problem` is set when TFDV could not measure (e.g. the feature is missing in
    the reference statistics); `value` is then NaN.
    """

    split: str
    reference_split: str
    feature: str
    measure: str  # TFDV's name of the comparator, e.g. JENSEN_SHANNON_DIVERGENCE
    value: float
    threshold: float
    drifted: bool  # TFDV's verdict: it raised a drift (skew) anomaly for this feature
    kind: str = DRIFT
    problem: str = ""

    @property
    def verdict(self) -> str:
        if self.problem:
            return f"not measured: {self.problem}"
        return self.kind.upper() if self.drifted else "ok"


def found(measurements: list[Drift]) -> bool:
    """Whether a comparison failed: a feature above its threshold, or one TFDV could not
    measure (the check did not happen, so it did not pass)."""
    return any(d.drifted or d.problem for d in measurements)


def load_schema(path: str | None = None) -> schema_pb2.Schema:
    """The curated schema, which holds the drift and skew thresholds."""
    import tensorflow_data_validation as tfdv

    from pipeline.pipeline import SCHEMA_FILE

    schema = tfdv.load_schema_text(path or SCHEMA_FILE)
    if not any(f.HasField("drift_comparator") for f in schema.feature):
        raise ReportError(f"{path or SCHEMA_FILE} sets no drift_comparator on any feature")
    return schema


def split_pairs(
    current: DataStats, reference: DataStats, rc: ReportConfig = DEFAULTS
) -> list[tuple[str, str]]:
    """(split, reference split): like with like; else the reference's only split; else its
    train split (what a model learned from)."""
    pairs = []
    only = next(iter(reference.statistics)) if len(reference.statistics) == 1 else None
    for split in current.statistics:
        if split in reference.statistics:
            pairs.append((split, split))
        elif only is not None:
            pairs.append((split, only))
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
    out = []
    for split, ref_split in split_pairs(current, reference, rc):
        out += _measure(
            current.statistics[split], reference.statistics[ref_split], schema, split, ref_split
        )
    return sorted(out, key=lambda d: (d.split, d.feature))


def skew(data: DataStats, schema: schema_pb2.Schema, rc: ReportConfig = DEFAULTS) -> list[Drift]:
    """TFDV's skew measurements between the train split and every other split of `data`
    (none for a folder or a single split)."""
    base = rc.skew_reference_split
    if base not in data.statistics:
        return []
    out = []
    for split, dataset in data.statistics.items():
        if split != base:
            out += _measure(dataset, data.statistics[base], schema, split, base, kind=SKEW)
    return sorted(out, key=lambda d: (d.split, d.feature))


def _measure(
    current: statistics_pb2.DatasetFeatureStatistics,
    other: statistics_pb2.DatasetFeatureStatistics,
    schema: schema_pb2.Schema,
    split: str,
    other_split: str,
    kind: str = DRIFT,
) -> list[Drift]:
    """One `tfdv.validate_statistics` call on the split `current` against `other`: drift
    (`other` as the previous statistics) or skew (`other` as training, `current` as serving)."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2

    def as_list(dataset):
        return statistics_pb2.DatasetFeatureStatisticsList(datasets=[dataset])

    if kind == SKEW:
        result = tfdv.validate_statistics(
            as_list(other), schema, serving_statistics=as_list(current)
        )
    else:
        result = tfdv.validate_statistics(
            as_list(current), schema, previous_statistics=as_list(other)
        )
    reason_name = anomalies_pb2.AnomalyInfo.Type.Name
    measure_name = anomalies_pb2.DriftSkewInfo.Measurement.Type.Name
    compared = {
        f.name: f.skew_comparator if kind == SKEW else f.drift_comparator
        for f in schema.feature
        if f.HasField("skew_comparator" if kind == SKEW else "drift_comparator")
    }
    high = {
        name
        for name, info in result.anomaly_info.items()
        if any(_is_high(reason_name(reason.type)) for reason in info.reason)
    }
    out, measured = [], set()
    for info in result.drift_skew_info:
        feature = ".".join(info.path.step)
        for m in info.skew_measurements if kind == SKEW else info.drift_measurements:
            measured.add(feature)
            out.append(
                Drift(
                    split,
                    other_split,
                    feature,
                    measure_name(m.type),
                    m.value,
                    m.threshold,
                    feature in high,
                    kind,
                )
            )
    # A compared feature TFDV did not measure: the check did not happen, say why.
    present = {
        side: {".".join(f.path.step) or f.name for f in dataset.features}
        for side, dataset in ((split, current), (other_split, other))
    }
    for feature, comparator in sorted(compared.items()):
        if feature in measured:
            continue
        absent = [side for side in present if feature not in present[side]]
        where = f"no statistics in {' and '.join(absent)}" if absent else "TFDV did not measure it"
        out.append(
            Drift(
                split,
                other_split,
                feature,
                "JENSEN_SHANNON_DIVERGENCE",
                math.nan,
                comparator.jensen_shannon_divergence.threshold,
                False,
                kind,
                where,
            )
        )
    return out


def _is_high(reason: str) -> bool:
    return reason.startswith(COMPARATOR_PREFIX) and reason.endswith(HIGH_SUFFIX)
