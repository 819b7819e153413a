"""How fast does `tailings` answer? Whole processes, from exec to exit, as a user waits for them.

Times `tailings --help`, `tailings runs` on a pipeline output folder whose runs recorded what
`tailings runs` shows (`pipeline.runs.RunDigest`, written by `tailings run` since issue 17) and,
with `--old-output-dir`, on one written before (its runs are read through TFMA), a usage error
of every verb, a bad input path of every verb, and a run id the store does not know. Each
command runs `--warmup` times uncounted (the page cache holds the libraries afterwards, as on
any machine used twice), then `--runs` times; the median is the figure. Wall seconds and CPU
seconds (user + system of the process and its children, from the kernel's accounting of each
finished run) are recorded per run.

Run it (about 5 minutes on a quiet 2-core machine with --old-output-dir; each of its runs
loads TensorFlow). A folder whose runs recorded their digest: `tailings run` (or the tests'
tiny pipeline, `python -m tests.fixtures.run_tiny ROOT DATA`, then ROOT/outputs):

    .venv/bin/python benchmarks/startup.py --output-dir NEW_RUNS --old-output-dir /work/runs/a
    # another checkout (e.g. a `git worktree` of an older commit), same interpreter:
    .venv/bin/python benchmarks/startup.py --checkout /work/scratch/startup-before \\
        --label before --no-write --json /tmp/before.json --output-dir NEW_RUNS

It writes results/startup.json (every run, machine load before and after, versions, how many
runs of each store carry a digest) and results/startup.md (the table), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _env  # noqa: F401 - first: the environment TensorFlow reads
from _env import RESULTS, ROOT

# (name, argv after `tailings`, expected exit code). {missing} is a path that does not exist,
# {tmp} a fresh folder, {runs} --output-dir (runs with digests), {old_runs} --old-output-dir.
COMMANDS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("help", ("--help",), 0),
    ("runs", ("runs", "--output-dir", "{runs}"), 0),
    ("runs: store without digests", ("runs", "--output-dir", "{old_runs}"), 0),
    # usage errors (argparse, exit 2)
    ("usage: convert", ("convert", "--bogus"), 2),
    ("usage: fetch-data", ("fetch-data", "--bogus"), 2),
    ("usage: run", ("run", "--bogus"), 2),
    ("usage: runs", ("runs", "--bogus"), 2),
    ("usage: schema infer", ("schema", "infer", "--bogus"), 2),
    ("usage: stats", ("stats", "--bogus"), 2),
    ("usage: report", ("report", "--bogus"), 2),
    ("usage: serve", ("serve", "--bogus"), 2),
    ("usage: predict", ("predict", "--bogus"), 2),
    ("usage: labels review", ("labels", "review", "--bogus"), 2),
    # a bad input path (exit 1, one line)
    (
        "bad path: convert",
        ("convert", "--images", "{missing}", "--masks", "{missing}", "--output", "{tmp}/out"),
        1,
    ),
    ("bad path: fetch-data", ("fetch-data", "--source", "{missing}", "--dest", "{tmp}/d"), 1),
    ("bad path: run", ("run", "--data", "{missing}", "--output-dir", "{tmp}/out"), 1),
    ("bad path: runs", ("runs", "--output-dir", "{missing}"), 1),
    (
        "bad path: schema infer",
        ("schema", "infer", "--examples", "{missing}", "--out", "{tmp}/draft.pbtxt"),
        1,
    ),
    ("bad path: stats", ("stats", "--examples", "{missing}"), 1),
    ("bad path: report", ("report", "--output-dir", "{missing}", "--html", "{tmp}/r.html"), 1),
    ("bad path: serve", ("serve", "--model-config", "{missing}/models.config"), 1),
    ("bad path: predict", ("predict", "{missing}/scene.tif", "--out", "{tmp}/mask.tif"), 1),
    ("bad path: labels review", ("labels", "review", "--data", "{missing}"), 1),
    # a run id the store does not know (exit 1, one line)
    ("unknown run: stats", ("stats", "--run", "nope", "--output-dir", "{runs}"), 1),
    (
        "unknown run: report",
        ("report", "--run", "nope", "--html", "{tmp}/r.html", "--output-dir", "{runs}"),
        1,
    ),
)


def run_once(argv: list[str], cwd: Path, env: dict[str, str]) -> dict:
    """One whole process: wall seconds, CPU seconds (with its children), exit code, stderr."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return {
        "wall_s": round(wall, 4),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 4),
        "exit": proc.returncode,
        "stderr_lines": len(stderr.strip().splitlines()),
        "last_line": (stderr.strip().splitlines() or [""])[-1][:200],
    }


