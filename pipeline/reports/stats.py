"""Load TFDV statistics, anomalies and rejected pairs from a pipeline run or a TFRecord folder.

Both sources end up as one `DataStats`, so the terminal tables, the HTML page and the drift
comparison do not care whether the data went through a pipeline run or only `tailings convert`.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from components.anomalies import Anomaly, list_anomalies
from data.errors import TailingsError, os_reason
from data.sites import SITES_FILE
from pipeline import metadata, nodes
from pipeline.config import PipelineConfig
from pipeline.reports.config import DEFAULTS, ReportConfig

if TYPE_CHECKING:
    import numpy as np
    from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2

STATS_FILE = "FeatureStats.pb"  # what StatisticsGen writes per split
MAX_RECORD_BYTES = 1 << 31  # a record header claiming more is corrupt (tiles are a few MB)


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
    zeros: int | None = None  # values equal to 0 (of `total_values`)
    histogram: tuple[Bucket, ...] = ()
    note: str = ""  # strings: unique values; bytes: size per value
    median: float | None = None
    quantiles: tuple[float, ...] = ()  # TFDV's quantile boundaries: min, p10, p20, ..., max
    total_values: int = 0  # values over all examples (3 per example for `band_mean`)

    @property
    def missing_percent(self) -> float:
        """Examples without the feature, in percent of all examples."""
        examples = self.count + self.missing
        return 100.0 * self.missing / examples if examples else 0.0

    @property
    def zeros_percent(self) -> float | None:
        """Values equal to zero, in percent of the values (a vector has several per example)."""
        if self.zeros is None:
            return None
        return 100.0 * self.zeros / self.total_values if self.total_values else 0.0

    def quantile(self, q: float) -> float | None:
        """TFDV's q-quantile (0.1, 0.5, 0.9, ...), from its equi-depth histogram's boundaries."""
        if len(self.quantiles) < 2:
            return None
        position = q * (len(self.quantiles) - 1)
        if abs(position - round(position)) > 1e-9:
            return None  # not a boundary TFDV computed
        return self.quantiles[round(position)]


@dataclass
class DataStats:
    """Statistics of one dataset: the splits of a pipeline run, or one TFRecord folder."""

    source: str  # what the pages call it: "run <id>" or "folder <path>"
    statistics: dict[str, statistics_pb2.DatasetFeatureStatistics]  # by split
    anomalies: list[Anomaly] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    example_files: dict[str, list[str]] = field(default_factory=dict)  # split -> GZIP TFRecords
    sites: list[dict] = field(default_factory=list)  # the conversion's sites.jsonl rows

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
            sites=[r for r in self.sites if r.get("split", split) == split],
        )


def open_run(cfg: PipelineConfig, run_id: str | None) -> metadata.RunRecord:
    """A run from the metadata store, or a ReportError naming what is missing
    (`metadata.open_run`'s one line)."""
    try:
        return metadata.open_run(cfg.metadata_path, run_id)
    except metadata.RunNotFound as err:
        raise ReportError(str(err)) from None


def from_run(cfg: PipelineConfig, run_id: str | None = None) -> DataStats:
    """StatisticsGen's splits, the ExampleValidator's anomalies and the rejected pairs of a run."""
    from pipeline.summary import summarize_run

    run = open_run(cfg, run_id)
    artifact = run.artifact(nodes.STATISTICS_GEN, nodes.STATISTICS)
    if artifact is None:
        raise ReportError(f"run {run.run_id} has no StatisticsGen output (it stopped earlier)")
    splits = json.loads(metadata.custom(artifact, "split_names") or "[]")
    statistics = {}
    for split in splits:
        path = os.path.join(artifact.uri, f"Split-{split}", STATS_FILE)
        if os.path.exists(path):
            statistics[split] = read_statistics(Path(path)).datasets[0]
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
        sites=summary.sites,
    )


def _anomalies_of_run(run: metadata.RunRecord) -> list[Anomaly]:
    """The ExampleValidator's anomalies by split and feature (the pages highlight the rows)."""
    artifact = run.artifact(nodes.EXAMPLE_VALIDATOR, nodes.ANOMALIES)
    if artifact is None:
        return []
    return list_anomalies(
        artifact.uri, json.loads(metadata.custom(artifact, "split_names") or "[]")
    )


