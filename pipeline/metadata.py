"""Read pipeline runs back from the ML Metadata store: which component produced what, when.

ML Metadata records every execution and artifact; these helpers turn it into "the outputs of
node X in run R", which the run summary, `tailings runs` and the reports need. One write: the
runner records on a finished run's context what `tailings runs` shows of it
(`record_run_property`), with ML Metadata's API.

The store is one SQLite file, `<output-dir>/metadata.sqlite`. A kill, a full disk or a bad copy
can leave it truncated or overwritten; ML Metadata's C++ layer then fails with a long message
quoting its SQL. `open_store` and `check_store` look at the file with the stdlib `sqlite3` first
and turn any damage into one `MetadataStoreError` line naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from data.errors import TailingsError
from pipeline.config import PIPELINE_NAME

RUN_CONTEXT = "pipeline_run"
NODE_CONTEXT = "node"
STATES = metadata_store_pb2.Execution.State


@dataclass
class NodeRun:
    node_id: str
    state: str
    start_ms: int
    end_ms: int
    outputs: dict[str, list[metadata_store_pb2.Artifact]] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return max(0, self.end_ms - self.start_ms) / 1000


@dataclass
class RunRecord:
    run_id: str
    started_ms: int
    nodes: dict[str, NodeRun]
    # The run context's own custom properties (what the runner recorded on it at the end).
    properties: dict[str, int | float | str] = field(default_factory=dict)

    def artifact(self, node_id: str, key: str) -> metadata_store_pb2.Artifact | None:
        node = self.nodes.get(node_id)
        found = node.outputs.get(key) if node else None
        return found[-1] if found else None


class MetadataStoreError(TailingsError):
    """The ML Metadata store cannot be read: one line naming the file and what is wrong."""


class RunNotFound(TailingsError):
    """No store, no runs in it, or no run with the id asked for: one line saying which."""


SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_HEADER_BYTES = 100
# Tables every ML Metadata schema version has; an SQLite file without them is another program's.
MLMD_TABLES = ("MLMDEnv", "Type", "Context", "Execution", "Artifact")
RESET_HINT = "move it away to start an empty store (the runs it recorded are then forgotten)"

log = logging.getLogger(__name__)


def open_store(
    sqlite_path: str | os.PathLike, verify: bool = False
) -> metadata_store.MetadataStore:
    """The store at `sqlite_path`, read-only; `MetadataStoreError` if it cannot be read.

    A 0-byte file is what a run killed while creating the store leaves (SQLite makes the file
    before it writes anything): it holds no runs, so it opens as an empty store and each caller
    says "no runs recorded" as for a new folder. The file is not touched: `tailings run` turns
    it into a real store. An unfinished write left by a killed run (`<file>-journal`) is rolled
    back first, as SQLite does for any writer (read-only access cannot otherwise read it).
    `verify` also runs SQLite's `quick_check`, which reads every page: callers that open the
    store once (`tailings runs`) afford it; the run's progress poll, every second, does not.
    """
    path = Path(sqlite_path)
    if _checked_size(path) == 0:
        return _empty_store()
    _roll_back_interrupted_write(path)
    if verify:
        problem = _content_problem(path)
        if problem:
            raise MetadataStoreError(f"{path}: {problem}")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    try:
        return metadata_store.MetadataStore(config)
    except Exception as err:  # noqa: BLE001 - ML Metadata raises RuntimeError or its own types
        problem, blank = _inspect_content(path)
        if blank:
            return _empty_store()  # read-only, ML Metadata cannot make its tables: none to read
        problem = problem or f"cannot open the metadata store: {_mlmd_reason(err)}"
        raise MetadataStoreError(f"{path}: {problem}") from None


def check_store(sqlite_path: str | os.PathLike) -> None:
    """Refuse a damaged store before a run starts, with one `MetadataStoreError` line.

    `tailings run` calls this before the pipeline: TFX would otherwise fail inside its first
    component with ML Metadata's SQL error, after the run was announced. A missing or 0-byte
    file passes (ML Metadata creates the store in it); an unfinished write of a killed run is
    rolled back; then SQLite's `quick_check` reads every page (milliseconds for a store of a few
    MB, once per run).
    """
    path = Path(sqlite_path)
    if not os.path.lexists(path):
        return
    if _checked_size(path) == 0:
        return
    _roll_back_interrupted_write(path)
    problem = _content_problem(path)
    if problem:
        raise MetadataStoreError(f"{path}: {problem}")


def _empty_store() -> metadata_store.MetadataStore:
    """An in-memory store with nothing in it (what a 0-byte file holds)."""
    config = metadata_store_pb2.ConnectionConfig()
    config.fake_database.SetInParent()
    return metadata_store.MetadataStore(config)


def _sqlite_uri(path: Path, mode: str) -> str:
    return f"file:{urllib.parse.quote(str(path))}?mode={mode}"


def _header_problem(path: Path) -> tuple[int, str | None]:
    """(file size, what is wrong with the SQLite header or size, or None)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        header = fh.read(SQLITE_HEADER_BYTES)
    if size == 0:
        return 0, None
    if not header.startswith(SQLITE_MAGIC):
        if len(header) < len(SQLITE_MAGIC) and SQLITE_MAGIC.startswith(header):
            return size, f"truncated to {size} bytes: shorter than an SQLite header"
        return size, "not an ML Metadata store: not an SQLite database"
    if len(header) < SQLITE_HEADER_BYTES:
        return size, f"truncated to {size} bytes: shorter than an SQLite header"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return size, f"damaged SQLite header (page size {page_size})"
    pages = int.from_bytes(header[28:32], "big")
    # The page count in the header is valid when the change counter matches "version valid for".
    if pages and header[24:28] == header[92:96]:
        if size < pages * page_size:
            return size, f"truncated: {size} bytes where its header says {pages * page_size}"
    elif size % page_size:
        return size, f"truncated: {size} bytes is not a whole number of {page_size}-byte pages"
    return size, None


