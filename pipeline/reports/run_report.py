"""`tailings report`: one self-contained page per pipeline run.

The outcome (data summary, metrics, blessing, pushed version) comes from `summarize_run`, the
same code that prints the summary of `tailings run`; this module adds what only a page can
show: the thresholds the run really used, the training curves and the Trainer's figures.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from data.sites import SITE_COLUMNS, site_cells, worst_first
from pipeline import metadata, nodes
from pipeline.config import PipelineConfig
from pipeline.evaluation import DROP_GATE, VALUE_GATE, SplitEvaluation
from pipeline.reports import html as h
from pipeline.reports import plots
from pipeline.reports.config import DEFAULTS, ReportConfig
from pipeline.reports.stats import open_run
from pipeline.summary import SITE_METRICS, RunSummary, site_order, summarize_run
from pipeline.tuning import OBJECTIVE_DESCRIPTION, Search, read_search


@dataclass
class RunReport:
    summary: RunSummary
    started: str
    nodes: list[metadata.NodeRun]
    split_counts: dict[str, int] = field(default_factory=dict)
    # Lower bounds the Evaluator really applied (from its recorded EvalConfig), by metric.
    history: dict[str, list[float]] = field(default_factory=dict)
    curves_png: bytes | None = None
    figures: list[tuple[str, bytes]] = field(default_factory=list)
    # Per evaluated split: (pair id, PNG of the RGB with FP/FN coloured), worst first.
    error_maps: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)
    search: Search | None = None  # the Tuner's trials (`tailings run --tune`)


def load_report(
    cfg: PipelineConfig, run_id: str | None = None, rc: ReportConfig = DEFAULTS
) -> RunReport:
    from components import trainer_lib
    from components.example_gen import SUMMARY_FILE

    run = open_run(cfg, run_id)
    node_runs = sorted(run.nodes.values(), key=lambda n: n.start_ms)
    seconds = (
        (max(n.end_ms for n in node_runs) - min(n.start_ms for n in node_runs)) / 1e3
        if node_runs
        else 0
    )
    report = RunReport(
        summary=summarize_run(cfg, seconds, run.run_id),
        started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started_ms / 1e3)),
        nodes=node_runs,
    )
    conversion = run.artifact(nodes.EXAMPLE_GEN, nodes.CONVERSION_REPORT)
    if conversion is not None and os.path.exists(os.path.join(conversion.uri, SUMMARY_FILE)):
        counts = json.loads(Path(conversion.uri, SUMMARY_FILE).read_text())
        report.split_counts = counts.get("converted_by_split", {})
    model_run = run.artifact(nodes.TRAINER, nodes.MODEL_RUN)
    if model_run is not None:
        folder = Path(model_run.uri)
        if (folder / trainer_lib.HISTORY_FILE).exists():
            report.history = json.loads((folder / trainer_lib.HISTORY_FILE).read_text())
        if (folder / trainer_lib.CURVES_FILE).exists():
            report.curves_png = (folder / trainer_lib.CURVES_FILE).read_bytes()
        pngs = sorted((folder / trainer_lib.FIGURES_DIR).glob("*.png"))[: rc.max_figures]
        report.figures = [(p.stem, p.read_bytes()) for p in pngs]
    report.error_maps = _error_maps(run, report.summary)
    report.search = read_search(run)
    return report


def _error_maps(run: metadata.RunRecord, s: RunSummary) -> dict[str, list[tuple[str, bytes]]]:
    """Every evaluated example of every split, predicted again by the run's model."""
    from tfx.utils import path_utils

    from pipeline.reports import overlays

    model = run.artifact(nodes.TRAINER, nodes.MODEL)
    examples = run.artifact(nodes.EXAMPLE_GEN, nodes.EXAMPLES)
    model_dir = path_utils.serving_model_path(model.uri) if model is not None else ""
    if examples is None or not os.path.isdir(model_dir):
        return {}
    predictions = run.artifact(nodes.SCENE_PREDICTOR, nodes.PREDICTIONS)
    labels = _trained_labels(run)
    maps = {}
    for split, evaluation in s.evaluations.items():
        order = [row.pair_id for row in evaluation.tiles]
        found = overlays.read_examples(examples.uri, split)
        if split == nodes.SCENE_SPLIT and predictions is not None:
            maps[split] = list(overlays.blended_error_maps(predictions.uri, split, found, order))
        else:
            maps[split] = list(overlays.error_maps(model_dir, found, order, labels))
    return maps


