"""`tailings runs`: past runs from the ML Metadata store, one line each, with how each ended.

How a run ended is read from the states TFX gives each component's execution in ML Metadata
(`metadata.STATES`): it registers an execution RUNNING when the component starts and publishes
COMPLETE, CACHED or FAILED when it ends. A process that is killed publishes nothing, so its
component stays RUNNING forever; whether a RUNNING component is still running is told by the
output folder's lock (`data.lock`), which a live `tailings run` holds.

What each run shows (pairs, metrics, blessing, pushed version, gates) is what the runner
recorded on the run's ML Metadata context when the run ended (`RunDigest`,
`nodes.RUN_SUMMARY_PROPERTY`), so listing runs needs ML Metadata alone: no TFMA, TensorFlow,
TFX or Beam, a fraction of a second. A run without it, recorded before the runner wrote it or
killed before it could, is read from its outputs instead (`digest_of`). benchmarks/startup.py
times `tailings runs`.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline import metadata, nodes
from pipeline.config import PipelineConfig
from pipeline.evaluation import Estimate, Gate
from pipeline.nodes import FACILITY_RECALL, IOU, PIXEL_ACCURACY
from pipeline.summary import RunSummary, summarize_record

# The pipeline's last nodes (nothing consumes their outputs): a run in which both finished ran
# every component. Without this, a run killed between two components (every execution it
# recorded finished) would look complete.
FINAL_NODES = (nodes.PUSHER, nodes.TILE_EVALUATOR)
UNFINISHED = ("NEW", "RUNNING", "UNKNOWN")


def run_state(run: metadata.RunRecord, live: bool = False) -> str:
    """How a run ended, in a few words: "complete", "failed at Trainer", "data anomalies",
    "killed at Transform", "stopped after Trainer", or "running Trainer" when `live` (a live
    `tailings run` holds the output folder and this is its run)."""
    by_start = sorted(run.nodes.values(), key=lambda n: (n.start_ms, n.end_ms))
    failed = [n for n in by_start if n.state == "FAILED"]
    if failed:
        if failed[0].node_id == nodes.VALIDATION_GATE:
            return "data anomalies"  # the gate fails on purpose: the run stops before Transform
        return f"failed at {failed[0].node_id}"
    canceled = [n for n in by_start if n.state == "CANCELED"]
    if canceled:
        return f"canceled at {canceled[0].node_id}"
    unfinished = [n for n in by_start if n.state in UNFINISHED]
    if unfinished:
        # A component of a dead process never finishes: it was killed while this one ran.
        return f"{'running' if live else 'killed at'} {unfinished[0].node_id}"
    if all(node in run.nodes for node in FINAL_NODES):
        return "complete"
    if live:
        return "running"
    if not by_start:
        return "killed before any component"
    # Killed between two components, or failed in TFX itself before the next one started.
    # (Reversed: of executions that ended in the same millisecond, the last recorded one.)
    last = max(reversed(by_start), key=lambda n: (n.end_ms, n.start_ms))
    return f"stopped after {last.node_id}"


def live_run_since(output_dir: str | os.PathLike) -> float | None:
    """When the live `tailings run` that holds `output_dir` took it (epoch seconds), or None
    when no live run holds it. A holder on another host cannot be checked and counts as live."""
    from data.lock import lock_holder

    holder = lock_holder(output_dir)
    if holder is None or holder.verb != "run":
        return None
    try:
        return datetime.datetime.fromisoformat(holder.started).timestamp()
    except ValueError:
        return 0.0  # start unknown: the newest run may be its


# The metrics the table shows, recorded for every split an Evaluator scored.
SHOWN_METRICS = (IOU, PIXEL_ACCURACY, FACILITY_RECALL)


@dataclass(frozen=True)
class RunDigest:
    """What `tailings runs` shows of a run: pairs converted, anomalies, each evaluated split's
    shown metrics (with their bootstrap intervals) and the gates applied on it, blessing, and
    the pushed version (and whether it was one already serving).

    The runner records it as JSON on the run's ML Metadata context when the run ends
    (`to_json`, `nodes.RUN_SUMMARY_PROPERTY`); the JSON is strict (a metric that is NaN is
    written as the string "nan") and carries `nodes.RUN_SUMMARY_FORMAT`."""

    converted: int | None = None
    anomalies: tuple[str, ...] = ()
    blessed: bool | None = None
    pushed_version: str | None = None
    reused_version: bool = False
    # Per evaluated split: metric name -> estimate (SHOWN_METRICS only), and the gates applied.
    metrics: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    gates: dict[str, tuple[Gate, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, s: RunSummary) -> RunDigest:
        """The digest of a run's full summary (`pipeline.summary.summarize_record`)."""
        return cls(
            converted=s.converted,
            anomalies=tuple(s.anomalies),
            blessed=s.blessed,
            pushed_version=s.pushed_version,
            reused_version=s.reused_version,
            metrics={
                split: {name: e.metrics[name] for name in SHOWN_METRICS if name in e.metrics}
                for split, e in s.evaluations.items()
            },
            gates={split: tuple(e.gates) for split, e in s.evaluations.items()},
        )

    def to_json(self) -> str:
        """The property's text (`from_json` reads it back)."""
        splits = {
            split: {
                "metrics": {
                    name: {"value": _out(e.value), "low": _out(e.low), "high": _out(e.high)}
                    for name, e in self.metrics.get(split, {}).items()
                },
                "gates": [
                    {
                        "metric": g.metric,
                        "kind": g.kind,
                        "bound": _out(g.bound),
                        "value": _out(g.value),
                        "passed": g.passed,
                    }
                    for g in self.gates.get(split, ())
                ],
            }
            for split in {**self.metrics, **self.gates}
        }
        return json.dumps(
            {
                "format": nodes.RUN_SUMMARY_FORMAT,
                "converted": self.converted,
                "anomalies": list(self.anomalies),
                "blessed": self.blessed,
                "pushed_version": self.pushed_version,
                "reused_version": self.reused_version,
                "splits": splits,
            },
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str) -> RunDigest | None:
        """The digest `to_json` wrote; None for another format or text that is not one (the
        caller then reads the run's outputs, which stay the source of truth)."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != nodes.RUN_SUMMARY_FORMAT:
                return None
            splits: dict[str, Any] = data["splits"]
            return cls(
                converted=data["converted"],
                anomalies=tuple(data["anomalies"]),
                blessed=data["blessed"],
                pushed_version=data["pushed_version"],
                reused_version=bool(data["reused_version"]),
                metrics={
                    split: {
                        name: Estimate(float(m["value"]), _in(m["low"]), _in(m["high"]))
                        for name, m in recorded["metrics"].items()
                    }
                    for split, recorded in splits.items()
                },
                gates={
                    split: tuple(
                        Gate(
                            g["metric"], g["kind"], float(g["bound"]), _in(g["value"]), g["passed"]
                        )
                        for g in recorded["gates"]
                    )
                    for split, recorded in splits.items()
                },
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def _out(x: float | None) -> float | str | None:
    """A number for strict JSON: NaN and infinities as strings ("nan", "inf", "-inf")."""
    return x if x is None or math.isfinite(x) else str(x)


def _in(x: float | str | None) -> float | None:
    """A number `_out` wrote (None stays None: no interval, no value)."""
    return None if x is None else float(x)


def digest_of(run: metadata.RunRecord) -> RunDigest:
    """What `tailings runs` shows of `run`: the digest the runner recorded when the run ended.

    A run without one (recorded before the runner wrote it, or whose process was killed before
    it summed up) is read from its outputs, as the run's summary reads them
    (`pipeline.summary.summarize_record`): the conversion report and the anomalies from ML
    Metadata and small files, and the metrics from an Evaluator's TFMA output if one finished
    (TFX publishes a component's outputs only when it completes). Only that last read loads
    TFMA and TensorFlow (about 13 CPU s, once per `tailings runs`): a killed run whose
    Evaluator finished still shows its metrics, one killed earlier shows "-" at no cost."""
    recorded = run.properties.get(nodes.RUN_SUMMARY_PROPERTY)
    digest = RunDigest.from_json(recorded) if isinstance(recorded, str) else None
    if digest is not None:
        return digest
    return RunDigest.of(summarize_record(run, 0.0))


def _metric(d: RunDigest, split: str, name: str, full: bool = False) -> str:
    """A metric as the table shows it: with its interval (`full`), else three decimals."""
    e = d.metrics.get(split, {}).get(name)
    if e is None:
        return "-"
    return str(e) if full else f"{e.value:.3f}"


def list_runs(cfg: PipelineConfig) -> list[str]:
    """The table of `tailings runs`, newest run first (see `digest_of` for what it reads)."""
    store = metadata.open_store(str(cfg.metadata_path), verify=True)
    ids = metadata.run_ids(store)
    if not ids:
        return [f"no runs recorded yet in {cfg.metadata_path}"]
    live_since = live_run_since(cfg.output_dir)
    header = (
        f"{'run id':<28} {'started':<19} {'pairs':>5}  {'scene IoU [95 % interval]':<26} "
        f"{'pix.acc':>7} {'fac.rec':>7} {'tile IoU':>8}  "
    )
    lines = [header + "blessed  pushed     state"]
    for run_id in reversed(ids):
        run = metadata.load_run(store, run_id)
        d = digest_of(run)
        # Only the newest run can be the live one, and only if it began after the lock was taken
        # (the lock records whole seconds).
        live = (
            live_since is not None and run_id == ids[-1] and run.started_ms / 1000 >= live_since - 1
        )
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started_ms / 1000))
        scene, tiles = nodes.SCENE_SPLIT, nodes.EVAL_SPLIT
        blessed = "anomaly" if d.anomalies else {True: "yes", False: "no", None: "-"}[d.blessed]
        pushed = (d.pushed_version or "-") + (" (same)" if d.reused_version else "")
        lines.append(
            f"{run_id:<28} {started:<19} {d.converted if d.converted is not None else '-':>5}  "
            f"{_metric(d, scene, IOU, True):<26} {_metric(d, scene, PIXEL_ACCURACY):>7} "
            f"{_metric(d, scene, FACILITY_RECALL):>7} {_metric(d, tiles, IOU):>8}  "
            f"{blessed:<8} {pushed:<10} {run_state(run, live)}"
        )
        if d.gates.get(scene):
            applied = ", ".join(f"{g.metric} {g.kind} {g.bound:g}" for g in d.gates[scene])
            lines.append(f"{'':<28} gates applied: {applied}")
    return lines
