"""Fault injection: `tailings run`'s pipeline killed with SIGKILL, by pid, at randomised points.

The tiny pipeline runs as a process of its own (`tests.fixtures.run_tiny`, what `tailings run`
runs). It is killed twice, each time once a randomly chosen component has started and a random
delay has passed: first while the run is far from its end (ExampleGen to Trainer), so it surely
leaves its lock behind, then at a later component (up to the Pusher, or after it, while the
process sums up). Then it runs to its end, in this process (`pipeline.runner.run_pipeline`, as
`run_tiny` calls it: a run nobody kills needs no process of its own, and this one has TFX
loaded already). The run after the first kill must take over the dead run's lock, and the last
run must leave exactly one complete numeric version, no temporary folder or lock, a readable
metadata store that lists the killed runs as killed and the last run as its own, complete, and
the metrics of an uninterrupted run. (TFX's cache makes each run resume after the components
the killed ones finished, so each kill costs a process start-up, about 15-30 s, more than the
few seconds of the component it interrupts: a third kill would prove nothing the two do not.)
(Distinct models racing into one serving folder, and the temporary folder of a push killed
mid-copy, are covered without a pipeline in `tests/components/test_pusher.py`.)

The points are drawn from a seed printed with every failure; `TAILINGS_KILL_SEED=<seed>`
replays them.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from components.pusher import PUSH_RECORD
from data.lock import LOCK_NAME
from pipeline import nodes
from pipeline.runner import run_pipeline
from pipeline.runs import list_runs
from pipeline.summary import EXIT_BLESSED, RunSummary, summarize_run
from tests.conftest import PROJECT_ROOT
from tests.fixtures.geotiffs import make_pairs
from tests.fixtures.pipeline import TILE, tiny_config

pytestmark = pytest.mark.slow

# The components a kill may interrupt, in the order the pipeline runs them.
KILL_POINTS = (
    nodes.EXAMPLE_GEN,
    nodes.STATISTICS_GEN,
    nodes.TRANSFORM,
    nodes.TRAINER,
    nodes.SCENE_PREDICTOR,
    nodes.TILE_EVALUATOR,
    nodes.SCENE_EVALUATOR,
    nodes.PUSHER,
)
# Where the first kill lands: a run killed here is far from its end (the Trainer alone takes
# longer than MAX_DELAY_S), so it leaves a lock to take over and a run recorded as killed.
FIRST_KILL_POINTS = KILL_POINTS[: KILL_POINTS.index(nodes.TRAINER) + 1]
MAX_DELAY_S = 3.0  # after the component's start line; the poll that prints it runs every 1 s
ATTEMPT_TIMEOUT_S = 900


@dataclass
class Attempt:
    pid: int
    returncode: int
    killed_at: str | None  # the component it was killed in, or None if it ran to its end
    stdout: str
    stderr: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str | None:
        """The run's id, from its first progress line (`run <id>`, on stderr: a killed run
        prints no summary on stdout)."""
        first = next((line for line in self.stderr if line.startswith("run ")), "")
        return first.split()[1] if first else None


def attempt(root: Path, data: Path, kill: tuple[str, float] | None, *extra: str) -> Attempt:
    """Run the tiny pipeline; with `kill` = (component, delay), SIGKILL its pid `delay` seconds
    after the component's start line (if it is still running then)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.run_tiny", str(root), str(data), *extra],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: orphans are cleaned up below
    )
    started = threading.Event()
    lines: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if kill and line.startswith(f"> {kill[0]} ..."):
                started.set()

    out: list[str] = []
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    # stdout has its own reader: `communicate()` would read stderr too, racing `read` for its
    # lines (a run's first lines, such as "took over the lock", were lost that way).
    out_reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    out_reader.start()
    killed_at = None
    try:
        if kill is not None:
            deadline = time.monotonic() + ATTEMPT_TIMEOUT_S
            while not started.wait(0.2) and proc.poll() is None:
                assert time.monotonic() < deadline, "\n".join(lines[-20:])
            if started.is_set():
                time.sleep(kill[1])
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_at = kill[0]
        proc.wait(timeout=ATTEMPT_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        try:  # a killed parent leaves its children (pip, Beam) in the group: end them too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reader.join(timeout=10)
    out_reader.join(timeout=10)
    return Attempt(proc.pid, proc.returncode, killed_at, "".join(out), lines)


def complete_versions(push_dir: Path) -> dict[str, str]:
    """Numeric version -> fingerprint of the model in it; fails on anything incomplete."""
    versions = {}
    for entry in sorted(push_dir.iterdir()):
        assert entry.name.isdigit(), f"left in {push_dir}: {entry.name}"
        assert (entry / "saved_model.pb").is_file(), f"version {entry.name} is incomplete"
        versions[entry.name] = json.loads((entry / PUSH_RECORD).read_text())["fingerprint"]
    return versions


def check_output(cfg, final: RunSummary, said: list[str], killed: list[Attempt], context: str):
    assert final.exit_code == EXIT_BLESSED, (context, final.lines(), said[-20:])
    pushed = complete_versions(cfg.push_dir)
    assert len(pushed) == 1, (context, "one complete version of the one model", pushed)
    leftovers = [p.name for p in cfg.output_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == [], (context, "a lock or temporary file outlived its run", leftovers)
    lines = list_runs(cfg)  # the store is readable
    table = "\n".join(lines)
    # The summary is of the run this call started (its first line names it), and it is complete.
    started = next((line for line in said if line.startswith("run ")), None)
    assert started == f"run {final.run_id}", (context, said[:3])
    assert _row(lines, final.run_id).endswith(" complete"), (context, table)
    for k in killed:
        # A component had started, so the run is in the store. Its process is gone: never
        # "running"; "complete" only if the kill came after the last component finished, while
        # the process summed up (not so for the first kill, far from the end).
        assert k.run_id, (context, k.stderr[:5])
        row = _row(lines, k.run_id)
        ended = r"(killed at|stopped after) \w+$" + ("" if k is killed[0] else "|complete$")
        assert re.search(ended, row), (context, row)
    return summarize_run(cfg, 0.0, final.run_id)


def _row(lines: list[str], run_id: str) -> str:
    return next((line for line in lines if line.startswith(run_id)), f"no row for {run_id}")


def test_killed_runs_recover_with_one_version_per_model_and_the_same_metrics(
    pipeline_run, tmp_path
):
    seed = int(os.environ.get("TAILINGS_KILL_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    context = f"kill seed {seed} (replay: TAILINGS_KILL_SEED={seed})"
    _, reference = pipeline_run  # the same tiny run, never interrupted
    data = tmp_path / "data"
    make_pairs(data, 14, size=(TILE, TILE))
    cfg = tiny_config(tmp_path, data)

    # Killed twice, the second time at a later component, then run to its end.
    first = rng.randrange(len(FIRST_KILL_POINTS))
    points = [first, rng.randrange(first + 1, len(KILL_POINTS))]
    kills: list[Attempt] = []
    left_lock: Attempt | None = None  # the killed run whose lock the next run must take over
    for i in points:
        kill = (KILL_POINTS[i], rng.uniform(0, MAX_DELAY_S))
        run = attempt(tmp_path, data, kill)
        if left_lock is not None:
            took_over = f"took over the lock of pid {left_lock.pid}"
            assert any(took_over in line for line in run.stderr), (context, run.stderr[:5])
        kills.append(run)
        context += f"; killed in {run.killed_at}"
        left_lock = run if (cfg.output_dir / LOCK_NAME).exists() else None
        if len(kills) == 1:
            # Far from the run's end: killed for sure, its lock left to take over. (A later
            # kill may come after the run released its lock while summing up, or even after
            # it ended: a run that was cached up to the Pusher can end within MAX_DELAY_S.)
            assert run.killed_at == kill[0] and left_lock is run, (context, run.stderr[-20:])
    said: list[str] = []
    final = run_pipeline(cfg, say=said.append)
    if left_lock is not None:
        took_over = f"took over the lock of pid {left_lock.pid}"
        assert any(took_over in line for line in said), (context, said[:5])
    summary = check_output(cfg, final, said, [k for k in kills if k.killed_at], context)
    assert summary.pushed_version == "1"
    for name, value in reference.metrics.items():
        assert summary.metrics[name] == pytest.approx(value, abs=1e-6), (context, name)
