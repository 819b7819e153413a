"""Pusher: TFX's Pusher with an atomic, numbered, de-duplicated push into a TF Serving folder.

TFX's filesystem Pusher copies file by file straight into `<base>/<unix time>/`; TF Serving
polls that folder and may load a half-copied version. This executor copies into a hidden
temporary folder on the same filesystem and renames it into place (rename is atomic), numbers
versions 1, 2, 3 ... after the highest one present, and skips the copy when the newest version
already holds the same model bytes, so a re-run on unchanged data never pushes a duplicate.

A push killed mid-copy leaves its hidden temporary folder behind; each push first removes such
leftovers (`remove_stale_temps`), never a temporary folder another live push is still filling.

On an object store (a gs:// serving folder, `tailings compile`) there is no rename: it is a
copy per object. What TF Serving does there (tensorflow/serving,
`file_system_storage_path_source.cc`, `PollFileSystemForServable`): it lists the base path
with `GetChildren`, which on GCS "returns all descendants", and keeps the first path part of
each (`real_children`), so a version folder exists as soon as its first object does; only
all-digit names are versions (`IndexChildrenByVersion` / `ParseVersionNumber`), so a
non-numeric prefix is invisible. Its SavedModel loader needs `saved_model.pb`; a version it
fails to load is retried (`max_num_load_retries`). So `push_to_object_store` stages the
whole version under a non-numeric `.tmp-...` prefix (the warmup file and push record
included), then copies it object by object to `<N>/` with `saved_model.pb` last, and deletes
the staging prefix: a loader that sees `saved_model.pb` sees every other file complete.
Two Pushers racing for one number on a store are not excluded (no atomic rename there): the
number is re-checked just before publishing only.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass

from tfx.components.pusher import component as tfx_pusher
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from components.warmup import write_warmup
from data.lock import process_is_alive, process_start_ticks

PUSH_RECORD = os.path.join("assets.extra", "tailings_push.json")
REUSED_KEY = "reused_version"

TEMP_PREFIX = ".tmp-"
# Temporary folders of Pushers before owners were recorded: `.tmp-<uuid4 hex>`.
LEGACY_TEMP = re.compile(r"\.tmp-[0-9a-f]{32}")
# How long a legacy temporary folder must have gone without a write before it counts as stale.
LEGACY_TEMP_MAX_IDLE_S = 3600.0


log = logging.getLogger(__name__)


def model_fingerprint(model_dir: str) -> str:
    """SHA-256 over the SavedModel's relative paths and bytes (its identity, not its location)."""
    if _remote(model_dir):
        return _remote_fingerprint(model_dir)
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


def _remote(path: str) -> bool:
    return "://" in path


def _object_files(folder: str) -> list[tuple[str, str]]:
    """(relative path, URI) of every object under a gs:// folder, in `os.walk`'s order with
    sorted names (a folder's files before its subfolders), as the local fingerprint walks."""
    import tensorflow as tf

    top = folder.rstrip("/")
    found = []
    for root, _, files in tf.io.gfile.walk(top):
        for name in files:
            path = f"{root.rstrip('/')}/{name}"
            found.append((path[len(top) + 1 :], path))
    return sorted(found, key=lambda f: [(1, p) for p in f[0].split("/")[:-1]] + [(0, f[0])])


def _remote_fingerprint(model_dir: str) -> str:
    import tensorflow as tf

    digest = hashlib.sha256()
    for rel, path in _object_files(model_dir):
        if rel == PUSH_RECORD:
            continue
        digest.update(rel.encode() + b"\0")
        with tf.io.gfile.GFile(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def numeric_versions(base_dir: str) -> list[int]:
    """The version folders TF Serving would load, oldest first."""
    if _remote(base_dir):
        import tensorflow as tf

        if not tf.io.gfile.isdir(base_dir):
            return []
        names = (n.rstrip("/") for n in tf.io.gfile.listdir(base_dir))
        return sorted(int(n) for n in names if n.isdigit())
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(n) for n in os.listdir(base_dir) if n.isdigit())


# --------------------------------------------------------------------------- temporary folders
@dataclass(frozen=True)
class TempOwner:
    """The push that made a temporary folder: host, pid and that process's start time."""

    host: str
    pid: int
    start_ticks: int


def _hostname() -> str:
    # A hostname cannot hold "/" in practice, but the name ends up in a path: make sure.
    return socket.gethostname().replace(os.sep, "_") or "localhost"


