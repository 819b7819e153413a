"""Benchmark fleet prediction: `tailings predict --out-dir` in one process vs. on Beam.

    .venv/bin/python benchmarks/fleet.py --model DIR [--data DIR] [--repeats 2] [--scenes N]

Runs the real command, as a user would, over the study's images (`<data>/img`, 448 x 448 each,
one window per scene; `--scenes N` takes the first N), each variant as a whole process so
TensorFlow's import and the model's load count:

| variant | command |
|---|---|
| `in_process` | `tailings predict <scenes> --out-dir OUT --model DIR` |
| `beam_1` | the same with `--beam`: DirectRunner, one worker (in this process) |
| `beam_2_mp` | `--beam --workers 2`: two worker processes, each loading TensorFlow and the model |

Variants are interleaved (one of each per round). Every run's masks are compared with the
first in-process run's, byte for byte (the claim that both paths write the same files).
Wall time is a monotonic clock around the process; CPU is the children's user + system time
from `os.wait4`. The machine's load average before each run is recorded: the numbers are only
comparable with other numbers taken as quietly. Results: `results/fleet.json` and
`results/fleet.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _env import DEFAULT_DATA, RESULTS, ROOT  # sets the environment first

TAILINGS = [sys.executable, "-m", "tailings"]
VARIANTS = {
    "in_process": [],
    "beam_1": ["--beam"],
    "beam_2_mp": ["--beam", "--workers", "2"],
}


def _run(argv: list[str]) -> dict:
    load = os.getloadavg()[0]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    stderr = proc.stderr.read() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "exit": code,
        "load_before": round(load, 2),
        "stderr_tail": stderr.strip().splitlines()[-3:],
    }


def _masks(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.mask.tif"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a pushed SavedModel folder")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=0, help="first N scenes (0: all)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=RESULTS / "fleet.json")
    args = parser.parse_args()
    scenes = sorted((args.data / "img").glob("*.tif"))
    if args.scenes:
        scenes = scenes[: args.scenes]
    if not scenes:
        parser.error(f"no scenes in {args.data / 'img'}")
    variants = args.variants.split(",")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    reference: dict[str, bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as scratch:
        for round_ in range(args.repeats):
            for variant in variants:
                out = Path(scratch) / f"{variant}-{round_}"
                argv = [*TAILINGS, "predict", *map(str, scenes), "--out-dir", str(out)]
                argv += ["--model", str(args.model), *VARIANTS[variant]]
                run = _run(argv)
                masks = _masks(out)
                if reference is None and variant == "in_process":
                    reference = masks
                run["masks"] = len(masks)
                run["same_masks_as_in_process"] = reference is not None and masks == reference
                runs[variant].append(run)
                print(variant, round_, run, flush=True)
                shutil.rmtree(out, ignore_errors=True)
    summary = {
        v: {
            "wall_s_median": statistics.median(r["wall_s"] for r in rs),
            "cpu_s_median": statistics.median(r["cpu_s"] for r in rs),
            "s_per_scene": round(statistics.median(r["wall_s"] for r in rs) / len(scenes), 3),
            "all_same_masks": all(r["same_masks_as_in_process"] for r in rs),
        }
        for v, rs in runs.items()
    }
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": str(args.model),
        "scenes": len(scenes),
        "runs": runs,
        "summary": summary,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Fleet prediction: in one process vs. on Beam",
        "",
        f"{len(scenes)} scenes of the study (448 x 448, one window each), model `{args.model}`,"
        f" {os.cpu_count()} cores, {args.repeats} run(s) per variant, {result['when']}.",
        "Load average before each run is in the JSON.",
        "",
        "| variant | wall s (median) | CPU s (median) | s per scene | masks = in-process |",
        "|---|---|---|---|---|",
    ]
    for v, s in summary.items():
        lines.append(
            f"| `{v}` | {s['wall_s_median']:.1f} | {s['cpu_s_median']:.1f} | "
            f"{s['s_per_scene']:.2f} | {'yes' if s['all_same_masks'] else 'NO'} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
