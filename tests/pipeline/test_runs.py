"""`tailings runs` says how each run ended: complete, failed at a component, killed, running;
and shows what a run recorded of itself when it ended (`RunDigest`), or, for a run without
that record, what its outputs hold.

Runs are recorded with ML Metadata's API in TFX's layout (tests.pipeline.test_metadata), not
run, except in the tests of the shared tiny `pipeline_run`; the output folder's lock is the
real one (`data.lock`), held by this test or by a process that is killed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd

from data.lock import LOCK_NAME, output_lock
from pipeline import metadata, nodes
from pipeline.config import PipelineConfig
from pipeline.evaluation import VALUE_GATE, Estimate, Gate
from pipeline.runs import FINAL_NODES, RunDigest, list_runs
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
    nodes.SCENE_PREDICTOR,
    nodes.TILE_EVALUATOR,
    nodes.SCENE_EVALUATOR,
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
    from components.scene_predictor import PREDICTIONS_KEY, SCHEMA_KEY, ScenePredictor

    assert (nodes.EXAMPLES, nodes.CONVERSION_REPORT) == (EXAMPLES_KEY, REPORT_KEY)
    assert (nodes.PREDICTIONS, nodes.PREDICTION_SCHEMA) == (PREDICTIONS_KEY, SCHEMA_KEY)
    assert set(ScenePredictor.SPEC_CLASS.OUTPUTS) == {PREDICTIONS_KEY, SCHEMA_KEY}
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


def test_a_digest_is_strict_json_and_reads_back_as_written():
    digest = RunDigest(
        converted=14,
        anomalies=("[train] band_mean: out of range",),
        blessed=False,
        pushed_version=None,
        metrics={
            nodes.SCENE_SPLIT: {
                nodes.IOU: Estimate(0.5831, 0.1417, 0.8949),
                nodes.FACILITY_RECALL: Estimate(1.0, math.nan, math.nan),  # TFMA gives these
            },
            nodes.EVAL_SPLIT: {nodes.IOU: Estimate(0.708)},  # no interval
        },
        gates={nodes.SCENE_SPLIT: (Gate(nodes.IOU, VALUE_GATE, 0.5, 0.5831, True),)},
    )
    text = digest.to_json()

    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    data = json.loads(text, parse_constant=refuse)
    assert data["format"] == nodes.RUN_SUMMARY_FORMAT
    back = RunDigest.from_json(text)
    assert back is not None and back.to_json() == text
    recall = back.metrics[nodes.SCENE_SPLIT][nodes.FACILITY_RECALL]
    assert str(recall) == "1.0000 [nan, nan]"  # as the run's summary prints it
    assert back.metrics[nodes.EVAL_SPLIT][nodes.IOU] == Estimate(0.708)
    assert back.gates[nodes.EVAL_SPLIT] == ()
    # Another format, or text that is not a digest: read as none (the outputs are read instead).
    other = json.dumps({**data, "format": nodes.RUN_SUMMARY_FORMAT + 1})
    for text in (other, "", "[]", '{"format": 1}'):
        assert RunDigest.from_json(text) is None, text


def _writable_store(path: Path) -> metadata_store.MetadataStore:
    config = mlmd.ConnectionConfig()
    config.sqlite.filename_uri = str(path)
    config.sqlite.connection_mode = mlmd.SqliteMetadataSourceConfig.READWRITE
    return metadata_store.MetadataStore(config)


@pytest.mark.slow
def test_a_finished_run_records_what_tailings_runs_shows(pipeline_run):
    cfg, summary = pipeline_run
    run = metadata.load_run(metadata.open_store(str(cfg.metadata_path)), summary.run_id)

    recorded = run.properties[nodes.RUN_SUMMARY_PROPERTY]

    assert recorded == RunDigest.of(summary).to_json()
    digest = RunDigest.from_json(recorded)
    assert digest.converted == 14 and digest.blessed and digest.pushed_version == "1"
    scene = summary.evaluations[nodes.SCENE_SPLIT]
    assert digest.metrics[nodes.SCENE_SPLIT][nodes.IOU] == scene.metrics[nodes.IOU]
    assert set(digest.metrics) == {nodes.SCENE_SPLIT, nodes.EVAL_SPLIT}
    assert digest.gates[nodes.SCENE_SPLIT] == tuple(scene.gates)


@pytest.mark.slow
def test_runs_recorded_without_a_digest_show_what_their_outputs_hold(pipeline_run, tmp_path):
    """A store written before runs recorded their digest: its runs are read from their outputs
    (TFMA's files), and the table is the same."""
    cfg, summary = pipeline_run
    old = PipelineConfig(output_dir=tmp_path / "outputs")
    old.output_dir.mkdir()
    shutil.copy(cfg.metadata_path, old.metadata_path)  # the artifacts stay where they are
    with_digests = list_runs(old)
    store = _writable_store(old.metadata_path)
    digest_only = [f"custom_properties.{nodes.RUN_SUMMARY_PROPERTY}"]
    stripped = []
    for context in store.get_contexts_by_type(metadata.RUN_CONTEXT):
        assert nodes.RUN_SUMMARY_PROPERTY in context.custom_properties, context.name
        bare = mlmd.Context(id=context.id, type_id=context.type_id, name=context.name)
        store.put_contexts([bare], field_mask_paths=digest_only)  # deletes it
        stripped.append(context.name)
    del store
    assert summary.run_id in stripped
    reader = metadata.open_store(str(old.metadata_path))
    assert not metadata.load_run(reader, summary.run_id).properties

    without = list_runs(old)

    assert without == with_digests
    row = next(line for line in without if line.startswith(summary.run_id))
    scene = summary.evaluations[nodes.SCENE_SPLIT]
    assert str(scene.metrics[nodes.IOU]) in row and " yes " in row, row


def test_the_runner_records_a_digest_or_says_in_one_line_why_not(tmp_path):
    from pipeline.runner import _record_digest
    from pipeline.summary import RunSummary

    cfg = PipelineConfig(output_dir=tmp_path / "outputs")
    cfg.output_dir.mkdir()
    builder = StoreBuilder(cfg.metadata_path)
    builder.run("run-1", upto(nodes.VALIDATION_GATE, "FAILED"))
    del builder
    said: list[str] = []
    stopped = RunSummary(run_id="run-1", seconds=9.0, converted=3, anomalies=["[train] x: y"])

    _record_digest(cfg, "run-1", stopped, said.append)
    _record_digest(cfg, "run-2", RunSummary(run_id="run-2", seconds=1.0), said.append)

    assert said == [
        f"{cfg.metadata_path}: no run 'run-2' to record {nodes.RUN_SUMMARY_PROPERTY} on "
        "(`tailings runs` reads this run's outputs instead)"
    ]
    [row] = list_runs(cfg)[1:]
    assert row.split()[3:] == ["3", "-", "-", "-", "-", "anomaly", "-", "data", "anomalies"]
