"""The atomic Pusher's temporary folders: a killed push's leftovers go, a live push's stay.

Owners are real processes started here (one SIGKILLed, one alive), not mocked pids.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import pusher
from components.warmup import WARMUP_FILE
from data.lock import process_start_ticks

TILE = 8


def fake_saved_model(folder: Path) -> Path:
    """A `saved_model.pb` with just the signature the Pusher's warmup writer reads."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    signature = saved.meta_graphs.add().signature_def["serving_default"]
    shape = signature.outputs["probabilities"].tensor_shape
    for size in (-1, TILE, TILE, 1):
        shape.dim.add().size = size
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(saved.SerializeToString())
    (folder / "variables").mkdir()
    (folder / "variables" / "variables.index").write_bytes(b"weights")
    return folder


def idle_process() -> subprocess.Popen:
    """A real process that waits until its stdin closes (so it never outlives the test)."""
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait()


def partial_copy(base: Path, name: str) -> Path:
    """A temporary folder as a push leaves it when killed mid-copy."""
    folder = base / name
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"half a model")
    return folder


def test_push_removes_a_killed_pushers_temp_and_keeps_a_live_ones(tmp_path, processes, caplog):
    base = tmp_path / "serving" / "tailings"
    killed, live = idle_process(), idle_process()
    processes += [killed, live]
    killed_temp = partial_copy(base, pusher.temp_name(killed.pid))
    live_temp = partial_copy(base, pusher.temp_name(live.pid))
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    model = fake_saved_model(tmp_path / "model")

    with caplog.at_level(logging.WARNING, logger=pusher.__name__):
        version, copied = pusher.push_atomically(str(model), str(base), {"run": "r1"})

    assert (version, copied) == (1, True)
    assert (base / "1" / WARMUP_FILE).is_file()
    assert not killed_temp.exists()
    assert live_temp.is_dir() and (live_temp / "saved_model.pb").read_bytes() == b"half a model"
    assert sorted(os.listdir(base)) == sorted(["1", live_temp.name])
    removals = [r.getMessage() for r in caplog.records if "stale push folder" in r.getMessage()]
    assert len(removals) == 1
    assert str(killed_temp) in removals[0] and f"process {killed.pid}" in removals[0]


def test_a_pid_now_used_by_another_process_is_stale(tmp_path):
    # This test's own pid is alive, but not the process that started at another time.
    ticks = process_start_ticks(os.getpid())
    assert ticks is not None
    host = pusher.temp_owner(pusher.temp_name()).host
    reused = partial_copy(tmp_path, f".tmp-{host}-{os.getpid()}-{ticks + 1}-0123abcd")
    mine = partial_copy(tmp_path, pusher.temp_name())

    assert pusher.remove_stale_temps(str(tmp_path)) == [str(reused)]
    assert mine.is_dir()


def test_other_hosts_unknown_names_and_fresh_legacy_temps_are_kept(tmp_path):
    now = time.time()
    other_host = partial_copy(tmp_path, ".tmp-build-box-7-99-0123abcd")
    unknown = partial_copy(tmp_path, ".tmp-notes")
    fresh_legacy = partial_copy(tmp_path, ".tmp-" + "a" * 32)
    old_legacy = partial_copy(tmp_path, ".tmp-" + "b" * 32)
    hour_ago = now - pusher.LEGACY_TEMP_MAX_IDLE_S - 60
    for path in [old_legacy, *old_legacy.rglob("*")]:
        os.utime(path, (hour_ago, hour_ago))
    version = tmp_path / "3"
    version.mkdir()

    assert pusher.remove_stale_temps(str(tmp_path), now=now) == [str(old_legacy)]
    assert all(p.is_dir() for p in (other_host, unknown, fresh_legacy, version))


