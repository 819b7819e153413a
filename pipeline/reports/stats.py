"""Load TFDV statistics, anomalies and rejected pairs from a pipeline run or a TFRecord folder.

Both sources end up as one `DataStats`, so the terminal tables, the HTML page and the drift
comparison do not care whether the data went through a pipeline run or only `tailings convert`.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from components.validation_gate import Anomaly, list_anomalies
from data.errors import TailingsError
from pipeline import metadata, nodes
from pipeline.config import PipelineConfig
from pipeline.reports.config import DEFAULTS, ReportConfig

if TYPE_CHECKING:
    import numpy as np
    from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2

STATS_FILE = "FeatureStats.pb"  # what StatisticsGen writes per split


class ReportError(TailingsError):
    """Bad input for a report (no store, unknown run, empty folder): one line for the user."""


@dataclass(frozen=True)
class Bucket:
    low: float
    high: float
    count: float


@dataclass(frozen=True)
class FeatureRow:
    """One feature of one split, as the tables show it."""

    name: str
    kind: str  # "numeric", "string" or "bytes"
    count: int  # examples with the feature
    missing: int
    values_per_example: float
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    zeros: int | None = None
    histogram: tuple[Bucket, ...] = ()
    note: str = ""  # strings: unique values; bytes: size per value


@dataclass
class DataStats:
    """Statistics of one dataset: the splits of a pipeline run, or one TFRecord folder."""

    source: str  # what the pages call it: "run <id>" or "folder <path>"
    statistics: dict[str, statistics_pb2.DatasetFeatureStatistics]  # by split
    anomalies: list[Anomaly] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    example_files: dict[str, list[str]] = field(default_factory=dict)  # split -> GZIP TFRecords

    def only(self, split: str) -> DataStats:
        """The same data restricted to one split (`--split`)."""
        if split not in self.statistics:
            known = ", ".join(self.statistics)
            raise ReportError(f"{self.source} has no split {split!r} (it has: {known})")
        return DataStats(
            source=self.source,
            statistics={split: self.statistics[split]},
            anomalies=[a for a in self.anomalies if a.split == split],
            rejected=self.rejected,
            example_files={split: self.example_files.get(split, [])},
        )


def open_run(cfg: PipelineConfig, run_id: str | None) -> metadata.RunRecord:
    """A run from the metadata store, or a ReportError naming what is missing."""
    if not cfg.metadata_path.exists():
        raise ReportError(f"no metadata store at {cfg.metadata_path}; run `tailings run` first")
    store = metadata.open_store(str(cfg.metadata_path), verify=True)
    try:
        run = metadata.load_run(store, run_id)
    except KeyError as err:
        raise ReportError(str(err.args[0])) from None
    if run is None:
        raise ReportError(f"no runs recorded in {cfg.metadata_path}")
    return run


def from_run(cfg: PipelineConfig, run_id: str | None = None) -> DataStats:
    """StatisticsGen's splits, the ExampleValidator's anomalies and the rejected pairs of a run."""
    import tensorflow_data_validation as tfdv

    from pipeline.runner import summarize_run

    run = open_run(cfg, run_id)
    artifact = run.artifact(nodes.STATISTICS_GEN, nodes.STATISTICS)
    if artifact is None:
        raise ReportError(f"run {run.run_id} has no StatisticsGen output (it stopped earlier)")
    splits = json.loads(metadata.custom(artifact, "split_names") or "[]")
    statistics = {}
    for split in splits:
        path = os.path.join(artifact.uri, f"Split-{split}", STATS_FILE)
        if os.path.exists(path):
            statistics[split] = tfdv.load_stats_binary(path).datasets[0]
    if not statistics:
        raise ReportError(f"run {run.run_id}: no {STATS_FILE} under {artifact.uri}")
    summary = summarize_run(cfg, 0.0, run.run_id)  # the rejected pairs, as `tailings run` shows
    examples = run.artifact(nodes.EXAMPLE_GEN, nodes.EXAMPLES)
    files = {
        split: sorted(glob.glob(os.path.join(examples.uri, f"Split-{split}", "*")))
        for split in statistics
        if examples is not None
    }
    return DataStats(
        source=f"run {run.run_id}",
        statistics=statistics,
        anomalies=_anomalies_of_run(run),
        rejected=summary.rejected,
        example_files=files,
    )


def _anomalies_of_run(run: metadata.RunRecord) -> list[Anomaly]:
    """The ExampleValidator's anomalies by split and feature (the pages highlight the rows)."""
    artifact = run.artifact(nodes.EXAMPLE_VALIDATOR, nodes.ANOMALIES)
    if artifact is None:
        return []
    return list_anomalies(
        artifact.uri, json.loads(metadata.custom(artifact, "split_names") or "[]")
    )