def temp_name(pid: int | None = None) -> str:
    """`.tmp-<host>-<pid>-<start ticks>-<random>`: a fresh temporary folder name for a push by
    process `pid` (default: this one). The random part keeps two pushes of one process apart."""
    pid = os.getpid() if pid is None else pid
    ticks = process_start_ticks(pid)
    if ticks is None:
        raise ValueError(f"no running process {pid}")
    return f"{TEMP_PREFIX}{_hostname()}-{pid}-{ticks}-{uuid.uuid4().hex[:8]}"


def temp_owner(name: str) -> TempOwner | None:
    """Who made temporary folder `name` (from `temp_name`), or None if it does not say."""
    if not name.startswith(TEMP_PREFIX):
        return None
    parts = name[len(TEMP_PREFIX) :].rsplit("-", 3)  # the hostname itself may contain "-"
    if len(parts) != 4 or not all(p.isdigit() for p in parts[1:3]) or not parts[0]:
        return None
    return TempOwner(host=parts[0], pid=int(parts[1]), start_ticks=int(parts[2]))


def _newest_write(path: str) -> float:
    """The latest mtime of a folder and everything in it (a copy in progress keeps it fresh)."""
    newest = os.lstat(path).st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def remove_stale_temps(base_dir: str, now: float | None = None) -> list[str]:
    """Remove the temporary folders in `base_dir` that no live push will finish; returns them.

    - `.tmp-<host>-<pid>-<start>-<random>` made on this host: stale when that process is gone
      or its pid now belongs to another process (different start time). A live pusher's folder
      is never touched, so two Pushers racing on one model folder do not break each other.
    - the same made on another host (a model folder on shared storage): kept; its process
      cannot be checked from here (that host's next push removes it). Containers that share a
      model folder must not share a hostname too, or each would judge the other's pids.
    - `.tmp-<32 hex>`, written by Pushers before owners were recorded: stale when nothing in it
      was written for `LEGACY_TEMP_MAX_IDLE_S` (an hour). Such a folder can only still be live
      if an older tailings is pushing right now, and a copy writes file after file: an hour
      without a write means its writer is gone, while a few minutes could be a slow copy.
    - anything else (other names, files): not ours, kept.
    Each removal is logged as a warning: a stale folder means an earlier push was killed.
    On an object store only the first kind is removed (objects have no folder mtime).
    """
    if _remote(base_dir):
        return _remove_stale_remote_temps(base_dir)
    if not os.path.isdir(base_dir):
        return []
    now = time.time() if now is None else now
    host = _hostname()
    removed = []
    for name in sorted(os.listdir(base_dir)):
        path = os.path.join(base_dir, name)
        if not name.startswith(TEMP_PREFIX) or not os.path.isdir(path) or os.path.islink(path):
            continue
        owner = temp_owner(name)
        if owner is not None:
            if owner.host != host or process_is_alive(owner.pid, owner.start_ticks):
                continue
            why = f"left by process {owner.pid}, which is no longer running"
        elif LEGACY_TEMP.fullmatch(name):
            try:
                idle = now - _newest_write(path)
            except FileNotFoundError:
                continue  # removed meanwhile
            if idle < LEGACY_TEMP_MAX_IDLE_S:
                continue
            why = f"an unfinished push by an older Pusher, untouched for {idle / 3600:.1f} h"
        else:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(path):
            log.warning("could not remove stale push folder %s (%s)", path, why)
        else:
            log.warning("removed stale push folder %s (%s)", path, why)
            removed.append(path)
    return removed


def _remove_stale_remote_temps(base_dir: str) -> list[str]:
    import tensorflow as tf

    if not tf.io.gfile.isdir(base_dir):
        return []
    host, removed = _hostname(), []
    for name in sorted(n.rstrip("/") for n in tf.io.gfile.listdir(base_dir)):
        owner = temp_owner(name)
        if owner is None or owner.host != host:
            continue
        if process_is_alive(owner.pid, owner.start_ticks):
            continue
        path = f"{base_dir.rstrip('/')}/{name}"
        tf.io.gfile.rmtree(path)
        log.warning(
            "removed stale push folder %s (left by process %s, which is no longer running)",
            path,
            owner.pid,
        )
        removed.append(path)
    return removed