def _trained_labels(run: metadata.RunRecord) -> str:
    """The labels the run's Trainer learned and its Evaluators scored (`TrainConfig.labels`),
    from the config it wrote beside its model; "site" when it wrote none."""
    from components import trainer_lib
    from components.config import TrainerConfig

    model_run = run.artifact(nodes.TRAINER, nodes.MODEL_RUN)
    path = Path(model_run.uri, trainer_lib.CONFIG_FILE) if model_run is not None else None
    if path is None or not path.exists():
        return "site"
    return TrainerConfig.from_custom_config(json.loads(path.read_text())).train.labels


def _verdict(s: RunSummary) -> tuple[str, str]:
    if s.anomalies:
        return "STOPPED: data anomalies", "bad"
    if s.error:
        return "FAILED", "bad"
    if s.blessed:
        return "BLESSED", "good"
    if s.blessed is False:
        return "NOT BLESSED", "bad"
    return "no evaluation", ""


def report_html(report: RunReport) -> str:
    s = report.summary
    verdict, css = _verdict(s)
    pushed = s.pushed_version or "-"
    cards = [
        h.card("verdict", verdict, css),
        h.card("pushed version" + (" (already serving)" if s.reused_version else ""), pushed),
        h.card("pairs converted", s.converted if s.converted is not None else "-"),
        h.card("rejected pairs", len(s.rejected), "bad" if s.rejected else ""),
        h.card("anomalies", len(s.anomalies), "bad" if s.anomalies else "good"),
        h.card("run time", f"{s.seconds:.0f} s"),
    ]
    body = ["<div class='cards'>" + "".join(cards) + "</div>"]
    if s.error:
        body.append(h.note(f"error: {s.error}", "alert"))
    body += [
        _data(report),
        _evaluation(report),
        _error_section(report),
        _model(s),
        _tuning(report.search),
        _training(report),
        _figures(report),
        _components(report),
    ]
    return h.page(f"Pipeline run {s.run_id}", f"started {report.started}", body)


def _data(report: RunReport) -> str:
    s = report.summary
    parts = []
    if report.split_counts:
        rows = [(split, n) for split, n in report.split_counts.items()]
        parts.append(h.table(("split", "examples"), rows))
    if s.rejected:
        rows = [(r["id"], r["reason"], r.get("detail", "")) for r in s.rejected]
        parts.append("<h3>Rejected pairs</h3>")
        parts.append(h.table(("pair", "reason", "detail"), rows, ["bad"] * len(rows), (0, 1, 2)))
    else:
        parts.append(h.note("No pair was rejected by the conversion."))
    if s.sites:
        rows = [site_cells(r) for r in worst_first(s.sites)]
        parts.append("<h3>Sites, least label agreement first</h3>")
        parts.append(h.table(SITE_COLUMNS, rows, text_columns=(0, 1, 2)))
    if s.anomalies:
        items = "".join(f"<li>{h.esc(a)}</li>" for a in s.anomalies)
        parts.append(f"<div class='alert'>Anomalies stopped the run:<ul>{items}</ul></div>")
    elif s.converted is not None:
        parts.append(h.note("No anomalies: every split matches the schema."))
    parts.append("<p>Per-feature statistics: <code>tailings stats --run ID --html FILE</code>.</p>")
    return h.section("Data", *parts)


def _evaluation(report: RunReport) -> str:
    s = report.summary
    if not s.evaluations:
        return h.section("Evaluation", h.note("This run has no evaluation.", "alert"))
    parts = []
    for evaluation in s.evaluations.values():
        parts += _split_evaluation(evaluation)
    return h.section("Evaluation", *parts)


