"""Read pipeline runs back from the ML Metadata store: which component produced what, when.

ML Metadata records every execution and artifact; these helpers turn it into "the outputs of
node X in run R", which the run summary, `tailings runs` and the reports need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

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

    def artifact(self, node_id: str, key: str) -> metadata_store_pb2.Artifact | None:
        node = self.nodes.get(node_id)
        found = node.outputs.get(key) if node else None
        return found[-1] if found else None


def open_store(sqlite_path: str) -> metadata_store.MetadataStore:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = sqlite_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def run_ids(store: metadata_store.MetadataStore) -> list[str]:
    """Run ids of this pipeline, oldest first."""
    runs = [c for c in store.get_contexts_by_type(RUN_CONTEXT) if _belongs_to_pipeline(store, c)]
    return [c.name for c in sorted(runs, key=lambda c: (c.create_time_since_epoch, c.id))]


def _belongs_to_pipeline(store, context) -> bool:
    parents = store.get_parent_contexts_by_context(context.id)
    return not parents or any(p.name == PIPELINE_NAME for p in parents)


def load_run(store: metadata_store.MetadataStore, run_id: str | None = None) -> RunRecord | None:
    """One run (the latest when `run_id` is None) with every node's outputs."""
    ids = run_ids(store)
    if not ids:
        return None
    run_id = ids[-1] if run_id in (None, "latest") else run_id
    context = store.get_context_by_type_and_name(RUN_CONTEXT, run_id)
    if context is None:
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
    return RunRecord(run_id=run_id, started_ms=context.create_time_since_epoch, nodes=nodes)


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
            value = props[key]
            kind = value.WhichOneof("value")
            return getattr(value, kind) if kind else None
    return None
