"""`tailings serve` and `tailings predict` from the command line."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import rasterio
import requests

from tailings.cli import main
from tests.conftest import PROJECT_ROOT
from tests.fixtures.geotiffs import scene, write_geotiff
from tests.fixtures.pipeline import TILE


def test_tfserving_engine_says_what_is_missing_and_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH: no tensorflow_model_server
    code = main(["serve", "--engine", "tfserving", "--model-base-path", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("tailings serve: error: `tensorflow_model_server` is not on PATH")
    assert "docker compose -f serving/compose.yaml up" in line
    assert "apt-get install tensorflow-model-server" in line


def test_serve_rejects_a_bad_model_config(tmp_path, capsys):
    bad = tmp_path / "models.config"
    bad.write_text("model_config_list {")
    assert main(["serve", "--model-config", str(bad)]) == 1
    assert f"{bad}: not a ModelServerConfig text proto" in capsys.readouterr().err


def test_predict_bad_scene_is_one_line_and_exit_1(tmp_path, capsys):
    scene_path = write_geotiff(tmp_path / "one.tif", np.zeros((1, 16, 16), np.float32))
    code = main(["predict", str(scene_path), "--out", str(tmp_path / "m.tif"), "--model", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("tailings predict: error: ")


@pytest.mark.slow
def test_predict_with_model_and_with_server_agree(server, pushed, tmp_path, capsys):
    cfg, _ = pushed
    image, _ = scene(100, 130, seed=8, blobs=2)
    scene_path = write_geotiff(tmp_path / "scene.tif", image)
    common = ["--tile", str(TILE), "--overlap", "16", "--threshold", "0.5"]
    local = ["predict", str(scene_path), "--out", str(tmp_path / "a.tif"), "--model"]
    assert main([*local, str(cfg.push_dir), *common, "--polygons", str(tmp_path / "a.json")]) == 0
    err = capsys.readouterr().err
    assert re.search(r"tailings: \d+ pixels, \d+\.\d\d ha", err), err
    remote = ["predict", str(scene_path), "--out", str(tmp_path / "b.tif"), "--server"]
    assert main([*remote, server.url, *common]) == 0
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    # The model's tile is 64; the default 448 is refused with the fix in the message.
    assert main([*local, str(cfg.push_dir)]) == 1
    assert f"pass --tile {TILE}" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_command_serves_until_sigterm(pushed):
    cfg, _ = pushed
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "tailings", "serve", "--port", "0"]
    argv += ["--model-base-path", str(cfg.serving_dir), "--model-name", cfg.model_name]
    process = subprocess.Popen(
        argv,
        cwd=PROJECT_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in process.stderr], daemon=True).start()
    try:
        url, seen, deadline = None, [], time.monotonic() + 180
        while url is None and time.monotonic() < deadline and process.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            seen.append(line)
            match = re.search(r"serving REST on (http://127\.0\.0\.1:\d+)", line)
            url = match.group(1) if match else None
        assert url, "".join(seen[-20:])
        status = requests.get(f"{url}/v1/models/{cfg.model_name}", timeout=30).json()
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
