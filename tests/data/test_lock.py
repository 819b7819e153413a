"""The output-folder lock (`data.lock`) against real processes: held, refused, taken over, raced.

Every holder here is a real OS process (a `python -c` child or a spawned multiprocessing
worker); "killed" means SIGKILL, so nothing of the holder's own clean-up runs.
"""

import json
import multiprocessing
import os
import socket

import pytest

from data.errors import EXIT_BUSY
from data.lock import LOCK_NAME, OutputBusy, lock_holder, output_lock
from tailings.cli import main
from tests.fixtures.geotiffs import make_pairs
from tests.fixtures.locks import hold, kill, race, release


def test_second_taker_is_refused_with_one_line_naming_the_holder(tmp_path):
    holder = hold(tmp_path, "run")
    try:
        with pytest.raises(OutputBusy) as refused, output_lock(tmp_path, "convert"):
            pytest.fail("took a lock another process holds")
        message = str(refused.value)
        assert "\n" not in message and refused.value.exit_code == EXIT_BUSY == 5
        assert str(tmp_path) in message and "`tailings run`" in message
        assert f"pid {holder.pid}" in message and socket.gethostname() in message
        info = lock_holder(tmp_path)
        assert info is not None and info.pid == holder.pid and info.verb == "run"
        assert info.started in message
    finally:
        release(holder)
    assert not (tmp_path / LOCK_NAME).exists()  # the holder released it on its way out
    assert lock_holder(tmp_path) is None
    with output_lock(tmp_path, "convert") as lock:
        assert lock.took_over is None


@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
def test_lock_of_a_killed_process_is_taken_over_and_said(tmp_path, reap):
    holder = hold(tmp_path)
    kill(holder, reap)
    try:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # left behind
        assert lock_holder(tmp_path) is None  # stale: not reported as a running holder
        said: list[str] = []
        with output_lock(tmp_path, "convert", said.append) as lock:
            assert lock.took_over.pid == holder.pid
            assert said == [lock.note]
            assert f"took over the lock of pid {holder.pid} (no longer running)" in said[0]
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
            assert lock_holder(tmp_path).pid == os.getpid()
    finally:
        holder.wait()
    assert os.listdir(tmp_path) == []  # nothing left: no lock, no temporary or stale file


def test_lock_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path):
    """A killed run's lock whose pid was given to a new process (here: this test's own): the
    start times differ, so the live pid is not mistaken for the holder."""
    holder = hold(tmp_path)
    kill(holder, reap=True)
    lock_file = tmp_path / LOCK_NAME
    record = json.loads(lock_file.read_text())
    lock_file.write_text(json.dumps({**record, "pid": os.getpid()}))
    assert lock_holder(tmp_path) is None
    with output_lock(tmp_path, "run") as lock:
        assert lock.took_over.pid == os.getpid()
        assert "pid now belongs to another process" in lock.note


def test_lock_from_another_host_is_refused_as_unverifiable(tmp_path):
    holder = hold(tmp_path)
    kill(holder, reap=True)  # dead, but on "another host" that cannot be known from here
    lock_file = tmp_path / LOCK_NAME
    record = json.loads(lock_file.read_text())
    lock_file.write_text(json.dumps({**record, "hostname": "elsewhere.invalid"}))
    with pytest.raises(OutputBusy) as refused, output_lock(tmp_path, "run"):
        pytest.fail("took a lock of another host")
    message = str(refused.value)
    assert "elsewhere.invalid" in message and "cannot be checked" in message
    assert f"delete {lock_file}" in message
    assert lock_file.exists()


def test_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), output_lock(tmp_path, "run"):
        assert lock_holder(tmp_path).pid == os.getpid()
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK_NAME).exists()
    with output_lock(tmp_path, "run") as lock:  # and can be taken again, nothing taken over
        assert lock.took_over is None


def test_a_lock_held_by_this_process_is_not_taken_twice(tmp_path):
    with output_lock(tmp_path, "run"), pytest.raises(OutputBusy, match=f"pid {os.getpid()}"):
        with output_lock(tmp_path, "convert"):
            pytest.fail("took the same lock twice")
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("round_", range(3))
def test_racers_for_one_stale_lock_exactly_one_wins(tmp_path, round_):
    holder = hold(tmp_path)
    kill(holder, reap=True)
    ctx = multiprocessing.get_context("spawn")
    racers = 3
    start, results, done = ctx.Barrier(racers), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=race, args=(str(tmp_path), start, results, done)) for _ in range(racers)
    ]
    for p in procs:
        p.start()
    try:
        answers = [results.get(timeout=300) for _ in procs]  # a hang guard, not a timing check
    finally:
        done.set()
        for p in procs:
            p.join()
    winners = [a for a in answers if a[0] == "won"]
    assert len(winners) == 1, answers
    _, winner, took_over = winners[0]
    assert took_over == holder.pid
    for _, _, message in (a for a in answers if a[0] == "busy"):
        assert f"pid {winner}" in message, message
    assert all(p.exitcode == 0 for p in procs)
    assert os.listdir(tmp_path) == []  # released by the winner; no stale or temporary files


def test_convert_into_a_held_folder_exits_5_with_one_line_and_writes_nothing(tmp_path, capsys):
    images, masks = make_pairs(tmp_path / "data", 2)
    out = tmp_path / "out"
    holder = hold(out, "convert")
    try:
        code = main(
            ["convert", "--images", str(images), "--masks", str(masks), "--output", str(out)]
        )
        err = capsys.readouterr().err
    finally:
        release(holder)
    assert code == EXIT_BUSY
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tailings convert: error: ")
    assert f"pid {holder.pid}" in lines[0] and "`tailings convert`" in lines[0]
    assert os.listdir(out) == []  # no shard, no summary.json, and the holder's lock is gone