def _split_evaluation(e: SplitEvaluation) -> list[str]:
    """One split: metrics with bootstrap intervals, the gates, every tile worst first."""
    from components.metrics import ALL_BACKGROUND_ACCURACY, PIXEL_ACCURACY

    parts = [f"<h3>{h.esc(nodes.SPLIT_DESCRIPTIONS.get(e.split, e.split))}</h3>"]
    rows = [(name, str(estimate)) for name, estimate in sorted(e.metrics.items())]
    parts.append(h.table((f"metric ({e.split} split)", "value [95 % bootstrap interval]"), rows))
    if e.gates:
        gate_rows, classes = [], []
        for g in e.gates:
            what = g.metric + (" (change vs. last blessed model)" if g.kind == DROP_GATE else "")
            verdict = "pass" if g.passed else "fail"
            gate_rows.append((what, e.shown(g), f"{g.kind} {g.bound:g}", verdict))
            classes.append("good" if g.passed else "bad")
        parts.append(
            "<p>Blessing gates this run applied (read from its Evaluator's recorded config; "
            "a value other than today's default was set by the run):</p>"
        )
        parts.append(h.table(("gate", "value", "threshold", "result"), gate_rows, classes))
        overridden = _overridden(e)
        if overridden:
            parts.append(h.note("Thresholds overridden by this run: " + overridden, "alert"))
    baseline = e.metrics.get(ALL_BACKGROUND_ACCURACY)
    accuracy = e.metrics.get(PIXEL_ACCURACY)
    if baseline is not None and accuracy is not None:
        parts.append(
            "<p>Predicting &ldquo;no tailings&rdquo; everywhere would score a pixel accuracy of "
            f"<b>{baseline.value:.4f}</b> on this split; the model scores "
            f"<b>{accuracy.value:.4f}</b> ({accuracy.value - baseline.value:+.4f}).</p>"
        )
        if accuracy.value <= baseline.value:
            parts.append(h.note("The model is no better than predicting no tailings.", "alert"))
    if e.sites:
        site_rows = [
            (site, *(str(m[name]) if name in m else "-" for name, _ in SITE_METRICS))
            for site, m in sorted(e.sites.items(), key=lambda kv: site_order(kv[1], kv[0]))
        ]
        parts.append(
            f"<p>Each of the {len(e.sites)} sites (TFMA slices by site), lowest IoU first:</p>"
        )
        parts.append(h.table(("site", *(label for _, label in SITE_METRICS)), site_rows))
    if e.tiles:
        tile_rows = [
            (
                t.pair_id,
                f"{t.labelled_share:.1%}",
                f"{t.predicted_share:.1%}",
                f"{t.iou:.3f}",
                f"{t.wrong_share:.1%}",
            )
            for t in e.tiles
        ]
        parts.append(f"<p>All {len(e.tiles)} examples (TFMA slices by pair id), worst first:</p>")
        parts.append(
            h.table(
                ("pair", "labelled tailings", "predicted tailings", "IoU", "share of wrong px"),
                tile_rows,
            )
        )
    return parts


def _overridden(e: SplitEvaluation) -> str:
    """The gates whose bound differs from today's defaults, as 'name bound (default d)'."""
    from pipeline.config import Thresholds

    defaults = Thresholds()
    expected = {(n, VALUE_GATE): b for n, b in defaults.lower_bounds().items()}
    expected.update({(n, DROP_GATE): d for n, d in defaults.max_drop})
    changed = [
        f"{g.metric} {g.kind} {g.bound:g} (default {expected[(g.metric, g.kind)]:g})"
        for g in e.gates
        if (g.metric, g.kind) in expected and abs(expected[(g.metric, g.kind)] - g.bound) > 1e-12
    ]
    return "; ".join(changed)


def _error_section(report: RunReport) -> str:
    from pipeline.reports import overlays

    if not report.error_maps:
        return ""
    rows = {
        split: {row.pair_id: row for row in report.summary.evaluations[split].tiles}
        for split in report.error_maps
    }
    legend = (
        "<p>Each evaluated example, worst first (most of the split's wrong pixels): RGB (B4, B3, "
        f"B2) with false positives in magenta {overlays.FALSE_POSITIVE}, false negatives in cyan "
        f"{overlays.FALSE_NEGATIVE}, correctly found tailings in gold; no data grey.</p>"
    )
    parts = [legend]
    for split, maps in report.error_maps.items():
        parts.append(f"<h3>{h.esc(nodes.SPLIT_DESCRIPTIONS.get(split, split))}</h3>")
        figures = []
        for pair_id, png in maps:
            row = rows[split][pair_id]
            caption = f"{pair_id}: IoU {row.iou:.2f}, {row.wrong_share:.0%} of wrong pixels"
            figures.append(h.figure(plots.data_uri(png), caption=caption))
        parts.append("<div class='grid'>" + "".join(figures) + "</div>")
    return h.section("Where the errors are", *parts)


