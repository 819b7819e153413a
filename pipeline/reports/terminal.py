"""`tailings stats` in the terminal: a table per split, anomalies, rejected pairs, drift."""

from __future__ import annotations

from pipeline.reports.config import DEFAULTS, ReportConfig
from pipeline.reports.drift import Drift
from pipeline.reports.stats import Bucket, DataStats, FeatureRow, feature_rows

COLUMNS = (
    ("feature", 22, "<"),
    ("count", 6, ">"),
    ("missing", 7, ">"),
    ("mean", 10, ">"),
    ("std", 10, ">"),
    ("min", 10, ">"),
    ("max", 10, ">"),
    ("zeros", 6, ">"),
)


def number(value: float | None) -> str:
    """Four significant digits: reflectances, fractions and pixel sizes alike."""
    if value is None:
        return "-"
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3e}"


def display_name(row: FeatureRow) -> str:
    """Multi-valued features get their values per example: TFDV pools them (3 bands -> [3])."""
    per = row.values_per_example
    return f"{row.name}[{per:g}]" if per > 1 else row.name


def sparkline(buckets: tuple[Bucket, ...], rc: ReportConfig = DEFAULTS) -> str:
    """One block character per histogram bucket; empty buckets are the lowest block."""
    if not buckets:
        return ""
    if all(b.low == b.high for b in buckets):
        return f"all {number(buckets[0].low)}"
    top = max(b.count for b in buckets) or 1.0
    levels = len(rc.sparkline) - 1
    chars = [
        rc.sparkline[0] if b.count <= 0 else rc.sparkline[max(1, round(b.count / top * levels))]
        for b in buckets
    ]
    return "".join(chars)


def row_line(row: FeatureRow, rc: ReportConfig = DEFAULTS) -> str:
    cells = [display_name(row), str(row.count), str(row.missing)]
    if row.kind == "numeric":
        cells += [number(v) for v in (row.mean, row.std, row.min, row.max)] + [str(row.zeros)]
        tail = sparkline(row.histogram, rc)
    else:
        cells += ["-"] * 5
        tail = row.note
    text = " ".join(
        f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, COLUMNS, strict=True)
    )
    return f"{text}  {tail}"


def header() -> str:
    text = " ".join(f"{name:{align}{width}}" for name, width, align in COLUMNS)
    return f"{text}  histogram"


def stats_lines(
    data: DataStats,
    drift: list[Drift] | None = None,
    reference: DataStats | None = None,
    rc: ReportConfig = DEFAULTS,
) -> list[str]:
    """Everything `tailings stats` prints, as lines."""
    out = [f"statistics of {data.source}"]
    anomalous = {(a.split, a.feature) for a in data.anomalies}
    for split, dataset in data.statistics.items():
        out += ["", f"split {split}: {dataset.num_examples} examples", header()]
        for row in feature_rows(dataset):
            mark = "  <- anomaly" if (split, row.name) in anomalous else ""
            out.append(row_line(row, rc) + mark)
    out.append("")
    if data.anomalies:
        out.append(f"anomalies: {len(data.anomalies)}")
        out += [f"  {a}" for a in data.anomalies]
    else:
        out.append("anomalies: none")
    out.append(f"rejected pairs: {len(data.rejected)}")
    out += [f"  {r['id']}: {r['reason']} ({r.get('detail', '')})" for r in data.rejected]
    if drift is not None and reference is not None:
        out += ["", *drift_lines(drift, reference)]
    return out


def drift_lines(drift: list[Drift], reference: DataStats) -> list[str]:
    drifted = [d for d in drift if d.drifted]
    out = [
        f"drift against {reference.source} (TFDV comparators, thresholds from the schema): "
        f"{len(drifted)} of {len(drift)} measurements above threshold",
        f"{'split':<9} {'reference':<9} {'feature':<20} {'measure':<26} {'value':>8} "
        f"{'threshold':>9}  verdict",
    ]
    for d in drift:
        out.append(
            f"{d.split:<9} {d.reference_split:<9} {d.feature:<20} {d.measure:<26} "
            f"{d.value:>8.4f} {d.threshold:>9.4f}  {'DRIFT' if d.drifted else 'ok'}"
        )
    return out