def measure(args: argparse.Namespace) -> dict:
    checkout = Path(args.checkout).resolve()
    env = {**os.environ, "PYTHONPATH": str(checkout), "TF_USE_LEGACY_KERAS": "1"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell; _env set it for this process
    env.pop("PYTHONWARNINGS", None)
    names = set(args.only.split(",")) if args.only else None
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        fill = {
            "missing": f"{tmp}/missing",
            "tmp": tmp,
            "runs": str(args.output_dir),
            "old_runs": str(args.old_output_dir),
        }
        for name, argv, expected in COMMANDS:
            if names and name not in names:
                continue
            if "{old_runs}" in argv and args.old_output_dir is None:
                continue
            full = [args.python, "-m", "tailings", *(a.format(**fill) for a in argv)]
            runs = [run_once(full, checkout, env) for _ in range(args.warmup + args.runs)]
            counted = runs[args.warmup :]
            row = {
                "name": name,
                "argv": ["tailings", *argv],
                "expected_exit": expected,
                "median_wall_s": round(statistics.median(r["wall_s"] for r in counted), 3),
                "min_wall_s": round(min(r["wall_s"] for r in counted), 3),
                "max_wall_s": round(max(r["wall_s"] for r in counted), 3),
                "median_cpu_s": round(statistics.median(r["cpu_s"] for r in counted), 3),
                "exits": sorted({r["exit"] for r in counted}),
                "stderr_lines": max(r["stderr_lines"] for r in counted),
                "last_line": counted[-1]["last_line"],
                "runs": counted,
            }
            rows.append(row)
            print(
                f"{name:<26} median {row['median_wall_s']:7.2f} s wall "
                f"{row['median_cpu_s']:7.2f} s CPU  exit {row['exits']}  "
                f"{row['last_line'][:70]}",
                flush=True,
            )
    return {
        "label": args.label,
        "checkout": str(checkout),
        "commit": _git(checkout, "rev-parse", "HEAD"),
        "dirty": bool(_git(checkout, "status", "--porcelain", "--untracked-files=no")),
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_1_5_15_before": [round(x, 2) for x in load_before],
            "load_avg_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "warmup": args.warmup,
            "runs": args.runs,
            "output_dir": str(args.output_dir),
            "old_output_dir": str(args.old_output_dir) if args.old_output_dir else None,
        },
        "stores": {
            str(d): digests(d) for d in (args.output_dir, args.old_output_dir) if d is not None
        },
        "commands": rows,
    }


def digests(output_dir: Path) -> dict[str, int]:
    """How many of the store's runs carry the digest `tailings runs` reads (the others are
    read through TFMA), with ML Metadata alone."""
    from pipeline import metadata, nodes

    store = metadata.open_store(str(output_dir / "metadata.sqlite"))
    ids = metadata.run_ids(store)
    recorded = [
        i for i in ids if nodes.RUN_SUMMARY_PROPERTY in metadata.load_run(store, i).properties
    ]
    return {"runs": len(ids), "with_digest": len(recorded)}


def _git(where: Path, *argv: str) -> str:
    done = subprocess.run(["git", *argv], cwd=where, capture_output=True, text=True)
    return done.stdout.strip()


def table(results: list[dict]) -> list[str]:
    """Markdown: one row per command; wall, CPU and stderr lines per measured checkout."""
    labels = [r["label"] for r in results]
    head = "| command | exit | " + " | ".join(
        f"{x}: wall s | {x}: CPU s | {x}: stderr lines" for x in labels
    )
    lines = [head + " |", "|---|---|" + "---:|---:|---:|" * len(labels)]
    by_name = [{row["name"]: row for row in r["commands"]} for r in results]
    for name, _, expected in COMMANDS:
        rows = [b.get(name) for b in by_name]
        if not any(rows):
            continue
        cells = [
            f"{row['median_wall_s']:.2f} | {row['median_cpu_s']:.2f} | {row['stderr_lines']}"
            if row
            else "- | - | -"
            for row in rows
        ]
        lines.append(f"| `{name}` | {expected} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-dir",
        type=Path,
        required=True,
        help="a pipeline output folder whose runs recorded their digest (a recent `tailings run`)",
    )
    parser.add_argument(
        "--old-output-dir",
        type=Path,
        default=None,
        help="also time `tailings runs` on a folder written before runs recorded a digest",
    )
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the code to time")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--label", default="after")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated command names")
    parser.add_argument(
        "--compare", type=Path, default=None, help="a JSON written with --json, shown first"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write this run here")
    parser.add_argument("--no-write", action="store_true", help="do not write results/")
    args = parser.parse_args()
    folders = (("--output-dir", args.output_dir), ("--old-output-dir", args.old_output_dir))
    for flag, folder in folders:
        if folder is not None and not (folder / "metadata.sqlite").is_file():
            parser.error(f"{flag} {folder}: no metadata.sqlite (a pipeline run's)")

    result = measure(args)
    results = [result]
    if args.compare:
        results.insert(0, json.loads(args.compare.read_text())["results"][-1])
    lines = table(results)
    print("\n".join(lines))
    doc = {"results": results}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "startup.json").write_text(json.dumps(doc, indent=1) + "\n")
        loads = ", ".join(
            f"{r['label']}: {r['machine']['load_avg_1_5_15_before']} -> "
            f"{r['machine']['load_avg_1_5_15_after']}"
            for r in results
        )
        md = [
            "# `tailings` start-up: whole processes, median of "
            f"{result['settings']['runs']} runs after {result['settings']['warmup']} warm-up",
            "",
            f"Measured {result['when_utc']} on {result['machine']['cpus']} cores "
            f"({result['machine']['platform']}); load average (1, 5, 15 min) {loads}. "
            f"`runs` reads {result['settings']['output_dir']}, `runs: store without digests` "
            f"{result['settings']['old_output_dir']} ({result['stores']}). "
            "Made by `benchmarks/startup.py`; every run is in startup.json.",
            "",
            *lines,
            "",
        ]
        (RESULTS / "startup.md").write_text("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