def push_to_object_store(model_dir: str, base_dir: str, record: dict) -> tuple[int, bool]:
    """`push_atomically` for a gs:// serving folder: stage under a non-numeric prefix, then
    copy to `<N>/` with `saved_model.pb` last (why: the module docstring)."""
    import tensorflow as tf

    gfile = tf.io.gfile
    remove_stale_temps(base_dir)
    fingerprint = model_fingerprint(model_dir)
    version, there = _next_version(base_dir, fingerprint)
    if there:
        return version, False
    base = base_dir.rstrip("/")
    staging = f"{base}/{temp_name()}"
    try:
        for rel, path in _object_files(model_dir):
            gfile.makedirs(os.path.dirname(f"{staging}/{rel}"))
            gfile.copy(path, f"{staging}/{rel}", overwrite=True)
        write_warmup(staging, os.path.basename(base))
        while True:
            with gfile.GFile(f"{staging}/{PUSH_RECORD}", "w") as fh:
                json.dump({**record, "fingerprint": fingerprint, "version": version}, fh, indent=2)
            if version in numeric_versions(base_dir):  # taken while we staged
                version, there = _next_version(base_dir, fingerprint)
                if there:
                    return version, False
                continue
            target = f"{base}/{version}"
            staged = _object_files(staging)
            last = [f for f in staged if f[0] == "saved_model.pb"]
            for rel, path in [f for f in staged if f[0] != "saved_model.pb"] + last:
                gfile.makedirs(os.path.dirname(f"{target}/{rel}"))
                gfile.copy(path, f"{target}/{rel}", overwrite=True)
            return version, True
    finally:
        if gfile.exists(staging):
            gfile.rmtree(staging)


def push_atomically(model_dir: str, base_dir: str, record: dict) -> tuple[int, bool]:
    """Copy `model_dir` to `base_dir/<next version>`; returns (version, copied).

    Stale temporary folders of killed pushes are removed first (`remove_stale_temps`).
    A gs:// `base_dir` goes to `push_to_object_store`.
    """
    if _remote(base_dir):
        return push_to_object_store(model_dir, base_dir, record)
    remove_stale_temps(base_dir)
    fingerprint = model_fingerprint(model_dir)
    version, there = _next_version(base_dir, fingerprint)
    if there:
        return version, False
    os.makedirs(base_dir, exist_ok=True)
    temp = os.path.join(base_dir, temp_name())
    try:
        shutil.copytree(model_dir, temp)
        os.makedirs(os.path.join(temp, "assets.extra"), exist_ok=True)
        write_warmup(temp, os.path.basename(os.path.normpath(base_dir)))
        while True:
            with open(os.path.join(temp, PUSH_RECORD), "w") as fh:
                json.dump({**record, "fingerprint": fingerprint, "version": version}, fh, indent=2)
            try:
                os.rename(temp, os.path.join(base_dir, str(version)))
                return version, True
            except OSError as err:
                # Another Pusher (a run with another output folder, same serving folder) took
                # this number while we copied: rename never replaces a non-empty folder, so
                # look again and take the next free number (or its version, if same model).
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                version, there = _next_version(base_dir, fingerprint)
                if there:
                    return version, False
    finally:
        if os.path.exists(temp):
            shutil.rmtree(temp, ignore_errors=True)


def _next_version(base_dir: str, fingerprint: str) -> tuple[int, bool]:
    """(the number to push to, False), or (the newest version, True) if it holds this model."""
    versions = numeric_versions(base_dir)
    if not versions:
        return 1, False
    latest = os.path.join(base_dir, str(versions[-1]), PUSH_RECORD)
    if _remote(base_dir):
        import tensorflow as tf

        if tf.io.gfile.exists(latest):
            with tf.io.gfile.GFile(latest) as fh:
                if json.load(fh).get("fingerprint") == fingerprint:
                    return versions[-1], True
        return versions[-1] + 1, False
    if os.path.exists(latest):
        with open(latest) as fh:
            if json.load(fh).get("fingerprint") == fingerprint:
                return versions[-1], True
    return versions[-1] + 1, False


class Executor(tfx_pusher_executor.Executor):
    """Push a blessed model into a TF Serving model base path, atomically."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY]
        )
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination
        )
        base_dir = destination.filesystem.base_directory
        # Also when this model is not blessed: a killed push's leftovers go on the next run.
        remove_stale_temps(base_dir)
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
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
