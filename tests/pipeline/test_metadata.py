"""A damaged `metadata.sqlite` is one `MetadataStoreError` line naming the file, never ML
Metadata's SQL traceback; a 0-byte store holds no runs; a killed writer's journal is rolled back.

Stores are built with ML Metadata's own API as TFX lays them out (pipeline, run and node
contexts; executions with their states), then damaged on disk.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd

from data.errors import TailingsError
from pipeline import metadata
from pipeline.config import PIPELINE_NAME

READWRITE = mlmd.SqliteMetadataSourceConfig.READWRITE_OPENCREATE


class StoreBuilder:
    """Runs recorded the way TFX's LocalDagRunner records them, without running anything."""

    def __init__(self, path: Path) -> None:
        config = mlmd.ConnectionConfig()
        config.sqlite.filename_uri = str(path)
        config.sqlite.connection_mode = READWRITE
        self.path = path
        self.store = metadata_store.MetadataStore(config)
        self._types = {
            name: self.store.put_context_type(mlmd.ContextType(name=name))
            for name in ("pipeline", metadata.RUN_CONTEXT, metadata.NODE_CONTEXT)
        }
        self.pipeline = self._context("pipeline", PIPELINE_NAME)
        self._nodes: dict[str, mlmd.Context] = {}

    def _context(self, kind: str, name: str) -> mlmd.Context:
        context = mlmd.Context(type_id=self._types[kind], name=name)
        context.id = self.store.put_contexts([context])[0]
        return context

    def run(
        self,
        run_id: str,
        states: dict[str, str],
        outputs: dict[str, dict[str, mlmd.Artifact]] | None = None,
    ) -> str:
        """A run whose nodes (in order) ended in the given states (`metadata.STATES` names);
        `outputs` gives nodes output artifacts by key (type "test.<key>"), as TFX publishes
        them when a component completes."""
        run = self._context(metadata.RUN_CONTEXT, run_id)
        self.store.put_parent_contexts(
            [mlmd.ParentContext(child_id=run.id, parent_id=self.pipeline.id)]
        )
        for node, state in states.items():
            if node not in self._nodes:
                self._nodes[node] = self._context(metadata.NODE_CONTEXT, f"{PIPELINE_NAME}.{node}")
            type_id = self.store.put_execution_type(mlmd.ExecutionType(name=f"test.{node}"))
            execution = mlmd.Execution(
                type_id=type_id, last_known_state=metadata.STATES.Value(state)
            )
            published = []
            for key, artifact in (outputs or {}).get(node, {}).items():
                artifact.type_id = self.store.put_artifact_type(
                    mlmd.ArtifactType(name=f"test.{key}")
                )
                event = mlmd.Event(type=mlmd.Event.OUTPUT)
                event.path.steps.add().key = key
                event.path.steps.add().index = 0
                published.append((artifact, event))
            self.store.put_execution(execution, published, [self.pipeline, run, self._nodes[node]])
        return run_id


def make_store(path: Path) -> Path:
    builder = StoreBuilder(path)
    builder.run("run-1", {"ExampleGen": "COMPLETE", "Trainer": "COMPLETE"})
    del builder  # close ML Metadata's connection
    return path


@pytest.fixture
def store_bytes(tmp_path_factory) -> bytes:
    return make_store(tmp_path_factory.mktemp("real") / "metadata.sqlite").read_bytes()


