"""The tiny pipeline with its pipeline root, its data and its serving folder in a bucket of the
local GCS (tests/fixtures/object_store.py), blessed and pushed into the bucket.

TFX's LocalDagRunner runs the real components on the pipeline `tailings compile` compiles
(`create_pipeline` with `cfg.remote`: URIs, module functions by import path), with a SQLite
metadata store in place of the orchestrator's. The schema is named in this checkout, as the
image names it in its own. TensorFlow's gs:// here is the tensorflow-io plugin, whose folder
rename the fixture completes as TensorFlow's own gs:// does (`_rename_folders_too`; Transform
publishes its output by renaming folders)."""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from pipeline import metadata, nodes
from pipeline.config import RemoteLocations
from pipeline.summary import summarize_record
from tests.conftest import PROJECT_ROOT
from tests.fixtures.pipeline import tiny_config


def test_tiny_pipeline_in_a_bucket_is_blessed_and_pushed_as_on_disk(
    object_store, pipeline_run, tmp_path
):
    from tfx.orchestration import metadata as tfx_metadata
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from pipeline.pipeline import create_pipeline

    local_cfg, local = pipeline_run  # the same pairs and settings, all on local disk
    assert local.blessed  # else the comparison below would not show a push
    remote = RemoteLocations(
        pipeline_root=object_store.uri("run", "pipeline"),
        data=object_store.upload(local_cfg.data_dir, object_store.uri("run", "data")),
        serving=object_store.uri("run", "serving"),
        image_project_dir=str(PROJECT_ROOT),
    )
    cfg = dataclasses.replace(tiny_config(tmp_path, tmp_path / "unused"), remote=remote)
    pipeline = create_pipeline(cfg)
    sqlite = tmp_path / "metadata.sqlite"
    pipeline.metadata_connection_config = tfx_metadata.sqlite_metadata_connection_config(
        str(sqlite)
    )
    LocalDagRunner().run(pipeline)

    assert os.listdir(tmp_path) == ["metadata.sqlite"]  # every output is in the bucket
    run = metadata.load_run(metadata.open_store(str(sqlite)))
    for node in (nodes.TRANSFORM, nodes.TRAINER, nodes.SCENE_EVALUATOR):
        outputs = run.nodes[node].outputs.values()
        assert all(a.uri.startswith(remote.pipeline_root + "/") for o in outputs for a in o)
    summary = summarize_record(run, seconds=0.0)  # TFMA reads the evaluations from the bucket
    assert summary.blessed == local.blessed
    assert set(summary.evaluations) == set(local.evaluations)
    assert set(summary.evaluations[nodes.SCENE_SPLIT].metrics) == set(
        local.evaluations[nodes.SCENE_SPLIT].metrics
    )

    push_dir = f"{remote.serving}/{cfg.model_name}"
    assert summary.pushed_version == "1"
    assert summary.pushed_path == f"{push_dir}/1"
    assert [v.rstrip("/") for v in tf.io.gfile.listdir(push_dir)] == ["1"]  # no staging left
    assert tf.io.gfile.exists(f"{push_dir}/1/saved_model.pb")
    assert tf.io.gfile.isdir(f"{push_dir}/1/variables")