def from_examples(folder: Path, rc: ReportConfig = DEFAULTS, flag: str = "--examples") -> DataStats:
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
        raise ReportError(f"{flag} folder does not exist: {folder}")
    schema = tfdv.load_schema_text(SCHEMA_FILE)
    try:
        files = shard_files(folder)
    except FileNotFoundError as err:
        raise ReportError(str(err)) from None
    try:
        stats_list = statistics_from_examples(folder, schema)
    except Exception:  # Beam's error names no file ("Not a valid TFRecord"): find the shard
        problem = first_unreadable_shard(files)
        if problem is None:
            raise
        raise problem from None
    anomalies = tfdv.validate_statistics(stats_list, schema)
    rejected_path = folder / ConversionConfig().rejected_file
    rejected = []
    if rejected_path.exists():
        rejected = [json.loads(x) for x in rejected_path.read_text().splitlines() if x.strip()]
    sites_path = folder / SITES_FILE
    sites = []
    if sites_path.exists():
        sites = [json.loads(x) for x in sites_path.read_text().splitlines() if x.strip()]
    split = rc.folder_split
    return DataStats(
        source=f"folder {folder}",
        statistics={split: stats_list.datasets[0]},
        anomalies=anomalies_of(anomalies, split),
        rejected=rejected,
        sites=sites,
        example_files={split: files},
    )


def from_statistics_file(path: Path, rc: ReportConfig = DEFAULTS) -> DataStats:
    """A saved DatasetFeatureStatisticsList (StatisticsGen's binary FeatureStats.pb, TFDV's
    TFRecord or text format), e.g. of the data a model was trained on.

    Each dataset in the file is a split: named by the file's `Split-<name>` folder (where
    StatisticsGen keeps it) when it holds one dataset, else by the dataset's name.
    """
    statistics_list = read_statistics(path)
    datasets = list(statistics_list.datasets)
    folder = path.parent.name
    if len(datasets) == 1 and folder.startswith("Split-"):
        names = [folder[len("Split-") :]]
    else:
        names = [
            d.name or (rc.file_split if len(datasets) == 1 else f"{rc.file_split}{i}")
            for i, d in enumerate(datasets)
        ]
    return DataStats(source=f"file {path}", statistics=dict(zip(names, datasets, strict=True)))


def read_statistics(path: Path) -> statistics_pb2.DatasetFeatureStatisticsList:
    """A statistics file in any of TFDV's formats, or a ReportError naming the file."""
    from google.protobuf import message, text_format
    from tensorflow_metadata.proto.v0 import statistics_pb2

    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ReportError(f"cannot read statistics file {path}: {os_reason(err)}") from None
    proto = statistics_pb2.DatasetFeatureStatisticsList()
    try:  # binary, as StatisticsGen writes FeatureStats.pb; a partial parse is a failure
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            proto.ParseFromString(raw)
        if not caught and _has_features(proto):
            return proto
    except message.DecodeError:
        pass
    records = _tfrecord_payloads(raw)  # TFDV's own writer: one record
    if records:
        try:
            proto = statistics_pb2.DatasetFeatureStatisticsList.FromString(records[0])
            if _has_features(proto):
                return proto
        except message.DecodeError:
            pass
    try:
        proto = text_format.Parse(
            raw.decode("utf-8"), statistics_pb2.DatasetFeatureStatisticsList()
        )
        if _has_features(proto):
            return proto
    except (UnicodeDecodeError, text_format.ParseError):
        pass
    raise ReportError(
        f"{path} is not a TFDV statistics file (a DatasetFeatureStatisticsList, binary as "
        "StatisticsGen's FeatureStats.pb, TFRecord or text)"
    )


def _has_features(proto: statistics_pb2.DatasetFeatureStatisticsList) -> bool:
    return bool(proto.datasets) and all(d.features for d in proto.datasets)


def _tfrecord_payloads(raw: bytes) -> list[bytes]:
    """Records of an uncompressed TFRecord file, framing only (length, CRC, data, CRC)."""
    records, at = [], 0
    while at + 12 <= len(raw):
        (length,) = struct.unpack("<Q", raw[at : at + 8])
        if at + 12 + length + 4 > len(raw):
            return []
        records.append(raw[at + 12 : at + 12 + length])
        at += 12 + length + 4
    return records if at == len(raw) else []