def one_line_naming(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    assert isinstance(err.value, TailingsError)
    return message


def test_a_healthy_store_opens_and_checks(tmp_path, store_bytes):
    path = tmp_path / "metadata.sqlite"
    path.write_bytes(store_bytes)
    metadata.check_store(path)
    assert metadata.run_ids(metadata.open_store(str(path), verify=True)) == ["run-1"]


def test_a_truncated_store_is_one_line(tmp_path, store_bytes):
    path = tmp_path / "metadata.sqlite"
    path.write_bytes(store_bytes[: len(store_bytes) // 2])
    for call in (metadata.open_store, metadata.check_store):
        with pytest.raises(metadata.MetadataStoreError) as err:
            call(path)
        message = one_line_naming(err, path)
        assert "truncated" in message and f"{len(store_bytes) // 2} bytes" in message


def test_a_store_cut_inside_its_header_is_one_line(tmp_path, store_bytes):
    path = tmp_path / "metadata.sqlite"
    path.write_bytes(store_bytes[:10])
    with pytest.raises(metadata.MetadataStoreError) as err:
        metadata.open_store(path)
    assert "truncated to 10 bytes" in one_line_naming(err, path)


def test_garbage_is_one_line(tmp_path):
    path = tmp_path / "metadata.sqlite"
    path.write_bytes(bytes(range(256)) * 40)
    for call in (metadata.open_store, metadata.check_store):
        with pytest.raises(metadata.MetadataStoreError) as err:
            call(path)
        assert "not an SQLite database" in one_line_naming(err, path)


def test_damaged_pages_inside_a_whole_file_are_one_line(tmp_path, store_bytes):
    # Right size, right header, garbage in the pages of the tables: only SQLite's checks see it.
    page = int.from_bytes(store_bytes[16:18], "big")
    damaged = bytearray(store_bytes)
    for start in range(page, len(damaged), 2 * page):
        damaged[start : start + page] = b"\xa5" * page
    path = tmp_path / "metadata.sqlite"
    path.write_bytes(bytes(damaged))
    for call in (metadata.open_store, metadata.check_store):
        with pytest.raises(metadata.MetadataStoreError) as err:
            call(path)
        assert "damaged" in one_line_naming(err, path)


def test_another_programs_sqlite_file_is_not_a_store(tmp_path):
    import sqlite3

    path = tmp_path / "metadata.sqlite"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE notes (text)")
    con.close()
    for call in (metadata.open_store, metadata.check_store):
        with pytest.raises(metadata.MetadataStoreError) as err:
            call(path)
        assert "not an ML Metadata store" in one_line_naming(err, path)


def test_an_empty_file_holds_no_runs(tmp_path):
    # What a run killed while SQLite was creating the store leaves: nothing to read, no error.
    path = tmp_path / "metadata.sqlite"
    path.touch()
    store = metadata.open_store(str(path), verify=True)
    assert metadata.run_ids(store) == []
    assert metadata.load_run(store) is None
    metadata.check_store(path)  # `tailings run` makes a store in it
    assert path.stat().st_size == 0  # reading did not write


def test_a_missing_store_passes_the_run_check_but_cannot_be_opened(tmp_path):
    path = tmp_path / "metadata.sqlite"
    metadata.check_store(path)
    with pytest.raises(metadata.MetadataStoreError) as err:
        metadata.open_store(path)
    assert "no such file" in one_line_naming(err, path)


KILLED_WRITER = """
import os, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA cache_size=1")  # spill the transaction into the file before it commits
con.execute("BEGIN")
con.execute("DELETE FROM Context")
con.execute("CREATE TABLE half_written (x)")
for _ in range(500):
    con.execute("INSERT INTO half_written VALUES (randomblob(4000))")
os.kill(os.getpid(), 9)
"""


def test_the_unfinished_write_of_a_killed_process_is_rolled_back(tmp_path, store_bytes):
    path = tmp_path / "metadata.sqlite"
    path.write_bytes(store_bytes)
    writer = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)])
    assert writer.returncode == -9
    journal = Path(f"{path}-journal")
    assert journal.stat().st_size > 0  # a hot journal: read-only access alone cannot read past it

    store = metadata.open_store(str(path), verify=True)

    assert metadata.run_ids(store) == ["run-1"]  # the half-done DELETE was undone
    assert not journal.exists() or journal.stat().st_size == 0
    metadata.check_store(path)


def test_a_runs_property_is_recorded_beside_what_tfx_wrote(tmp_path):
    path = make_store(tmp_path / "metadata.sqlite")
    before = metadata.load_run(metadata.open_store(str(path)), "run-1")

    metadata.record_run_property(path, "run-1", "note", '{"a": 1}')

    run = metadata.load_run(metadata.open_store(str(path)), "run-1")
    assert run.properties == {"note": '{"a": 1}'}
    assert (run.started_ms, run.nodes.keys()) == (before.started_ms, before.nodes.keys())
    with pytest.raises(metadata.MetadataStoreError) as err:
        metadata.record_run_property(path, "run-2", "note", "{}")
    assert "no run 'run-2'" in one_line_naming(err, path)


def test_a_run_that_is_not_there_is_one_line(tmp_path):
    path = tmp_path / "metadata.sqlite"
    with pytest.raises(metadata.RunNotFound, match=re.escape(f"no metadata store at {path}; ")):
        metadata.open_run(path, "run-1")
    make_store(path)
    assert metadata.open_run(path, None).run_id == "run-1"
    assert metadata.open_run(path, "latest").run_id == "run-1"
    with pytest.raises(metadata.RunNotFound, match="^no run 'run-9'; known runs: run-1$"):
        metadata.open_run(path, "run-9")
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    no_runs = f"^no runs recorded in {re.escape(str(empty))}$"
    with pytest.raises(metadata.RunNotFound, match=no_runs):
        metadata.open_run(empty, None)