def _checked_size(path: Path) -> int:
    """The store's size after checking its header and size; raises `MetadataStoreError`."""
    try:
        size, problem = _header_problem(path)
        if problem and problem.startswith("truncated") and size >= SQLITE_HEADER_BYTES:
            # A run committing right now writes page 1 (the new page count) before the pages
            # that grow the file: look again while holding SQLite's shared lock, which waits
            # for the commit to end. A really truncated file says the same the second time.
            with _shared_lock(path):
                size, problem = _header_problem(path)
    except FileNotFoundError:
        what = "a symbolic link to a missing file" if path.is_symlink() else "no such file"
        raise MetadataStoreError(f"{path}: {what}; no metadata store there") from None
    except OSError as err:
        raise MetadataStoreError(
            f"{path}: cannot read the metadata store: {err.strerror}"
        ) from None
    if problem:
        raise MetadataStoreError(f"{path}: {problem}; {RESET_HINT}")
    return size


@contextlib.contextmanager
def _shared_lock(path: Path):
    """Hold a read transaction on the SQLite file (best effort: damage may refuse it)."""
    con = sqlite3.connect(_sqlite_uri(path, "ro"), uri=True, timeout=10)
    try:
        with contextlib.suppress(sqlite3.Error):
            con.execute("BEGIN")
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        yield
    finally:
        con.close()


def _roll_back_interrupted_write(path: Path) -> None:
    """Roll back the write a killed run left half done, so read-only access can read the store.

    SQLite journals each write in `<file>-journal`; if the writer dies, the journal stays
    ("hot") and only a connection allowed to write may roll it back, which SQLite does on its
    first read. SQLite itself decides whether the journal is hot: it is not while a live run
    holds its write lock, so a running pipeline's write is never undone.
    """
    journal = Path(f"{path}-journal")
    try:
        if journal.stat().st_size == 0:
            return
    except FileNotFoundError:
        return
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise MetadataStoreError(
            f"{path}: a stopped run left an unfinished write in {journal.name}; rolling it "
            f"back needs write access to {path.parent}"
        )
    con = sqlite3.connect(_sqlite_uri(path, "rw"), uri=True, timeout=10)
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as err:
        raise MetadataStoreError(f"{path}: {_sqlite_reason(err)}; {RESET_HINT}") from None
    finally:
        con.close()
    if not journal.exists() or journal.stat().st_size == 0:
        log.info("rolled back the unfinished write a stopped run left in %s", path)


