"""`tailings serve` and `tailings predict` from the command line."""

from __future__ import annotations

import json
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
from tests.fixtures.cli import MAIN_CASES
from tests.fixtures.geotiffs import scene, write_geotiff
from tests.fixtures.pipeline import TILE
from tests.serving.conftest import write_models_config


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


class UnboundServer:
    """Stands in for EmbeddedServer: keeps the config it was given, then cannot listen."""

    configs: list = []

    def __init__(self, entries, config, **kwargs) -> None:
        self.configs.append(config)

    def start(self) -> None:
        raise OSError(98, "Address already in use")

    def stop(self) -> None:
        pass


LABELS = '    version_labels { key: "stable" value: 1 }\n'


@pytest.mark.parametrize("engine", ["embedded", "tfserving"])
def test_serve_refuses_version_labels_at_startup_as_tf_serving(
    tmp_path, monkeypatch, capsys, engine
):
    """Issue 16, 3: one config, one outcome on both engines (TF Serving refuses it too)."""
    import serving.server

    # Were the config accepted, neither engine may really start here.
    monkeypatch.setattr(serving.server, "EmbeddedServer", UnboundServer)
    monkeypatch.setenv("PATH", str(tmp_path))
    config = write_models_config(tmp_path / "models.config", "m", tmp_path / "m", LABELS)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["serve", "--engine", engine, "--model-config", str(config)]) == 1
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(
        f"tailings serve: error: {config}: model 'm', label 'stable': Request to assign label "
        "to version 1 of model m, which is not currently available for inference"
    )


def test_serve_flags_reach_the_embedded_server(tmp_path, monkeypatch, capsys):
    """Issue 16, 1: TF Serving's load retry flags (and its CORS and label flags)."""
    import serving.server

    monkeypatch.setattr(serving.server, "EmbeddedServer", UnboundServer)
    monkeypatch.setattr(UnboundServer, "configs", [])
    config = write_models_config(tmp_path / "models.config", "m", tmp_path / "m", LABELS)
    argv = ["serve", "--model-config", str(config), "--port", "0"]
    flags = ["--max-num-load-retries", "2", "--load-retry-interval-seconds", "0.5"]
    flags += ["--rest-api-enable-cors-support"]
    sigterm = signal.getsignal(signal.SIGTERM)  # `tailings serve` sets its own
    try:
        assert main([*argv, "--allow-version-labels-for-unavailable-models"]) == 1
        assert "cannot listen" in capsys.readouterr().err
        assert main([*argv, "--allow-version-labels-for-unavailable-models", *flags]) == 1
        assert main([*argv, "--allow-version-labels-for-unavailable-models", *flags[:1], "-1"]) == 1
        assert "load_retries must be >= 0, got -1" in capsys.readouterr().err
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    default, flagged = UnboundServer.configs
    assert (default.load_retries, default.load_retry_seconds, default.enable_cors) == (5, 60, False)
    assert (flagged.load_retries, flagged.load_retry_seconds, flagged.enable_cors) == (2, 0.5, True)


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
    assert "areas: geodesic, on the WGS 84 ellipsoid" in err
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
    argv = [sys.executable, "-m", "tailings", "serve", "--port", "0", "--grpc-port", "0"]
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


# --------------------------------------------------------------------------- predict: input first


def test_predict_checks_flags_and_scene_before_loading_tensorflow(tmp_path):
    """Issue 16, defect 7: a missing file, a PNG, a scene far from 10 m pixels, a bad flag or
    model folder is one line, exit 1, before TensorFlow loads (it took 18-31 s to say so)."""
    from rasterio.transform import from_origin

    version = tmp_path / "models" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")  # looks pushed: loading it imports TensorFlow
    image, _ = scene(32, 32)
    good = write_geotiff(tmp_path / "good.tif", image)
    wide = from_origin(-43.8867, -20.3971, 8.333865e-4, 8.928166e-5)  # the study's img_23
    img_23 = write_geotiff(tmp_path / "img_23.tif", image, transform=wide)
    png = tmp_path / "tile.png"
    with rasterio.open(png, "w", driver="PNG", width=8, height=8, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 8, 8), np.uint8))
    out = ["--out", str(tmp_path / "out" / "mask.tif")]
    model = ["--model", str(version.parent)]
    nope = tmp_path / "nope"
    cases = [
        ([tmp_path / "missing.tif", *out, *model], f"{tmp_path / 'missing.tif'}: no such file"),
        ([png, *out, *model], f"{png}: is a PNG raster, not a GeoTIFF"),
        ([img_23, *out, *model], f"{img_23}: pixels are 87.0 m x 9.9 m on the ground; "),
        ([good, *out, *model, "--threshold", "2"], "threshold must be in (0, 1), got 2.0"),
        ([good, *out, *model, "--overlap", "448"], "overlap must be in [0, tile=448)"),
        ([good, *out, "--model", nope], f"--model {nope}: no such folder"),
        ([good, *out, "--server", "localhost:8501"], "--server localhost:8501: not a server URL"),
    ]
    argvs = [["predict", *map(str, argv)] for argv, _ in cases]
    allowed = ["predict", str(img_23), *out, "--model", str(nope), "--allow-resolution"]
    done = subprocess.run(
        [sys.executable, "-c", MAIN_CASES, json.dumps([*argvs, allowed])],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
        timeout=120,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr  # nothing from rasterio/GDAL
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["tensorflow"] is False
    *results, allowed_result = said["results"]
    for (argv, message), result in zip(cases, results, strict=True):
        assert result["code"] == 1, argv
        (line,) = result["stderr"]
        assert line.startswith(f"tailings predict: error: {message}"), line
    assert allowed_result["code"] == 1
    assert allowed_result["stderr"] == [
        f"tailings predict: warning: {img_23}: pixels are 87.0 m x 9.9 m on the ground; the "
        "model was trained on 10 m pixels, so its answers here may be worse",
        f"tailings predict: error: --model {nope}: no such folder",
    ]
