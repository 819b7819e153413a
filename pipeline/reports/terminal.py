"""`tailings stats` in the terminal: every feature with its splits side by side, anomalies,
rejected pairs, skew between the splits and drift against a reference."""

from __future__ import annotations

import math

from data.sites import site_cells, worst_first
from pipeline.reports.config import DEFAULTS, ReportConfig
from pipeline.reports.drift import Drift, split_pairs
from pipeline.reports.stats import DataStats, FeatureRow, feature_rows, shared_histograms

COLUMNS = (
    ("feature", 18, "<"),
    ("split", 10, "<"),
    ("count", 6, ">"),
    ("missing", 7, ">"),
    ("zeros", 6, ">"),
    ("mean", 9, ">"),
    ("std", 9, ">"),
    ("min", 9, ">"),
    ("median", 9, ">"),
    ("max", 9, ">"),
)
REFERENCE_PREFIX = "ref "  # the reference's rows under --compare: "ref train"


def number(value: float | None) -> str:
    """Four significant digits: reflectances, fractions and pixel sizes alike."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3e}"


def percent(value: float | None) -> str:
    """0 %, 0.4 %, 33 %: small shares keep a decimal so they do not read as none."""
    if value is None:
        return "-"
    if value == 0 or value >= 1:
        return f"{value:.0f}%"
    return f"{value:.1f}%"


def display_name(row: FeatureRow) -> str:
    """Multi-valued features get their values per example: TFDV pools them (3 bands -> [3])."""
    per = row.values_per_example
    return f"{row.name}[{per:g}]" if per > 1 else row.name


def sparkline(counts: list[float], rc: ReportConfig = DEFAULTS) -> str:
    """One block character per bucket; empty buckets are the lowest block."""
    if not counts:
        return ""
    top = max(counts) or 1.0
    levels = len(rc.sparkline) - 1
    return "".join(
        rc.sparkline[0] if c <= 0 else rc.sparkline[max(1, round(c / top * levels))] for c in counts
    )


def row_cells(row: FeatureRow, name: str, split: str) -> list[str]:
    cells = [name, split, str(row.count), percent(row.missing_percent)]
    if row.kind == "numeric":
        cells.append(percent(row.zeros_percent))
        cells += [number(v) for v in (row.mean, row.std, row.min, row.median, row.max)]
    else:
        cells += ["-"] * 6
    return cells


def format_cells(cells: list[str]) -> str:
    return " ".join(
        f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, COLUMNS, strict=True)
    )


def header(compared: bool) -> str:
    text = format_cells([name for name, _, _ in COLUMNS])
    return f"{text}  {'histogram (shared range)':<24}" + ("  compared" if compared else "")


def comparison_text(d: Drift) -> str:
    """`skew 0.123 ok`, `drift 0.456 > 0.3 DRIFT`, `drift not measured: ...`."""
    if d.problem:
        return f"{d.kind} {d.verdict}"
    sign = ">" if d.drifted else "<="
    return f"{d.kind} {d.value:.3f} {sign} {d.threshold:g}" + (
        f" {d.kind.upper()}" if d.drifted else ""
    )


def feature_table(
    data: DataStats,
    drift: list[Drift] | None = None,
    reference: DataStats | None = None,
    rc: ReportConfig = DEFAULTS,
) -> list[tuple[str, list[tuple[str, FeatureRow, bool]]]]:
    """(feature, [(split label, row, is reference)]): every split of a feature together, then
    the reference splits it is compared with."""
    rows: dict[str, list[tuple[str, FeatureRow, bool]]] = {}
    for split, dataset in data.statistics.items():
        for row in feature_rows(dataset):
            rows.setdefault(row.name, []).append((split, row, False))
    if reference is not None and drift is not None:
        used = sorted({ref for _, ref in split_pairs(data, reference, rc)})
        for split in used:
            for row in feature_rows(reference.statistics[split]):
                if row.name in rows:
                    rows[row.name].append((REFERENCE_PREFIX + split, row, True))
    return sorted(rows.items())


def stats_lines(
    data: DataStats,
    drift: list[Drift] | None = None,
    reference: DataStats | None = None,
    skew: list[Drift] | None = None,
    rc: ReportConfig = DEFAULTS,
) -> list[str]:
    """Everything `tailings stats` prints, as lines."""
    examples = ", ".join(f"{s} {d.num_examples}" for s, d in data.statistics.items())
    out = [f"statistics of {data.source}: examples {examples}"]
    if reference is not None:
        out.append(f"compared with {reference.source} (rows '{REFERENCE_PREFIX}<split>')")
    out.append(
        "missing: % of examples; zeros: % of values; name[3]: one value per band (B2, B3, B4) "
        "pooled by TFDV, name_b2/_b3/_b4: one band each"
    )
    compared = bool(drift or skew)
    by_key = {(d.split, d.feature): [] for d in (drift or []) + (skew or [])}
    for d in (skew or []) + (drift or []):
        by_key[(d.split, d.feature)].append(d)
    anomalous = {(a.split, a.feature) for a in data.anomalies}
    out += ["", header(compared)]
    for _, group in feature_table(data, drift, reference, rc):
        numeric = [r for _, r, _ in group if r.kind == "numeric"]
        low, high, counts = shared_histograms([r.histogram for r in numeric], rc.shared_buckets)
        spark = iter(counts)
        for index, (split, row, _is_ref) in enumerate(group):
            label = display_name(row) if index == 0 else ""
            line = format_cells(row_cells(row, label, split))
            if row.kind == "numeric":
                tail = _histogram_text(next(spark), low, high, row, rc)
            else:
                tail = row.note
            notes = [comparison_text(d) for d in by_key.get((split, row.name), [])]
            if (split, row.name) in anomalous:
                notes.append("<- anomaly")
            line = f"{line}  {tail:<24}" + (f"  {'; '.join(notes)}" if notes else "")
            out.append(line.rstrip())
    out.append("")
    if data.anomalies:
        out.append(f"anomalies: {len(data.anomalies)}")
        out += [f"  {a}" for a in data.anomalies]
    else:
        out.append("anomalies: none")
    out.append(f"rejected pairs: {len(data.rejected)}")
    out += [f"  {r['id']}: {r['reason']} ({r.get('detail', '')})" for r in data.rejected]
    out += site_lines(data.sites)
    if skew:
        out += [
            "",
            *comparison_lines(
                skew,
                f"skew between {rc.skew_reference_split} and the "
                "other splits (TFDV skew comparators)",
            ),
        ]
    if drift is not None and reference is not None:
        out += ["", *drift_lines(drift, reference)]
    return out


def site_lines(rows: list[dict], shown: int = 10) -> list[str]:
    """The sites, least label agreement first: the `shown` worst, and how many more."""
    ordered = worst_first(rows)
    if not ordered:
        return []
    out = [f"sites: {len(ordered)} (least label agreement first)"]
    for row in ordered[:shown]:
        site, split, tiles, agreement, disputed = site_cells(row)
        out.append(
            f"  {site:<12} {split:<6} tiles {tiles:<7} agreement {agreement}  "
            f"disputed {disputed} px"
        )
    if len(ordered) > shown:
        out.append(f"  ... {len(ordered) - shown} more (all of them in the HTML page)")
    return out


def _histogram_text(
    counts: list[float], low: float, high: float, row: FeatureRow, rc: ReportConfig
) -> str:
    if high <= low:
        return f"all {number(low)}"
    return f"{sparkline(counts, rc)} {number(low)}..{number(high)}"


def drift_lines(drift: list[Drift], reference: DataStats) -> list[str]:
    title = f"drift against {reference.source} (TFDV comparators, thresholds from the schema)"
    return comparison_lines(drift, title)


def comparison_lines(measurements: list[Drift], title: str) -> list[str]:
    above = [d for d in measurements if d.drifted]
    unmeasured = [d for d in measurements if d.problem]
    summary = f"{len(above)} of {len(measurements)} measurements above threshold"
    if unmeasured:
        summary += f", {len(unmeasured)} not measured"
    out = [
        f"{title}: {summary}",
        f"{'split':<9} {'against':<9} {'feature':<20} {'measure':<26} {'value':>8} "
        f"{'threshold':>9}  verdict",
    ]
    for d in measurements:
        out.append(
            f"{d.split:<9} {d.reference_split:<9} {d.feature:<20} {d.measure:<26} "
            f"{number(d.value):>8} {d.threshold:>9.4g}  {d.verdict}"
        )
    return out
