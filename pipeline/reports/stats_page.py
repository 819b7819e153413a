"""`tailings stats --html`: the statistics of a run or a TFRecord folder as one offline page."""

from __future__ import annotations

from data.sites import SITE_COLUMNS, site_cells, worst_first
from pipeline.reports import html as h
from pipeline.reports import plots
from pipeline.reports.config import DEFAULTS, ReportConfig
from pipeline.reports.drift import Drift, split_pairs
from pipeline.reports.stats import DataStats, FeatureRow, feature_rows, read_examples
from pipeline.reports.terminal import (
    REFERENCE_PREFIX,
    comparison_text,
    display_name,
    feature_table,
    number,
    percent,
)
from schemas import features as F

FEATURE_HEADERS = (
    "feature",
    "split",
    "count",
    "missing",
    "zeros",
    "mean",
    "std",
    "min",
    "p10",
    "median",
    "p90",
    "max",
    "notes",
)


def stats_html(
    data: DataStats,
    drift: list[Drift] | None = None,
    reference: DataStats | None = None,
    skew: list[Drift] | None = None,
    rc: ReportConfig = DEFAULTS,
) -> str:
    """The whole page: summary cards, anomalies, skew, drift, tables, histograms, rejects,
    thumbnails."""
    body = [_cards(data, drift, skew)]
    body.append(_anomalies(data))
    if skew:
        body.append(
            _comparisons(
                f"Skew between {rc.skew_reference_split} and the other splits",
                "TFDV's <code>skew_comparator</code> between the train split and each other split",
                skew,
            )
        )
    if drift is not None and reference is not None:
        body.append(
            _comparisons(
                f"Drift against {reference.source}",
                "TFDV's <code>drift_comparator</code> between each split and the reference split",
                drift,
            )
        )
    body.append(_tables(data, drift, reference, skew, rc))
    body.append(_histograms(data, reference, rc))
    body.append(_rejected(data))
    body.append(_sites(data))
    body.append(_thumbnails(data, rc))
    subtitle = "TFDV statistics" + (f", compared with {reference.source}" if reference else "")
    return h.page(f"Data statistics: {data.source}", subtitle, body)


def _cards(data: DataStats, drift: list[Drift] | None, skew: list[Drift] | None) -> str:
    cards = [
        h.card("examples" if split == "examples" else f"{split} examples", d.num_examples)
        for split, d in data.statistics.items()
    ]
    cards.append(h.card("anomalies", len(data.anomalies), "bad" if data.anomalies else "good"))
    cards.append(h.card("rejected pairs", len(data.rejected), "bad" if data.rejected else ""))
    if skew:
        skewed = len({d.feature for d in skew if d.drifted})
        cards.append(h.card("skewed features", skewed, "bad" if skewed else "good"))
    if drift is not None:
        drifted = len({d.feature for d in drift if d.drifted or d.problem})
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


def _comparisons(title: str, intro: str, found: list[Drift]) -> str:
    above = sum(d.drifted for d in found)
    unmeasured = sum(bool(d.problem) for d in found)
    if above or unmeasured:
        text = f"{above} of {len(found)} measurements above their threshold"
        text += f", {unmeasured} not measured." if unmeasured else "."
        summary = h.note(text, "alert")
    else:
        summary = h.note(f"None: all {len(found)} measurements within their thresholds.")
    rows = [
        (
            d.split,
            d.reference_split,
            d.feature,
            d.measure,
            number(d.value),
            f"{d.threshold:g}",
            d.verdict,
        )
        for d in found
    ]
    return h.section(
        title,
        f"<p>{intro}; thresholds are the settings in <code>schemas/schema.pbtxt</code>.</p>",
        summary,
        h.table(
            ("split", "against", "feature", "measure", "value", "threshold", "verdict"),
            rows,
            ["bad" if d.drifted or d.problem else "" for d in found],
            text_columns=(0, 1, 2, 3, 6),
        ),
    )


