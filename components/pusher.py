"""Pusher: TFX's Pusher with an atomic, numbered, de-duplicated push into a TF Serving folder.

TFX's filesystem Pusher copies file by file straight into `<base>/<unix time>/`; TF Serving
polls that folder and may load a half-copied version. This executor copies into a hidden
temporary folder on the same filesystem and renames it into place (rename is atomic), numbers
versions 1, 2, 3 ... after the highest one present, and skips the copy when the newest version
already holds the same model bytes, so a re-run on unchanged data never pushes a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid

from tfx.components.pusher import component as tfx_pusher
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from components.warmup import write_warmup

PUSH_RECORD = os.path.join("assets.extra", "tailings_push.json")
REUSED_KEY = "reused_version"


def model_fingerprint(model_dir: str) -> str:
    """SHA-256 over the SavedModel's relative paths and bytes (its identity, not its location)."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(model_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, model_dir)
            if rel == PUSH_RECORD:
                continue
            digest.update(rel.encode() + b"\0")
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def numeric_versions(base_dir: str) -> list[int]:
    """The version folders TF Serving would load, oldest first."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(n) for n in os.listdir(base_dir) if n.isdigit())


def push_atomically(model_dir: str, base_dir: str, record: dict) -> tuple[int, bool]:
    """Copy `model_dir` to `base_dir/<next version>`; returns (version, copied)."""
    fingerprint = model_fingerprint(model_dir)
    versions = numeric_versions(base_dir)
    if versions:
        latest = os.path.join(base_dir, str(versions[-1]), PUSH_RECORD)
        if os.path.exists(latest):
            with open(latest) as fh:
                if json.load(fh).get("fingerprint") == fingerprint:
                    return versions[-1], False
    os.makedirs(base_dir, exist_ok=True)
    version = (versions[-1] + 1) if versions else 1
    temp = os.path.join(base_dir, f".tmp-{uuid.uuid4().hex}")
    try:
        shutil.copytree(model_dir, temp)
        os.makedirs(os.path.join(temp, "assets.extra"), exist_ok=True)
        with open(os.path.join(temp, PUSH_RECORD), "w") as fh:
            json.dump({**record, "fingerprint": fingerprint, "version": version}, fh, indent=2)
        write_warmup(temp, os.path.basename(os.path.normpath(base_dir)))
        os.rename(temp, os.path.join(base_dir, str(version)))
    finally:
        if os.path.exists(temp):
            shutil.rmtree(temp, ignore_errors=True)
    return version, True


class Executor(tfx_pusher_executor.Executor):
    """Push a blessed model into a TF Serving model base path, atomically."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY]
        )
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination
        )
        base_dir = destination.filesystem.base_directory
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        version, copied = push_atomically(
            model_path, base_dir, {"model_artifact_id": model.id, "model_uri": model.uri}
        )
        model_push.set_int_custom_property(REUSED_KEY, 0 if copied else 1)
        self._MarkPushed(
            model_push,
            pushed_destination=os.path.join(base_dir, str(version)),
            pushed_version=str(version),
        )


class Pusher(tfx_pusher.Pusher):
    """TFX Pusher whose executor pushes atomically and never pushes the same model twice."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
