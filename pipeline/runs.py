"""`tailings runs`: past runs from the ML Metadata store, one line each."""

from __future__ import annotations

import time

from pipeline import metadata
from pipeline.config import PipelineConfig
from pipeline.runner import summarize_run


def list_runs(cfg: PipelineConfig) -> list[str]:
    store = metadata.open_store(str(cfg.metadata_path))
    ids = metadata.run_ids(store)
    if not ids:
        return ["no runs recorded yet"]
    header = f"{'run id':<28} {'started':<19} {'pairs':>5} {'pix.acc':>7} {'IoU':>6} {'F1':>6}  "
    lines = [header + "blessed  pushed"]
    for run_id in reversed(ids):
        s = summarize_run(cfg, 0.0, run_id)
        run = metadata.load_run(store, run_id)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started_ms / 1000))

        def metric(name: str, s=s) -> str:
            return f"{s.metrics[name]:.3f}" if name in s.metrics else "-"

        blessed = "anomaly" if s.anomalies else {True: "yes", False: "no", None: "-"}[s.blessed]
        pushed = (s.pushed_version or "-") + (" (same)" if s.reused_version else "")
        lines.append(
            f"{run_id:<28} {started:<19} {s.converted if s.converted is not None else '-':>5} "
            f"{metric('pixel_accuracy'):>7} {metric('iou'):>6} {metric('f1'):>6}  "
            f"{blessed:<8} {pushed}"
        )
    return lines