def _row_cells(row: FeatureRow, name: str, split: str, compared: str, rc: ReportConfig) -> tuple:
    if row.kind == "numeric":
        p10, median, p90 = (row.quantile(q) for q in rc.quantiles)
        values = [number(v) for v in (row.mean, row.std, row.min, p10, row.median, p90, row.max)]
        zeros = percent(row.zeros_percent)
        return (name, split, row.count, percent(row.missing_percent), zeros, *values, compared)
    cells = (name, split, row.count, percent(row.missing_percent))
    return (*cells, *["-"] * 8, "; ".join(x for x in (row.note, compared) if x))


def _tables(
    data: DataStats,
    drift: list[Drift] | None,
    reference: DataStats | None,
    skew: list[Drift] | None,
    rc: ReportConfig,
) -> str:
    anomalous = {(a.split, a.feature) for a in data.anomalies}
    compared: dict[tuple[str, str], list[Drift]] = {}
    for d in (skew or []) + (drift or []):
        compared.setdefault((d.split, d.feature), []).append(d)
    rows, classes = [], []
    for _, group in feature_table(data, drift, reference, rc):
        for index, (split, row, is_ref) in enumerate(group):
            found = compared.get((split, row.name), [])
            text = "; ".join(comparison_text(d) for d in found)
            rows.append(_row_cells(row, display_name(row) if index == 0 else "", split, text, rc))
            bad = (split, row.name) in anomalous or any(d.drifted or d.problem for d in found)
            css = "bad" if bad else ("ref" if is_ref else "")
            classes.append(f"{css} group".strip() if index == 0 else css)
    intro = (
        "<p>Every feature with its splits side by side"
        + (
            f"; rows <i>{REFERENCE_PREFIX}split</i> are {h.esc(reference.source)}"
            if reference and drift is not None
            else ""
        )
        + ". <b>missing</b>: share of examples without the feature; <b>zeros</b>: share of its "
        "values equal to 0; <b>p10, median, p90</b>: TFDV's quantiles. "
        "<code>name[3]</code> holds one value per band (B2, B3, B4), which TFDV pools into one "
        "distribution; <code>name_b2</code>, <code>_b3</code>, <code>_b4</code> are one band "
        "each. <b>notes</b>: TFDV's skew against the train split and drift against the "
        "reference, with the schema's threshold.</p>"
    )
    return h.section(
        "Features",
        intro,
        h.table(FEATURE_HEADERS, rows, classes, text_columns=(0, 1, 12)),
    )


def _histograms(data: DataStats, reference: DataStats | None, rc: ReportConfig) -> str:
    by_feature: dict[str, list[plots.Series]] = {}
    pooled = set()
    for split, dataset in data.statistics.items():
        rows = feature_rows(dataset)
        one_band = any(r.name in F.PER_BAND_FEATURES for r in rows)  # not in older data
        for row in rows:
            if (
                row.kind == "numeric"
                and row.histogram
                and row.name in F.BAND_STATISTICS
                and one_band
            ):
                pooled.add(display_name(row))  # bands mixed: drawn one band each instead
            elif row.kind == "numeric" and row.histogram:
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
        + ("; the reference dashed" if reference is not None else "")
        + (f". Constant, so not drawn: {h.esc(', '.join(constant))}" if constant else "")
        + (
            f". Not drawn, bands pooled (see the one-band features): "
            f"{h.esc(', '.join(sorted(pooled)))}"
            if pooled
            else ""
        )
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


def _sites(data: DataStats) -> str:
    """Every site (`data.sites`), the least label agreement first."""
    if not data.sites:
        return h.section("Sites", h.note("No sites file (converted before sites were recorded)."))
    rows = [site_cells(r) for r in worst_first(data.sites)]
    return h.section(
        "Sites",
        h.note(
            "Tiles whose footprints intersect form one site; each tile's training label is the "
            "union of its site's masks. Label agreement: 1 - the share of the union that one "
            "tile labels tailings and an overlapping tile labels background. Worst first."
        ),
        h.table(SITE_COLUMNS, rows, text_columns=(0, 1, 2)),
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