def _content_problem(path: Path) -> str | None:
    """What is wrong inside the store, in words, or None (see `_inspect_content`)."""
    return _inspect_content(path)[0]


def _inspect_content(path: Path) -> tuple[str | None, bool]:
    """(SQLite's `quick_check` of every page and the check that ML Metadata's tables are there:
    the problem or None, whether the database is blank: valid SQLite with no tables yet).

    A blank database is what a run killed before ML Metadata made its tables leaves; like a
    0-byte file it holds no runs, and ML Metadata sets it up on the next `tailings run`.
    """
    try:
        con = sqlite3.connect(_sqlite_uri(path, "ro"), uri=True, timeout=10)
        try:
            rows = [r[0] for r in con.execute("PRAGMA quick_check")]
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        finally:
            con.close()
    except sqlite3.OperationalError as err:
        if "locked" in str(err):
            return None, False  # a run is writing: busy, not damaged; ML Metadata waits its turn
        return f"{_sqlite_reason(err)}; {RESET_HINT}", False
    except sqlite3.Error as err:
        return f"{_sqlite_reason(err)}; {RESET_HINT}", False
    problems = [" ".join(r.split()) for r in rows if r != "ok" and not r.startswith("***")]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"damaged: {problems[0]}{more}; {RESET_HINT}", False
    if not tables:
        return None, True
    if not set(MLMD_TABLES) <= tables:
        missing = ", ".join(t for t in MLMD_TABLES if t not in tables)
        return (
            f"not an ML Metadata store: an SQLite database without its tables ({missing})",
            False,
        )
    return None, False


def _sqlite_reason(err: sqlite3.Error) -> str:
    reason = str(err)
    if "malformed" in reason or "not a database" in reason:
        return f"damaged: {reason}"
    return reason


def _mlmd_reason(err: Exception) -> str:
    """ML Metadata's message without the SQL it quotes (one line)."""
    text = str(err)
    found = re.search(r"Error when executing query: (.*?) query:", text, re.S)
    reason = found.group(1) if found else (text.strip().splitlines() or [type(err).__name__])[0]
    return " ".join(reason.split())[:200]


def run_ids(store: metadata_store.MetadataStore) -> list[str]:
    """Run ids of this pipeline, oldest first."""
    runs = [c for c in store.get_contexts_by_type(RUN_CONTEXT) if _belongs_to_pipeline(store, c)]
    return [c.name for c in sorted(runs, key=lambda c: (c.create_time_since_epoch, c.id))]


def _belongs_to_pipeline(store, context) -> bool:
    parents = store.get_parent_contexts_by_context(context.id)
    return not parents or any(p.name == PIPELINE_NAME for p in parents)