def from_examples(folder: Path, rc: ReportConfig = DEFAULTS) -> DataStats:
    """TFDV statistics of a folder of converted TFRecords, validated against the curated schema.

    Works before any pipeline run. The statistics are computed with the same schema that
    StatisticsGen gets, so they compare with a run's statistics like for like.
    """
    import tensorflow_data_validation as tfdv

    from data.config import ConversionConfig
    from data.reader import shard_files
    from pipeline.pipeline import SCHEMA_FILE
    from pipeline.schema_draft import statistics_from_examples

    if not folder.is_dir():
        raise ReportError(f"--examples folder does not exist: {folder}")
    schema = tfdv.load_schema_text(SCHEMA_FILE)
    try:
        files = shard_files(folder)
        stats_list = statistics_from_examples(folder, schema)
    except FileNotFoundError as err:
        raise ReportError(str(err)) from None
    anomalies = tfdv.validate_statistics(stats_list, schema)
    rejected_path = folder / ConversionConfig().rejected_file
    rejected = []
    if rejected_path.exists():
        rejected = [json.loads(x) for x in rejected_path.read_text().splitlines() if x.strip()]
    split = rc.folder_split
    return DataStats(
        source=f"folder {folder}",
        statistics={split: stats_list.datasets[0]},
        anomalies=anomalies_of(anomalies, split),
        rejected=rejected,
        example_files={split: files},
    )


def anomalies_of(proto: anomalies_pb2.Anomalies, split: str) -> list[Anomaly]:
    """An Anomalies proto from `tfdv.validate_statistics` as one Anomaly per feature."""
    found = [
        Anomaly(split, feature, info.description or info.short_description)
        for feature, info in sorted(proto.anomaly_info.items())
    ]
    if proto.HasField("dataset_anomaly_info"):
        info = proto.dataset_anomaly_info
        found.append(Anomaly(split, "(dataset)", info.description or info.short_description))
    return found


def feature_rows(dataset: statistics_pb2.DatasetFeatureStatistics) -> list[FeatureRow]:
    """One row per feature of a DatasetFeatureStatistics, sorted by name."""
    rows = [_row(feature) for feature in dataset.features]
    return sorted(rows, key=lambda r: r.name)


def _row(feature: statistics_pb2.FeatureNameStatistics) -> FeatureRow:
    name = ".".join(feature.path.step) or feature.name
    kind = feature.WhichOneof("stats")
    if kind == "num_stats":
        num = feature.num_stats
        common = num.common_stats
        return FeatureRow(
            name=name,
            kind="numeric",
            count=common.num_non_missing,
            missing=common.num_missing,
            values_per_example=common.avg_num_values,
            mean=num.mean,
            std=num.std_dev,
            min=num.min,
            max=num.max,
            zeros=num.num_zeros,
            histogram=standard_histogram(num),
        )
    if kind == "string_stats":
        strings = feature.string_stats
        common = strings.common_stats
        values = [v.value for v in strings.top_values]
        note = f"{strings.unique} unique"
        if 0 < strings.unique <= 5 and all(len(v) <= 16 for v in values):
            note += ": " + ", ".join(sorted(values))
        return FeatureRow(
            name,
            "string",
            common.num_non_missing,
            common.num_missing,
            common.avg_num_values,
            note=note,
        )
    if kind == "bytes_stats":
        raw = feature.bytes_stats
        common = raw.common_stats
        low, high = _size(raw.min_num_bytes), _size(raw.max_num_bytes)
        note = f"{low} each" if low == high else f"{low} to {high} each"
        return FeatureRow(
            name,
            "bytes",
            common.num_non_missing,
            common.num_missing,
            common.avg_num_values,
            note=note,
        )
    return FeatureRow(name, kind or "unknown", 0, 0, 0.0)


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 1e6:.2f} MB" if num_bytes >= 1e6 else f"{num_bytes / 1e3:.1f} kB"


def standard_histogram(num_stats: statistics_pb2.NumericStatistics) -> tuple[Bucket, ...]:
    """The equal-width histogram of a numeric feature (TFDV also keeps a quantiles one)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    for histogram in num_stats.histograms:
        if histogram.type == statistics_pb2.Histogram.STANDARD:
            return tuple(
                Bucket(b.low_value, b.high_value, b.sample_count) for b in histogram.buckets
            )
    return ()


def read_examples(files: list[str], limit: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(pair id, image, mask) of the first `limit` examples of GZIP TFRecord files."""
    import tensorflow as tf

    from data.examples import decode_arrays

    if not files or limit <= 0:
        return []
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(limit)
    return [decode_arrays(record.numpy()) for record in records]
