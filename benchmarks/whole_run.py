"""The whole default run, as a user runs it: `tailings run` per seed, its time and its outcome.

    .venv/bin/python benchmarks/whole_run.py [--data DIR] [--seeds 42 7 2024] [--workdir DIR]

Each seed runs `tailings run --workers 2` as its own process in a fresh output folder (seed 42
is the preset's own; others add `--set train.seed=N`), timed as a whole process. Its outcome is
read back from the run's ML Metadata store (`pipeline.summary.summarize_run`, what `tailings
runs` and `tailings report` read): blessed or not, the scene split's gate metrics with their
bootstrap intervals, and each component's seconds. The 1-minute load average before and after
each run is recorded, so a reader can tell a quiet machine from a busy one. Results go to
benchmarks/results/whole_run.{json,md}. Issue 29's targets: every seed BLESSED with the default
thresholds, and the whole run <= 15 min on 2 cores with the machine quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _env import DEFAULT_DATA, RESULTS, ROOT  # sets the environment first

DEFAULT_OUT = RESULTS / "whole_run.json"
PRESET_SEED = 42  # TrainConfig.seed
GATE_METRICS = ("iou", "pixel_accuracy", "accuracy_gain", "facility_recall", "facility_precision")


def run_seed(data: Path, seed: int, workdir: Path) -> dict:
    """One `tailings run` of the default recipe with `seed`, timed as a process."""
    out = workdir / f"seed-{seed}"
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        str(Path(sys.executable).with_name("tailings")),
        "run",
        "--data",
        str(data),
        "--output-dir",
        str(out / "outputs"),
        "--serving-dir",
        str(out / "serving"),
        "--workers",
        "2",
    ]
    if seed != PRESET_SEED:
        argv += ["--set", f"train.seed={seed}"]
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - start
    load_after = os.getloadavg()[0]
    (out / "stdout.txt").write_text(proc.stdout)
    (out / "stderr.txt").write_text(proc.stderr)
    return {
        "seed": seed,
        "argv": argv[1:],
        "exit_code": proc.returncode,
        "seconds": round(seconds, 1),
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        **read_back(data, out),
    }


def read_back(data: Path, out: Path) -> dict:
    """The outcome of the run in `out` from its ML Metadata store, as `tailings runs` and
    `tailings report` read it."""
    from pipeline import metadata
    from pipeline.config import PipelineConfig
    from pipeline.summary import summarize_run

    cfg = PipelineConfig(data_dir=data, output_dir=out / "outputs", serving_dir=out / "serving")
    summary = summarize_run(cfg, 0.0)
    gate = summary.gate
    record = metadata.load_run(metadata.open_store(str(cfg.metadata_path)), summary.run_id)
    return {
        "run_id": summary.run_id,
        "converted": summary.converted,
        "blessed": summary.blessed,
        "pushed_version": summary.pushed_version,
        "components": {
            r.node_id: round(r.seconds, 1)
            for r in sorted(record.nodes.values(), key=lambda r: r.start_ms)
        },
        "metrics": {
            name: {"value": e.value, "interval": [e.low, e.high]}
            for name, e in gate.metrics.items()
            if name in GATE_METRICS or name == "all_background_accuracy"
        },
        "failures": summary.failures,
        "sites": {
            site: {name: e.value for name, e in m.items() if name in ("iou", "facility_recall")}
            for site, m in gate.sites.items()
        },
    }


def markdown(result: dict) -> str:
    lines = [
        "# The whole default run (`tailings run`, preset `cpu`)",
        "",
        f"Made by `benchmarks/whole_run.py` on {result['date']} ({result['machine']['cpus']} "
        f"CPUs). Data: {result['data']} ({result['converted']} pairs converted). Split: the scene "
        "split of the eval sites; labels: site (the union of the site's masks); framing: each "
        "eval site predicted whole and blended, as `tailings predict` does. Intervals: TFMA's "
        "bootstrap. Load average (1 min) before and after each run says how quiet the machine "
        "was (2 cores: a quiet machine reads well under 2 at the start).",
        "",
        *([f"Note: {result['note']}", ""] if result.get("note") else []),
        "| seed | outcome | seconds | load before / after | IoU | pixel accuracy "
        "(all-background) | accuracy gain | facility recall | facility precision |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        m = r["metrics"]

        def v(name: str, fmt: str = ".3f", m: dict = m) -> str:
            e = m.get(name)
            if not e:
                return "-"
            lo, hi = e["interval"]
            ci = f" [{lo:{fmt}}, {hi:{fmt}}]" if lo is not None and hi is not None else ""
            return f"{e['value']:{fmt}}{ci}"

        outcome = "BLESSED" if r["blessed"] else "NOT BLESSED: " + "; ".join(r["failures"])
        bg = m.get("all_background_accuracy", {}).get("value")
        lines.append(
            f"| {r['seed']} | {outcome} | {r['seconds']:.0f} | "
            f"{' / '.join('-' if x is None else str(x) for x in r['load_average_1min'])} | "
            f"{v('iou')} | "
            f"{v('pixel_accuracy', '.4f')} ({bg:.4f}) | {v('accuracy_gain')} | "
            f"{v('facility_recall', '.2f')} | {v('facility_precision', '.2f')} |"
        )
    lines += ["", "Seconds per component:", ""]
    names = list(result["runs"][0]["components"]) if result["runs"] else []
    lines.append("| seed | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for r in result["runs"]:
        cells = [f"{r['components'].get(n, 0):.1f}" for n in names]
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[PRESET_SEED])
    parser.add_argument("--workdir", type=Path, help="output folders (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not (args.data / "img").is_dir():
        print(f"whole_run: no img/ folder in {args.data}", file=sys.stderr)
        return 1
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="whole-run-"))
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "data": str(args.data),
        "runs": [],
    }
    for seed in args.seeds:
        print(f"seed {seed} ...", file=sys.stderr, flush=True)
        r = run_seed(args.data, seed, workdir)
        result["runs"].append(r)
        result["converted"] = r["converted"]
        result["peak_rss_mb_largest_child"] = round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        )
        # Written after every seed: a long run stopped half-way keeps the seeds it finished.
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(result))
        print(f"seed {seed}: exit {r['exit_code']}, {r['seconds']:.0f} s", file=sys.stderr)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