def load_run(
    store: metadata_store.MetadataStore, run_id: str | None = None, missing_ok: bool = False
) -> RunRecord | None:
    """One run (the latest when `run_id` is None) with every node's outputs; None when the
    store holds no runs, or no run `run_id` and `missing_ok`, else KeyError for a wrong id.

    A named run is looked up by its name alone: listing the store's runs (`run_ids`, a query
    per run) is left for when it is needed, so reading each of n runs costs n, not n^2."""
    ids = None
    if run_id in (None, "latest"):
        ids = run_ids(store)
        if not ids:
            return None
        run_id = ids[-1]
    context = store.get_context_by_type_and_name(RUN_CONTEXT, run_id)
    if context is None:
        if missing_ok:
            return None
        ids = run_ids(store) if ids is None else ids
        if not ids:
            return None
        raise KeyError(f"no run {run_id!r}; known runs: {', '.join(ids[-5:])}")
    executions = store.get_executions_by_context(context.id)
    nodes: dict[str, NodeRun] = {}
    for execution in executions:
        node = node_id(store, execution)
        events = store.get_events_by_execution_ids([execution.id])
        outputs_by_id: dict[str, list[int]] = {}
        for event in events:
            if event.type in (
                metadata_store_pb2.Event.OUTPUT,
                metadata_store_pb2.Event.DECLARED_OUTPUT,
            ):
                key = event.path.steps[0].key if event.path.steps else "output"
                outputs_by_id.setdefault(key, []).append(event.artifact_id)
        all_ids = [i for ids_ in outputs_by_id.values() for i in ids_]
        artifacts = {a.id: a for a in store.get_artifacts_by_id(all_ids)} if all_ids else {}
        nodes[node] = NodeRun(
            node_id=node,
            state=STATES.Name(execution.last_known_state),
            start_ms=execution.create_time_since_epoch,
            end_ms=execution.last_update_time_since_epoch,
            outputs={
                k: [artifacts[i] for i in v if i in artifacts] for k, v in outputs_by_id.items()
            },
        )
    return RunRecord(
        run_id=run_id,
        started_ms=context.create_time_since_epoch,
        nodes=nodes,
        properties={k: _value(v) for k, v in context.custom_properties.items()},
    )


def open_run(
    sqlite_path: str | os.PathLike,
    run_id: str | None,
    no_store_hint: str = "run `tailings run` first",
) -> RunRecord:
    """One run (the latest when `run_id` is None or "latest") from the store at `sqlite_path`,
    read with ML Metadata alone; `RunNotFound` naming what is missing, `MetadataStoreError` for
    a damaged store. Verbs that read a run call it before they import TensorFlow, TFX or Beam,
    so a mistyped run id costs a fraction of a second, not their imports."""
    path = Path(sqlite_path)
    if not os.path.lexists(path):
        raise RunNotFound(f"no metadata store at {path}; {no_store_hint}")
    store = open_store(path, verify=True)
    try:
        run = load_run(store, run_id)
    except KeyError as err:
        raise RunNotFound(str(err.args[0])) from None
    if run is None:
        raise RunNotFound(f"no runs recorded in {path}")
    return run


def record_run_property(sqlite_path: str | os.PathLike, run_id: str, name: str, text: str) -> None:
    """Set the string custom property `name` of run `run_id`'s context, leaving the rest of the
    context as it is (ML Metadata's field mask). `MetadataStoreError` in one line when the
    store cannot be written or has no such run.

    The runner records the run's summary this way when the run ends (`nodes.RUN_SUMMARY_PROPERTY`),
    through ML Metadata's API as TFX writes the store, not with SQL of our own."""
    path = Path(sqlite_path)
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
    try:
        store = metadata_store.MetadataStore(config)
        context = store.get_context_by_type_and_name(RUN_CONTEXT, run_id)
        if context is None:
            raise MetadataStoreError(f"{path}: no run {run_id!r} to record {name} on")
        update = metadata_store_pb2.Context(
            id=context.id, type_id=context.type_id, name=context.name
        )
        update.custom_properties[name].string_value = text
        store.put_contexts([update], field_mask_paths=[f"custom_properties.{name}"])
    except MetadataStoreError:
        raise
    except Exception as err:  # noqa: BLE001 - ML Metadata raises RuntimeError or its own types
        raise MetadataStoreError(f"{path}: cannot record {name}: {_mlmd_reason(err)}") from None


def node_id(store, execution) -> str:
    """The pipeline node (component id) an execution belongs to."""
    for context in store.get_contexts_by_execution(execution.id):
        if store.get_context_types_by_id([context.type_id])[0].name == NODE_CONTEXT:
            return context.name.split(".", 1)[-1]
    return execution.properties.get("component_id", metadata_store_pb2.Value()).string_value


def custom(artifact: metadata_store_pb2.Artifact | None, key: str):
    """A property's or custom property's value (int, float or string), or None."""
    if artifact is None:
        return None
    for props in (artifact.custom_properties, artifact.properties):
        if key in props:
            return _value(props[key])
    return None


def _value(value: metadata_store_pb2.Value):
    """A property's int, float or string (None when unset; other kinds as ML Metadata has them)."""
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None