def test_a_legacy_temp_with_a_recent_write_inside_is_kept(tmp_path):
    # The folder itself is old, but a file deep inside was just written: a copy in progress.
    now = time.time()
    legacy = partial_copy(tmp_path, ".tmp-" + "c" * 32)
    old = now - 10 * pusher.LEGACY_TEMP_MAX_IDLE_S
    os.utime(legacy, (old, old))
    os.utime(legacy / "variables", (old, old))
    (legacy / "variables" / "variables.data").write_bytes(b"being written")

    assert pusher.remove_stale_temps(str(tmp_path), now=now) == []


def test_temp_names_say_who_made_them():
    name = pusher.temp_name()
    owner = pusher.temp_owner(name)
    assert owner is not None
    assert owner.pid == os.getpid()
    assert owner.start_ticks == process_start_ticks(os.getpid())
    assert pusher.temp_name() != name  # two pushes of one process never share a folder
    # Hostnames may contain "-": the owner is read from the right.
    assert pusher.temp_owner(".tmp-my-host-12-345-0123abcd") == pusher.TempOwner("my-host", 12, 345)
    assert pusher.temp_owner(".tmp-" + "a" * 32) is None
    assert pusher.temp_owner(".tmp-x-y-z") is None


def test_a_killed_but_unreaped_process_counts_as_gone(processes):
    child = idle_process()
    processes.append(child)
    assert process_start_ticks(child.pid) is not None
    child.send_signal(signal.SIGKILL)
    # Wait until it is a zombie, without reaping it (its pid stays taken).
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    assert process_start_ticks(child.pid) is None
    child.wait()


def test_a_pusher_run_that_pushes_nothing_still_removes_stale_temps(tmp_path, processes):
    # The next Pusher run after a kill may not push (model not blessed): it cleans up anyway.
    from tfx.proto import pusher_pb2
    from tfx.types import standard_artifacts, standard_component_specs
    from tfx.utils import proto_utils

    base = tmp_path / "serving" / "tailings"
    killed = idle_process()
    processes.append(killed)
    stale = partial_copy(base, pusher.temp_name(killed.pid))
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    model = standard_artifacts.Model()
    model.uri = str(fake_saved_model(tmp_path / "model"))
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    blessing.set_int_custom_property("blessed", 0)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(base))
    )

    pusher.Executor().Do(
        {
            standard_component_specs.MODEL_KEY: [model],
            standard_component_specs.MODEL_BLESSING_KEY: [blessing],
        },
        {standard_component_specs.PUSHED_MODEL_KEY: [pushed]},
        {standard_component_specs.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(destination)},
    )

    assert pushed.get_int_custom_property("pushed") == 0
    assert not stale.exists() and os.listdir(base) == []


def test_pushers_racing_for_one_folder_each_get_a_complete_version(tmp_path):
    # Runs with different output folders may share one serving folder: their Pushers pick the
    # same next version number at the same time. Each must end with its own complete version.
    import threading

    base = tmp_path / "serving" / "tailings"
    models = []
    for i in range(4):
        model = fake_saved_model(tmp_path / f"model{i}")
        (model / "variables" / "variables.index").write_bytes(f"weights {i}".encode())
        # Big enough that each copy takes a while: the pushes overlap between picking a number
        # and renaming their copy to it.
        (model / "variables" / "variables.data-00000-of-00001").write_bytes(bytes(20 << 20))
        models.append(model)
    start = threading.Barrier(len(models))
    results: dict[int, tuple[int, bool] | BaseException] = {}

    def push(i: int) -> None:
        start.wait()
        try:
            results[i] = pusher.push_atomically(str(models[i]), str(base), {"run": i})
        except BaseException as err:  # noqa: BLE001 - the test reports it
            results[i] = err

    threads = [threading.Thread(target=push, args=(i,)) for i in range(len(models))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert all(isinstance(r, tuple) and r[1] for r in results.values()), results
    assert sorted(r[0] for r in results.values()) == [1, 2, 3, 4]
    assert sorted(p.name for p in base.iterdir()) == ["1", "2", "3", "4"]
    for i, (version, _) in results.items():
        record = json.loads((base / str(version) / pusher.PUSH_RECORD).read_text())
        assert record["version"] == version and record["run"] == i
        assert record["fingerprint"] == pusher.model_fingerprint(str(models[i]))
