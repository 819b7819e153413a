"""The runner's terminal while the pipeline runs (`pipeline.runner._ComponentProgress`): the
components' progress lines relayed from their file to the terminal and the run's log, and the
Evaluators' start lines and heartbeats. No pipeline runs here (tests/pipeline/test_pipeline.py
checks the epoch lines of a real run); executions are stand-ins for ML Metadata's."""

from __future__ import annotations

import logging
import os
import re
import time
from types import SimpleNamespace

import pytest

from components import progress
from pipeline import metadata, nodes, runner


@pytest.fixture
def said() -> list[str]:
    return []


def _watcher(tmp_path, said, **kwargs) -> runner._ComponentProgress:
    return runner._ComponentProgress(
        tmp_path / "no-store.sqlite", said.append, tmp_path / "run.progress", **kwargs
    )


def test_progress_lines_reach_the_terminal_indented_and_the_log_once_each(
    tmp_path, said, monkeypatch, caplog
):
    watcher = _watcher(tmp_path, said)
    watcher.poll()  # no file yet: nothing to say
    assert said == []
    monkeypatch.setenv(progress.PROGRESS_FILE_ENV, str(tmp_path / "run.progress"))
    progress.emit("Trainer epoch 1/2: loss 0.500, val IoU 0.100, 3 s/epoch, ETA 3 s")
    with open(tmp_path / "run.progress", "a") as f:
        f.write("Trainer epoch 2/2: loss 0.4")  # still being written
    with caplog.at_level(logging.INFO, logger=runner.__name__):
        watcher.poll()
        watcher.poll()
        assert said == ["  Trainer epoch 1/2: loss 0.500, val IoU 0.100, 3 s/epoch, ETA 3 s"]
        with open(tmp_path / "run.progress", "a") as f:
            f.write("00, val IoU 0.200, 3 s/epoch, ETA 0 s\n")
        watcher.poll()
    assert said[1:] == ["  Trainer epoch 2/2: loss 0.400, val IoU 0.200, 3 s/epoch, ETA 0 s"]
    logged = [r.getMessage() for r in caplog.records if r.name == runner.__name__]
    assert logged == [line.strip() for line in said]


def _execution(id_: int, node: str, state: str, running_for: float, took: float = 0.0):
    created = (time.time() - running_for) * 1000
    return SimpleNamespace(
        id=id_,
        node=node,
        last_known_state=metadata.STATES.Value(state),
        create_time_since_epoch=created,
        last_update_time_since_epoch=created + took * 1000,
    )


def test_evaluators_say_what_they_do_and_about_every_minute_for_how_long(
    tmp_path, said, monkeypatch
):
    monkeypatch.setattr(metadata, "node_id", lambda _store, execution: execution.node)
    watcher = _watcher(tmp_path, said)
    evaluator = _execution(1, nodes.SCENE_EVALUATOR, "RUNNING", running_for=30)
    trainer = _execution(2, nodes.TRAINER, "RUNNING", running_for=500)
    for execution in (evaluator, trainer):
        watcher._report(None, execution)
    assert said == [
        f"> {nodes.SCENE_EVALUATOR} ... ({nodes.ACTIVITIES[nodes.SCENE_EVALUATOR]})",
        f"> {nodes.TRAINER} ...",  # its epochs say how it goes: no heartbeat
    ]
    evaluator.create_time_since_epoch -= 95_000  # 125 s so far
    for _ in range(3):
        for execution in (evaluator, trainer):
            watcher._report(None, execution)
    [heartbeat] = said[2:]  # once, though polled three times
    assert re.fullmatch(f"  {nodes.SCENE_EVALUATOR} still running: 2 min 0[56] s so far", heartbeat)
    evaluator.create_time_since_epoch -= 60_000
    evaluator.last_known_state = metadata.STATES.Value("COMPLETE")
    evaluator.last_update_time_since_epoch = evaluator.create_time_since_epoch + 190_000
    watcher._report(None, evaluator)
    watcher._report(None, evaluator)
    assert said[3:] == [f"< {nodes.SCENE_EVALUATOR} done in 190.0 s"]


def test_the_run_names_the_progress_file_to_its_components_only_while_it_runs(tmp_path):
    path = tmp_path / "run.progress"
    before = os.environ.get(progress.PROGRESS_FILE_ENV)
    with runner._progress_to(path):
        assert os.environ[progress.PROGRESS_FILE_ENV] == str(path)
    assert os.environ.get(progress.PROGRESS_FILE_ENV) == before