def load_reference(spec: str, cfg: PipelineConfig, rc: ReportConfig = DEFAULTS) -> DataStats:
    """What `--compare` names: a folder of TFRecords, a statistics file, or a run id."""
    path = Path(spec)
    if path.is_dir():
        return from_examples(path, rc, flag="--compare")
    if path.is_file():
        return from_statistics_file(path, rc)
    try:
        return from_run(cfg, spec)
    except ReportError as err:
        raise ReportError(
            f"--compare {spec}: not a folder or statistics file, and as a run id: {err}"
        ) from None


def shard_problem(path: str) -> str | None:
    """Why a GZIP TFRecord shard cannot be read whole (truncated, corrupt), or None.

    Python's gzip checks the stream and its CRC-32; the TFRecord framing (length, data) is
    walked record by record. Record CRCs are left to `tf.data` (see `first_unreadable_shard`).
    """
    records = 0
    try:
        with gzip.open(path, "rb") as stream:
            while header := stream.read(12):
                if len(header) < 12:
                    return f"truncated: record {records + 1} has an incomplete header"
                (length,) = struct.unpack("<Q", header[:8])
                if length > MAX_RECORD_BYTES:
                    return f"corrupt: record {records + 1} claims {length} bytes"
                if len(stream.read(length + 4)) < length + 4:
                    return f"truncated: record {records + 1} is incomplete"
                records += 1
    except EOFError:
        return f"truncated: the gzip stream ends early, after {records} whole records"
    except (gzip.BadGzipFile, zlib.error) as err:
        return f"corrupt gzip data after {records} whole records ({err})"
    except OSError as err:
        return os_reason(err)
    return None


def first_unreadable_shard(files: list[str]) -> ReportError | None:
    """The error for the first shard that cannot be read, or None if every shard reads whole."""
    for path in files:
        problem = shard_problem(path)
        if problem is None:
            problem = _record_problem(path)
        if problem is not None:
            return ReportError(f"cannot read shard {path}: {problem}")
    return None


def _record_problem(path: str) -> str | None:
    """TensorFlow's own reading of a shard (it checks every record's CRC)."""
    import tensorflow as tf

    try:
        for _ in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            pass
    except tf.errors.OpError as err:
        return f"corrupt: {err.message.splitlines()[0]}"
    return None


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
            median=num.median,
            quantiles=quantile_boundaries(num),
            total_values=common.tot_num_values,
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


def quantile_boundaries(num_stats: statistics_pb2.NumericStatistics) -> tuple[float, ...]:
    """TFDV's quantiles (its QUANTILES histogram, equal counts per bucket): min, p10, ..., max."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    for histogram in num_stats.histograms:
        if histogram.type == statistics_pb2.Histogram.QUANTILES and histogram.buckets:
            buckets = histogram.buckets
            return (buckets[0].low_value, *(b.high_value for b in buckets))
    return ()


def shared_histograms(
    histograms: list[tuple[Bucket, ...]], buckets: int
) -> tuple[float, float, list[list[float]]]:
    """TFDV histograms of different ranges re-bucketed onto one range, to compare by eye.

    Returns (low, high, counts per histogram). A bucket's count is spread evenly over its width
    (TFDV's own assumption when it compares histograms for drift); a zero-width bucket (a
    constant) goes whole into the bucket holding its value.
    """
    filled = [h for h in histograms if h]
    if not filled:
        return 0.0, 0.0, [[] for _ in histograms]
    low = min(h[0].low for h in filled)
    high = max(h[-1].high for h in filled)
    if high <= low:
        return low, high, [[sum(b.count for b in h)] if h else [] for h in histograms]
    width = (high - low) / buckets
    out = []
    for histogram in histograms:
        counts = [0.0] * buckets
        for b in histogram:
            if b.high <= b.low:
                counts[min(int((b.low - low) / width), buckets - 1)] += b.count
                continue
            first = min(int((b.low - low) / width), buckets - 1)
            last = min(int((b.high - low) / width), buckets - 1)
            for i in range(first, last + 1):
                left, right = max(b.low, low + i * width), min(b.high, low + (i + 1) * width)
                if right > left:
                    counts[i] += b.count * (right - left) / (b.high - b.low)
        out.append(counts)
    return low, high, out


def read_examples(files: list[str], limit: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(pair id, image, mask) of the first `limit` examples of GZIP TFRecord files."""
    import tensorflow as tf

    from data.examples import decode_arrays

    if not files or limit <= 0:
        return []
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(limit)
    try:
        return [decode_arrays(record.numpy()) for record in records]
    except tf.errors.OpError:
        problem = first_unreadable_shard(files)
        if problem is None:
            raise
        raise problem from None
