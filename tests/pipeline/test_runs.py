"""`tailings runs` says how each run ended: complete, failed at a component, killed, running.

Runs are recorded with ML Metadata's API in TFX's layout (tests.pipeline.test_metadata), not
run; the output folder's lock is the real one (`data.lock`), held by this test or by a process
that is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from data.lock import LOCK_NAME, output_lock
from pipeline import nodes
from pipeline.config import PipelineConfig
from pipeline.runs import FINAL_NODES, list_runs
from tests.conftest import PROJECT_ROOT
from tests.pipeline.test_metadata import StoreBuilder

FULL_RUN = (
    nodes.EXAMPLE_GEN,
    nodes.SCHEMA_GEN,
    nodes.BASELINE_RESOLVER,
    nodes.STATISTICS_GEN,
    nodes.EXAMPLE_VALIDATOR,
    nodes.VALIDATION_GATE,
    nodes.TRANSFORM,
    nodes.TRAINER,
    nodes.SCENE_EVALUATOR,
    nodes.TILE_EVALUATOR,
    nodes.PUSHER,
)


def upto(last: str, state: str) -> dict[str, str]:
    """The nodes of a run up to `last`, every earlier one COMPLETE and `last` in `state`."""
    states = {}
    for node in FULL_RUN:
        states[node] = "COMPLETE" if node != last else state
        if node == last:
            return states
    raise ValueError(last)


def states(lines: list[str]) -> dict[str, str]:
    """run id -> the state column (everything after the pushed column)."""
    start = lines[0].index("state")
    return {line.split()[0]: line[start:].strip() for line in lines[1:] if line[:1].strip()}


def test_the_final_nodes_are_the_pipelines_last_ones(tmp_path):
    # A run is "complete" once these finished: they must stay the pipeline's sinks.
    from pipeline.pipeline import create_pipeline
    from tests.fixtures.pipeline import tiny_config

    pipeline = create_pipeline(tiny_config(tmp_path, tmp_path / "data"))
    assert [c.id for c in pipeline.components] == list(FULL_RUN)
    assert {c.id for c in pipeline.components if not c.downstream_nodes} == set(FINAL_NODES)


def test_each_run_says_how_it_ended(tmp_path):
    cfg = PipelineConfig(output_dir=tmp_path / "outputs")
    cfg.output_dir.mkdir()
    builder = StoreBuilder(cfg.metadata_path)
    builder.run("complete", {node: "COMPLETE" for node in FULL_RUN})
    builder.run("cached", {node: "CACHED" for node in FULL_RUN})
    builder.run("failed", upto(nodes.TRAINER, "FAILED"))
    builder.run("anomalies", upto(nodes.VALIDATION_GATE, "FAILED"))
    builder.run("killed", upto(nodes.TRANSFORM, "RUNNING"))
    builder.run("between", upto(nodes.STATISTICS_GEN, "COMPLETE"))
    del builder

    lines = list_runs(cfg)

    assert lines[0].rstrip().endswith("state")
    assert states(lines) == {
        "complete": "complete",
        "cached": "complete",
        "failed": "failed at Trainer",
        "anomalies": "data anomalies",
        "killed": "killed at Transform",
        "between": "stopped after StatisticsGen",
    }


def test_the_run_of_a_live_lock_holder_is_running(tmp_path):
    cfg = PipelineConfig(output_dir=tmp_path / "outputs")
    cfg.output_dir.mkdir()
    builder = StoreBuilder(cfg.metadata_path)
    builder.run("older", upto(nodes.TRAINER, "RUNNING"))
    with output_lock(cfg.output_dir, "run"):  # this process: alive
        builder.run("current", upto(nodes.TRAINER, "RUNNING"))
        assert states(list_runs(cfg)) == {
            "current": "running Trainer",
            "older": "killed at Trainer",  # only the newest run can be the lock holder's
        }
    assert states(list_runs(cfg))["current"] == "killed at Trainer"


TAKE_LOCK_AND_WAIT = """
import sys
from data.lock import output_lock
with output_lock(sys.argv[1], "run"):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_the_run_of_a_killed_lock_holder_is_killed(tmp_path):
    cfg = PipelineConfig(output_dir=tmp_path / "outputs")
    cfg.output_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", TAKE_LOCK_AND_WAIT, str(cfg.output_dir)],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        builder = StoreBuilder(cfg.metadata_path)
        builder.run("run-1", upto(nodes.SCENE_EVALUATOR, "RUNNING"))
        del builder
        assert states(list_runs(cfg)) == {"run-1": "running Evaluator"}
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert (cfg.output_dir / LOCK_NAME).exists()  # stale: left for the next run to take over
    assert states(list_runs(cfg)) == {"run-1": "killed at Evaluator"}


def test_tailings_runs_on_a_damaged_store_is_one_line(tmp_path):
    output = tmp_path / "outputs"
    output.mkdir()
    (output / "metadata.sqlite").write_bytes(b"this is not a database" * 100)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    out = subprocess.run(
        [sys.executable, "-m", "tailings", "runs", "--output-dir", str(output)],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
    )
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("tailings runs:")]
    assert errors == [
        f"tailings runs: error: {output / 'metadata.sqlite'}: not an ML Metadata store: not an "
        "SQLite database; move it away to start an empty store (the runs it recorded are then "
        "forgotten)"
    ]
    assert "Traceback" not in out.stderr


def test_the_keys_and_metric_names_are_the_components_own():
    # pipeline.nodes spells them out so that `tailings runs` needs no TFX or TensorFlow.
    from components.example_gen import EXAMPLES_KEY, REPORT_KEY
    from components.facility_metrics import FACILITY_RECALL
    from components.metrics import IOU, PIXEL_ACCURACY

    assert (nodes.EXAMPLES, nodes.CONVERSION_REPORT) == (EXAMPLES_KEY, REPORT_KEY)
    assert (nodes.PIXEL_ACCURACY, nodes.IOU, nodes.FACILITY_RECALL) == (
        PIXEL_ACCURACY,
        IOU,
        FACILITY_RECALL,
    )


def test_the_store_is_opened_once_for_all_runs(tmp_path, monkeypatch):
    from pipeline import metadata

    cfg = PipelineConfig(output_dir=tmp_path / "outputs")
    cfg.output_dir.mkdir()
    builder = StoreBuilder(cfg.metadata_path)
    for i in range(3):
        builder.run(f"run-{i}", {node: "COMPLETE" for node in FULL_RUN})
    del builder
    opened = []
    real_open_store = metadata.open_store

    def open_store(*args, **kwargs):
        opened.append(args)
        return real_open_store(*args, **kwargs)

    monkeypatch.setattr(metadata, "open_store", open_store)

    assert len(list_runs(cfg)) == 1 + 3
    assert len(opened) == 1
