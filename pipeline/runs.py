"""`tailings runs`: past runs from the ML Metadata store, one line each."""

from __future__ import annotations

import time

from components.facility_metrics import FACILITY_RECALL
from components.metrics import IOU, PIXEL_ACCURACY
from pipeline import metadata, nodes
from pipeline.config import PipelineConfig
from pipeline.runner import summarize_run


def list_runs(cfg: PipelineConfig) -> list[str]:
    store = metadata.open_store(str(cfg.metadata_path))
    ids = metadata.run_ids(store)
    if not ids:
        return ["no runs recorded yet"]
    header = (
        f"{'run id':<28} {'started':<19} {'pairs':>5}  {'scene IoU [95 % interval]':<26} "
        f"{'pix.acc':>7} {'fac.rec':>7} {'tile IoU':>8}  "
    )
    lines = [header + "blessed  pushed"]
    for run_id in reversed(ids):
        s = summarize_run(cfg, 0.0, run_id)
        run = metadata.load_run(store, run_id)
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
            f"{blessed:<8} {pushed}"
        )
        if scene is not None and scene.gates:
            applied = ", ".join(f"{g.metric} {g.kind} {g.bound:g}" for g in scene.gates)
            lines.append(f"{'':<28} gates applied: {applied}")
    return lines
