"""A run's outcome, read from ML Metadata and the artifacts it points to: `RunSummary`.

`tailings run` prints it when the run ends (`pipeline.runner`), `tailings runs` reads it for a
run recorded without a digest (`pipeline.runs.digest_of`), and the run report shows it
(`pipeline.reports.run_report`). It sits below all three so that data flows one way: the
runner imports this module and `pipeline.runs`, never the other way round.

At module level this imports only ML Metadata, the stdlib and this project's light modules;
the readers of the components' outputs (TFMA, TFDV) load only for the artifacts a run has.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from data.errors import EXIT_ANOMALIES
from data.sites import SITES_FILE
from pipeline import metadata, nodes
from pipeline.config import PipelineConfig
from pipeline.tuning import Search, read_search, search_lines

if TYPE_CHECKING:
    from pipeline.evaluation import SplitEvaluation

# Exit codes of `tailings run` (the README's exit code table; docs/pipeline.md); data
# anomalies stop a run with `data.errors.EXIT_ANOMALIES` (4), the code `tailings stats
# --compare` gives drift too.
EXIT_BLESSED = 0
EXIT_ERROR = 1
EXIT_NOT_BLESSED = 3


@dataclass
class RunSummary:
    run_id: str | None
    seconds: float
    converted: int | None = None
    rejected: list[dict] = field(default_factory=list)
    # The ConversionReport's sites.jsonl: one row per site (tiles, split, label agreement).
    sites: list[dict] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    # Per split the Evaluators scored: the scene split (gate) first, then the eval tiles.
    evaluations: dict[str, SplitEvaluation] = field(default_factory=dict)
    scene_windows: int | None = None
    blessed: bool | None = None
    pushed_version: str | None = None
    pushed_path: str | None = None
    reused_version: bool = False
    error: str | None = None
    search: Search | None = None  # the Tuner's trials (`tailings run --tune`)

    @property
    def gate(self) -> SplitEvaluation:
        """The evaluation that decided the blessing (the scene split's)."""
        from pipeline.evaluation import SplitEvaluation

        return self.evaluations.get(nodes.SCENE_SPLIT) or SplitEvaluation(nodes.SCENE_SPLIT)

    @property
    def metrics(self) -> dict[str, float]:
        """The gate split's overall metric values."""
        return self.gate.values()

    @property
    def thresholds(self) -> dict[str, float]:
        """Lower bounds the run applied on the gate split (its recorded EvalConfig)."""
        return self.gate.lower_bounds()

    @property
    def failures(self) -> list[str]:
        return self.gate.failures

    @property
    def exit_code(self) -> int:
        if self.anomalies:
            return EXIT_ANOMALIES
        if self.error:
            return EXIT_ERROR
        return EXIT_BLESSED if self.blessed else EXIT_NOT_BLESSED

    def lines(self) -> list[str]:
        out = [f"run {self.run_id}: {self.seconds:.0f} s"]
        if self.converted is not None:
            kept = [r for r in self.sites if r.get("converted")]
            in_sites = f" in {len(kept)} sites" if self.sites else ""
            out.append(
                f"pairs: {self.converted} converted{in_sites}, {len(self.rejected)} rejected"
            )
            if self.scene_windows is not None:
                eval_sites = sum(1 for r in kept if r.get("split") == nodes.EVAL_SPLIT)
                source = f"the {eval_sites} eval sites" if self.sites else "the eval tiles"
                out.append(f"scene split: {self.scene_windows} windows cut from {source}")
            out += [f"  rejected {r['id']}: {r['reason']} ({r['detail']})" for r in self.rejected]
        if self.anomalies:
            out.append(f"anomalies: {len(self.anomalies)} (run stopped before Transform)")
            out += [f"  {a}" for a in self.anomalies]
        elif self.converted is not None:
            out.append("anomalies: none")
        if self.search is not None:
            out += search_lines(self.search)
        for evaluation in self.evaluations.values():
            out += evaluation_lines(evaluation)
        if self.blessed is not None:
            out.append("BLESSED" if self.blessed else "NOT BLESSED: nothing pushed")
        if self.pushed_path:
            how = "already serving, not pushed again" if self.reused_version else "pushed"
            out.append(f"model {how}: version {self.pushed_version} at {self.pushed_path}")
        if self.error:
            out.append(f"error: {self.error}")
        return out


TILE_ROWS_SHOWN = 8  # the terminal shows the worst tiles; the report shows them all


# What `evaluation_lines` shows of each site's slice (metric, label).
SITE_METRICS = (
    (nodes.IOU, "IoU"),
    (nodes.FACILITY_RECALL, "facility recall"),
    ("labelled_share", "labelled"),
)


def site_order(metrics: dict, site: str) -> tuple:
    iou = metrics.get(nodes.IOU)
    return (iou.value if iou is not None else 2.0, site)


def evaluation_lines(e: SplitEvaluation, tile_rows: int = TILE_ROWS_SHOWN) -> list[str]:
    """One split's metrics with intervals, its gates, and its worst tiles, for the terminal."""
    from pipeline.evaluation import DROP_GATE

    out = [f"evaluation, {nodes.SPLIT_DESCRIPTIONS.get(e.split, e.split)}:"]
    out.append(f"  {'metric':<24} value [95 % bootstrap interval]")
    for name, estimate in sorted(e.metrics.items()):
        out.append(f"  {name:<24} {estimate}")
    for g in e.gates:
        how = "vs. last blessed model, " if g.kind == DROP_GATE else ""
        verdict = "ok" if g.passed else "FAILED"
        out.append(f"  gate {g.metric} {how}{g.kind} {g.bound:g}: {e.shown(g)} {verdict}")
    if e.sites:
        out.append(f"  by site ({len(e.sites)}; TFMA's slices), lowest IoU first:")
        for site, m in sorted(e.sites.items(), key=lambda kv: site_order(kv[1], kv[0])):
            shown = "  ".join(f"{label} {m[name]}" for name, label in SITE_METRICS if name in m)
            out.append(f"    {site:<12} {shown}")
    if e.tiles:
        out.append(
            f"  worst {min(tile_rows, len(e.tiles))} of {len(e.tiles)} by share of wrong pixels "
            "(labelled / predicted tailings share, IoU):"
        )
        for row in e.tiles[:tile_rows]:
            out.append(
                f"    {row.pair_id:<26} {row.wrong_share:6.1%} of wrong pixels  "
                f"{row.labelled_share:6.1%} / {row.predicted_share:6.1%}  IoU {row.iou:.3f}"
            )
    return out


def summarize_run(cfg: PipelineConfig, seconds: float, run_id: str | None = None) -> RunSummary:
    """Read one run's outcome (the latest when `run_id` is None) from ML Metadata and the
    artifacts it points to. A caller that holds the run's record: `summarize_record`."""
    store = metadata.open_store(str(cfg.metadata_path))
    run = metadata.load_run(store, run_id)
    if run is None:
        return RunSummary(run_id=None, seconds=seconds, error="no run recorded")
    return summarize_record(run, seconds)


def summarize_record(run: metadata.RunRecord, seconds: float) -> RunSummary:
    """A run's outcome from its record in ML Metadata and the artifacts it points to (their
    readers load only for the artifacts the run has)."""
    s = RunSummary(run_id=run.run_id, seconds=seconds)
    report = run.artifact(nodes.EXAMPLE_GEN, nodes.CONVERSION_REPORT)
    if report is not None:
        s.converted = metadata.custom(report, "converted")
        s.scene_windows = metadata.custom(report, "scene_windows")
        rejected = os.path.join(report.uri, "rejected.jsonl")
        if os.path.exists(rejected):
            s.rejected = [json.loads(x) for x in open(rejected).read().splitlines() if x]
        sites = os.path.join(report.uri, SITES_FILE)
        if os.path.exists(sites):
            s.sites = [json.loads(x) for x in open(sites).read().splitlines() if x]
    anomalies = run.artifact(nodes.EXAMPLE_VALIDATOR, nodes.ANOMALIES)
    if anomalies is not None:
        from components.anomalies import list_anomalies

        splits = json.loads(metadata.custom(anomalies, "split_names") or "[]") or [
            nodes.TRAIN_SPLIT,
            nodes.EVAL_SPLIT,
        ]
        s.anomalies = [str(a) for a in list_anomalies(anomalies.uri, splits)]
    for node, split in nodes.EVALUATORS:
        evaluation = run.artifact(node, nodes.EVALUATION)
        if evaluation is not None:
            from pipeline.evaluation import load_evaluation

            s.evaluations[split] = load_evaluation(evaluation.uri, split)
    s.search = read_search(run)
    blessing = run.artifact(nodes.SCENE_EVALUATOR, nodes.BLESSING)
    if blessing is not None:
        s.blessed = bool(metadata.custom(blessing, "blessed"))
    pushed = run.artifact(nodes.PUSHER, nodes.PUSHED_MODEL)
    if pushed is not None and metadata.custom(pushed, "pushed"):
        s.pushed_version = metadata.custom(pushed, "pushed_version")
        s.pushed_path = metadata.custom(pushed, "pushed_destination")
        s.reused_version = bool(metadata.custom(pushed, "reused_version"))
    return s