def _model(s: RunSummary) -> str:
    if s.blessed is None:
        return h.section("Model", h.note("No blessing: the run did not reach the Evaluator.", ""))
    if not s.blessed:
        return h.section("Model", h.note("NOT BLESSED: nothing was pushed.", "alert"))
    if s.reused_version:
        text = f"BLESSED; already serving as version {s.pushed_version} ({s.pushed_path})"
    else:
        text = f"BLESSED and pushed as version {s.pushed_version} to {s.pushed_path}"
    return h.section("Model", h.note(text))


def _tuning(search: Search | None) -> str:
    """The Tuner's trials: score by trial, and every trial's values, score and duration."""
    if search is None:
        return ""  # a run without --tune has no Tuner
    best = search.best
    parts = [
        f"<p>{len(search.trials)} trials ({h.esc(search.algorithm)}, {search.workers} at once) "
        f"in {search.seconds:.0f} s. Score ({h.esc(search.objective)}): "
        f"{h.esc(OBJECTIVE_DESCRIPTION)}, after each trial's short training. The Trainer "
        "trained the preset's epochs with the best trial's values.</p>",
        h.figure(
            plots.data_uri(
                plots.trial_scores_png(
                    [(int(t.trial), t.score) for t in search.trials], search.objective
                )
            ),
            alt="score by trial",
        ),
    ]
    names = search.names
    rows, classes = [], []
    for t in search.trials:
        seconds = f"{t.seconds:.0f}" if t.seconds is not None else "-"
        score = f"{t.score:.3f}" if t.score is not None else "-"
        values = [
            f"{v:.3g}" if isinstance(v, float) else str(v)
            for v in (t.hyperparameters.get(n, "-") for n in names)
        ]
        rows.append((t.trial, t.status.lower(), score, *values, seconds))
        classes.append("good" if t is best else ("bad" if t.status != "COMPLETED" else ""))
    text = [
        3 + i
        for i, n in enumerate(names)
        if any(isinstance(t.hyperparameters.get(n), str) for t in search.trials)
    ]
    parts.append(
        h.table(("trial", "status", search.objective, *names, "seconds"), rows, classes, (1, *text))
    )
    return h.section("Hyperparameter search", *parts)


def _training(report: RunReport) -> str:
    parts = []
    if report.curves_png:
        parts.append(h.figure(plots.data_uri(report.curves_png), alt="training curves"))
    if report.history:
        epochs = max(len(v) for v in report.history.values())
        rows = [(name, len(values), f"{values[-1]:.4f}") for name, values in report.history.items()]
        parts.append(f"<p>{epochs} epochs; last value of each curve:</p>")
        parts.append(h.table(("curve", "epochs", "last"), sorted(rows)))
    if not parts:
        parts.append(h.note("This run did not train a model.", ""))
    return h.section("Training", *parts)


def _figures(report: RunReport) -> str:
    if not report.figures:
        return h.section("Predictions", h.note("No figures from the Trainer.", ""))
    # Each figure carries its pair id as a title already.
    figures = [h.figure(plots.data_uri(png), alt=f"pair {name}") for name, png in report.figures]
    return h.section(
        "Predictions",
        "<p>Eval examples from the Trainer: RGB (B4, B3, B2) | ground truth | prediction.</p>",
        "<div class='grid'>" + "".join(figures) + "</div>",
    )


def _components(report: RunReport) -> str:
    rows = [(n.node_id, n.state, f"{n.seconds:.1f}") for n in report.nodes]
    classes = ["bad" if n.state == "FAILED" else "" for n in report.nodes]
    return h.section("Components", h.table(("component", "state", "seconds"), rows, classes))
