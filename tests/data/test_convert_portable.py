"""`tailings convert` on Beam's portable runner writes what the DirectRunner writes.

The test starts Beam's own job service (`local_job_service_main`) and an external SDK worker
pool (`worker_pool_main`) as processes on 127.0.0.1, runs `tailings convert -- --runner=
PortableRunner ...` against them, and stops them afterwards. This is the path a Flink or Spark
job server takes (the same Job API and the same worker contract); those clusters themselves
are not testable here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tailings.cli import main
from tests.fixtures.geotiffs import make_pair, scene

# Both Beam services bind every interface ('[::]') or 'localhost' in their own code; the
# launcher pins each gRPC port it opens to 127.0.0.1, then runs the service's main unchanged.
LAUNCHER = """
import importlib.util, runpy, sys
import grpc._server as server

_add = server._Server.add_insecure_port

def _local(self, address):
    port = address.rsplit(":", 1)[1]
    return _add(self, "127.0.0.1:" + port)

server._Server.add_insecure_port = _local
module = sys.argv[1]
sys.argv = [importlib.util.find_spec(module).origin] + sys.argv[2:]
runpy.run_module(module, run_name="__main__")
"""
STARTUP_SECONDS = 60
PAIRS = ("a", "b", "c")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"port {port} not open after {STARTUP_SECONDS} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def beam_services(tmp_path_factory):
    """(job endpoint, worker pool endpoint, job service log) of two Beam processes started
    here, stopped after."""
    root = tmp_path_factory.mktemp("beam-services")
    launcher = root / "launch.py"
    launcher.write_text(LAUNCHER)
    env = dict(os.environ)
    # The pool starts SDK workers with `python -m ...`: this venv's, so they import the project.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")) if p
    )
    procs = []
    try:
        endpoints, logs = [], []
        for module, flag in (
            ("apache_beam.runners.portability.local_job_service_main", "--port"),
            ("apache_beam.runners.worker.worker_pool_main", "--service_port"),
        ):
            port = _free_port()
            log = root / f"{module.rsplit('.', 1)[-1]}.log"
            proc = subprocess.Popen(
                [sys.executable, str(launcher), module, f"{flag}={port}"],
                env=env,
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs.append(proc)
            _wait_for(port, proc, log)
            endpoints.append(f"127.0.0.1:{port}")
            logs.append(log)
        yield endpoints[0], endpoints[1], logs[0]
    finally:
        for proc in procs:  # only the processes started above, by their own handles
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _pairs(root: Path) -> tuple[Path, Path]:
    img, msk = root / "img", root / "mask"
    for i, pair_id in enumerate(PAIRS):
        make_pair(img, msk, pair_id, size=(32, 32), seed=i)
    _, mask = scene(32, 32, seed=9)
    make_pair(img, msk, "bad_mask", size=(32, 32), seed=9, mask=mask * 255)  # rejected
    return img, msk


def _convert(img: Path, msk: Path, out: Path, beam_args: list[str]) -> None:
    argv = ["convert", "--images", str(img), "--masks", str(msk), "--output", str(out)]
    argv += ["--shards", "2"]
    assert main(argv + (["--", *beam_args] if beam_args else [])) == 0


def _summary_counts(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    for timing in ("seconds", "workers"):
        summary.pop(timing)
    return summary


@pytest.mark.slow
def test_the_portable_runner_writes_what_the_direct_runner_writes(tmp_path, beam_services):
    job, pool, job_log = beam_services
    img, msk = _pairs(tmp_path)
    direct, portable = tmp_path / "direct", tmp_path / "portable"
    _convert(img, msk, direct, [])
    _convert(
        img,
        msk,
        portable,
        [
            "--runner=PortableRunner",
            f"--job_endpoint={job}",
            "--environment_type=EXTERNAL",
            f"--environment_config={pool}",
            # Beam's PortableRunner makes this (60 s by default) the deadline of the whole
            # job's state stream: a slow CI machine must not fail the job on it.
            "--job_server_timeout=600",
        ],
    )
    # The job really ran there (a bad runner option would have been refused, not ignored).
    assert "with state DONE" in job_log.read_text()
    shards = sorted(p.name for p in direct.glob("*.tfrecord.gz"))
    assert len(shards) == 2
    assert sorted(p.name for p in portable.glob("*.tfrecord.gz")) == shards
    for name in shards:
        assert (portable / name).read_bytes() == (direct / name).read_bytes(), name
    rejected = (direct / "rejected.jsonl").read_text()
    assert json.loads(rejected.splitlines()[0])["id"] == "bad_mask"
    assert (portable / "rejected.jsonl").read_text() == rejected
    counts = _summary_counts(direct)
    assert counts["converted"] == len(PAIRS) and counts["rejected"] == 1
    assert _summary_counts(portable) == counts
