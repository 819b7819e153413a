"""`tailings stats --html`: the statistics of a run or a TFRecord folder as one offline page."""

from __future__ import annotations

from pipeline.reports import html as h
from pipeline.reports import plots
from pipeline.reports.config import DEFAULTS, ReportConfig
from pipeline.reports.drift import Drift, split_pairs
from pipeline.reports.stats import DataStats, FeatureRow, feature_rows, read_examples
from pipeline.reports.terminal import display_name, number

FEATURE_HEADERS = ("feature", "count", "missing", "mean", "std", "min", "max", "zeros", "notes")


def stats_html(
    data: DataStats,
    drift: list[Drift] | None = None,
    reference: DataStats | None = None,
    rc: ReportConfig = DEFAULTS,
) -> str:
    """The whole page: summary cards, anomalies, drift, tables, histograms, rejects, thumbnails."""
    body = [_cards(data, drift)]
    body.append(_anomalies(data))
    if drift is not None and reference is not None:
        body.append(_drift(drift, reference))
    body.append(_tables(data))
    body.append(_histograms(data, reference, rc))
    body.append(_rejected(data))
    body.append(_thumbnails(data, rc))
    subtitle = "TFDV statistics" + (f", compared with {reference.source}" if reference else "")
    return h.page(f"Data statistics: {data.source}", subtitle, body)


def _cards(data: DataStats, drift: list[Drift] | None) -> str:
    cards = [
        h.card("examples" if split == "examples" else f"{split} examples", d.num_examples)
        for split, d in data.statistics.items()
    ]
    cards.append(h.card("anomalies", len(data.anomalies), "bad" if data.anomalies else "good"))
    cards.append(h.card("rejected pairs", len(data.rejected), "bad" if data.rejected else ""))
    if drift is not None:
        drifted = len({d.feature for d in drift if d.drifted})
        cards.append(h.card("drifted features", drifted, "bad" if drifted else "good"))
    return "<div class='cards'>" + "".join(cards) + "</div>"


def _anomalies(data: DataStats) -> str:
    if not data.anomalies:
        return h.section("Anomalies", h.note("No anomalies: every split matches the schema."))
    items = "".join(
        f"<li><b>[{h.esc(a.split)}] {h.esc(a.feature)}</b>: {h.esc(a.problem)}</li>"
        for a in data.anomalies
    )
    return h.section(
        "Anomalies",
        f"<div class='alert'>{len(data.anomalies)} anomalies against the schema<ul>{items}</ul>"
        "</div>",
    )


def _drift(drift: list[Drift], reference: DataStats) -> str:
    drifted = sum(d.drifted for d in drift)
    summary = (
        h.note(f"{drifted} of {len(drift)} measurements above their threshold.", "alert")
        if drifted
        else h.note(f"No drift: all {len(drift)} measurements within their thresholds.")
    )
    rows = [
        (
            d.split,
            d.reference_split,
            d.feature,
            d.measure,
            f"{d.value:.4f}",
            f"{d.threshold:.4f}",
            "DRIFT" if d.drifted else "ok",
        )
        for d in drift
    ]
    return h.section(
        f"Drift against {reference.source}",
        "<p>TFDV's comparators between each split and the reference split; thresholds are the "
        "<code>drift_comparator</code> settings in <code>schemas/schema.pbtxt</code>.</p>",
        summary,
        h.table(
            ("split", "reference split", "feature", "measure", "value", "threshold", "verdict"),
            rows,
            ["bad" if d.drifted else "" for d in drift],
            text_columns=(0, 1, 2, 3, 6),
        ),
    )


def _row_cells(row: FeatureRow) -> tuple:
    if row.kind == "numeric":
        values = [number(v) for v in (row.mean, row.std, row.min, row.max)]
        return (display_name(row), row.count, row.missing, *values, row.zeros, "")
    return (display_name(row), row.count, row.missing, "-", "-", "-", "-", "-", row.note)


def _tables(data: DataStats) -> str:
    anomalous = {(a.split, a.feature) for a in data.anomalies}
    parts = [
        "<p>Per feature; <code>name[3]</code> marks a feature with three values per example "
        "(one per band B2, B3, B4), which TFDV summarises together.</p>"
    ]
    for split, dataset in data.statistics.items():
        rows = feature_rows(dataset)
        parts.append(f"<h3>{h.esc(split)}: {dataset.num_examples} examples</h3>")
        parts.append(
            h.table(
                FEATURE_HEADERS,
                [_row_cells(r) for r in rows],
                ["bad" if (split, r.name) in anomalous else "" for r in rows],
                text_columns=(0, 8),
            )
        )
    return h.section("Features", *parts)


def _histograms(data: DataStats, reference: DataStats | None, rc: ReportConfig) -> str:
    by_feature: dict[str, list[plots.Series]] = {}
    for split, dataset in data.statistics.items():
        for row in feature_rows(dataset):
            if row.kind == "numeric" and row.histogram:
                by_feature.setdefault(row.name, []).append(plots.Series(split, row.histogram))
    if reference is not None:
        used = sorted({ref for _, ref in split_pairs(data, reference, rc)})
        for split in used:
            for row in feature_rows(reference.statistics[split]):
                if row.name in by_feature and row.histogram:
                    label = f"{reference.source}: {split}"
                    by_feature[row.name].append(plots.Series(label, row.histogram, dashed=True))
    constant = sorted(n for n, series in by_feature.items() if all(_constant(s) for s in series))
    figures = [
        h.figure(plots.data_uri(plots.histogram_png(name, series, rc)), alt=f"{name} histogram")
        for name, series in sorted(by_feature.items())
        if name not in constant
    ]
    return h.section(
        "Histograms",
        "<p>TFDV's equal-width histograms as densities, splits overlaid"
        + ("; the reference run dashed" if reference is not None else "")
        + (f". Constant, so not drawn: {h.esc(', '.join(constant))}" if constant else "")
        + ".</p>",
        "<div class='grid'>" + "".join(figures) + "</div>",
    )


def _constant(series: plots.Series) -> bool:
    return all(b.low == b.high for b in series.buckets)


def _rejected(data: DataStats) -> str:
    if not data.rejected:
        return h.section("Rejected pairs", h.note("No pair was rejected by the conversion."))
    rows = [(r["id"], r["reason"], r.get("detail", "")) for r in data.rejected]
    return h.section(
        "Rejected pairs",
        h.table(("pair", "reason", "detail"), rows, ["bad"] * len(rows), text_columns=(0, 1, 2)),
    )


def _thumbnails(data: DataStats, rc: ReportConfig) -> str:
    parts = ["<p>RGB from bands B4, B3, B2 (2-98 % stretch), tailings mask outlined in yellow.</p>"]
    for split, files in data.example_files.items():
        examples = read_examples(files, rc.thumbnails_per_split)
        if not examples:
            continue
        figures = [
            h.figure(plots.data_uri(plots.thumbnail_png(pair_id, image, mask, rc)), alt=pair_id)
            for pair_id, image, mask in examples
        ]
        parts.append(f"<h3>{h.esc(split)}</h3><div class='grid'>{''.join(figures)}</div>")
    return h.section("Examples", *parts)
