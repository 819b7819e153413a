"""`tailings runs`: past runs from the ML Metadata store, one line each, with how each ended.

How a run ended is read from the states TFX gives each component's execution in ML Metadata
(`metadata.STATES`): it registers an execution RUNNING when the component starts and publishes
COMPLETE, CACHED or FAILED when it ends. A process that is killed publishes nothing, so its
component stays RUNNING forever; whether a RUNNING component is still running is told by the
output folder's lock (`data.lock`), which a live `tailings run` holds.

Only ML Metadata, the stdlib and this project's light modules load at import; reading a run's
outputs loads their readers only (`pipeline.runner.summarize_record`). benchmarks/startup.py
times `tailings runs`.
"""

from __future__ import annotations

import datetime
import os
import time

from pipeline import metadata, nodes
from pipeline.config import PipelineConfig
from pipeline.nodes import FACILITY_RECALL, IOU, PIXEL_ACCURACY
from pipeline.runner import summarize_record

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


def list_runs(cfg: PipelineConfig) -> list[str]:
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
        s = summarize_record(run, 0.0)
        # Only the newest run can be the live one, and only if it began after the lock was taken
        # (the lock records whole seconds).
        live = (
            live_since is not None and run_id == ids[-1] and run.started_ms / 1000 >= live_since - 1
        )
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started_ms / 1000))
        scene = s.evaluations.get(nodes.SCENE_SPLIT)
        tiles = s.evaluations.get(nodes.EVAL_SPLIT)

        def metric(e, name: str, full: bool = False) -> str:
            if e is None or name not in e.metrics:
                return "-"
            return str(e.metrics[name]) if full else f"{e.metrics[name].value:.3f}"

        blessed = "anomaly" if s.anomalies else {True: "yes", False: "no", None: "-"}[s.blessed]
        pushed = (s.pushed_version or "-") + (" (same)" if s.reused_version else "")
        lines.append(
            f"{run_id:<28} {started:<19} {s.converted if s.converted is not None else '-':>5}  "
            f"{metric(scene, IOU, True):<26} {metric(scene, PIXEL_ACCURACY):>7} "
            f"{metric(scene, FACILITY_RECALL):>7} {metric(tiles, IOU):>8}  "
            f"{blessed:<8} {pushed:<10} {run_state(run, live)}"
        )
        if scene is not None and scene.gates:
            applied = ", ".join(f"{g.metric} {g.kind} {g.bound:g}" for g in scene.gates)
            lines.append(f"{'':<28} gates applied: {applied}")
    return lines
