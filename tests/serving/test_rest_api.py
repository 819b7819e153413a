"""TF Serving's REST contract, over real HTTP against the embedded server and a pushed model."""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf

from components import trainer_lib
from serving.config import METRICS_PATH, ServerConfig
from serving.model_config import single_model
from serving.server import EmbeddedServer
from tests.fixtures.geotiffs import scene
from tests.fixtures.pipeline import TILE
from tests.serving.conftest import LABEL, TEST_BODY_LIMIT, Http, copy_version

pytestmark = pytest.mark.slow


def tile(seed: int) -> np.ndarray:
    image, _ = scene(TILE, TILE, seed=seed)
    return np.moveaxis(image, 0, -1)  # [H, W, 3] float32


def model_url(server, cfg, suffix: str = "") -> str:
    return f"{server.url}/v1/models/{cfg.model_name}{suffix}"


def expected_probabilities(reference, signature: str, **inputs) -> np.ndarray:
    outputs = reference.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return outputs[trainer_lib.PROBABILITIES].numpy()


# --------------------------------------------------------------------------- status, metadata
def test_status_is_tf_servings_json(server, pushed, http):
    cfg, _ = pushed
    # By label, TF Serving ignores the label and lists every version, even for a label the
    # model does not have (get_model_status_impl.cc:82-107).
    for suffix in ("", "/versions/1", f"/labels/{LABEL}", "/labels/no-such-label"):
        response = http.get(model_url(server, cfg, suffix))
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == "application/json"
        assert response.json() == {
            "model_version_status": [
                {
                    "version": "1",
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }


def test_metadata_lists_the_signatures_from_the_saved_model(server, pushed, http):
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    cfg, version_dir = pushed
    doc = http.get(model_url(server, cfg, "/metadata")).json()
    assert doc["model_spec"] == {"name": cfg.model_name, "signature_name": "", "version": "1"}
    signatures = doc["metadata"]["signature_def"]["signature_def"]
    for name in (trainer_lib.SERVING_DEFAULT, trainer_lib.PREDICT_IMAGE):
        assert signatures[name]["method_name"] == "tensorflow/serving/predict"
    serving = signatures[trainer_lib.SERVING_DEFAULT]
    assert serving["inputs"][trainer_lib.EXAMPLES_INPUT]["dtype"] == "DT_STRING"
    dims = serving["outputs"][trainer_lib.PROBABILITIES]["tensor_shape"]["dim"]
    assert [d["size"] for d in dims] == ["-1", str(TILE), str(TILE), "1"]
    # The JSON is the proto's: it parses back into TF Serving's SignatureDefMap unchanged.
    parsed = json_format.ParseDict(
        doc["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap()
    )
    saved = tf.saved_model.load(str(version_dir)).signatures
    assert set(parsed.signature_def) >= set(saved)
    label_doc = http.get(model_url(server, cfg, f"/labels/{LABEL}/metadata")).json()
    assert label_doc == doc


# --------------------------------------------------------------------------- predict
def test_predict_serving_default_with_b64_examples(
    server, pushed, reference, converter_example, http
):
    from components.warmup import image_example

    cfg, _ = pushed
    minimal = image_example(tile(3))
    examples = [converter_example, minimal]
    b64 = [{"b64": base64.b64encode(e).decode()} for e in examples]
    expected = expected_probabilities(reference, "serving_default", examples=examples)

    row = http.post(model_url(server, cfg, ":predict"), json={"instances": b64})
    assert row.status_code == 200, row.text
    np.testing.assert_allclose(np.array(row.json()["predictions"]), expected, atol=1e-6)

    named = http.post(
        model_url(server, cfg, "/versions/1:predict"),
        json={"signature_name": "serving_default", "instances": [{"examples": v} for v in b64]},
    )
    np.testing.assert_allclose(np.array(named.json()["predictions"]), expected, atol=1e-6)

    columnar = http.post(model_url(server, cfg, ":predict"), json={"inputs": b64})
    assert set(columnar.json()) == {"outputs"}
    np.testing.assert_allclose(np.array(columnar.json()["outputs"]), expected, atol=1e-6)


def test_predict_image_with_json_floats(server, pushed, reference, http):
    cfg, _ = pushed
    images = np.stack([tile(1), tile(2)])
    expected = expected_probabilities(reference, "predict_image", images=images)
    url = model_url(server, cfg, f"/labels/{LABEL}:predict")
    row = http.post(url, json={"signature_name": "predict_image", "instances": images.tolist()})
    assert row.status_code == 200, row.text
    np.testing.assert_allclose(np.array(row.json()["predictions"]), expected, atol=1e-6)
    columnar = http.post(
        url, json={"signature_name": "predict_image", "inputs": {"images": images.tolist()}}
    )
    np.testing.assert_allclose(np.array(columnar.json()["outputs"]), expected, atol=1e-6)


def test_gzip_request_bodies_are_accepted(server, pushed, reference, http):
    cfg, _ = pushed
    images = tile(5)[None]
    body = gzip.compress(
        json.dumps({"signature_name": "predict_image", "instances": images.tolist()}).encode()
    )
    response = http.post(
        model_url(server, cfg, ":predict"),
        data=body,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    expected = expected_probabilities(reference, "predict_image", images=images)
    np.testing.assert_allclose(np.array(response.json()["predictions"]), expected, atol=1e-6)


# --------------------------------------------------------------------------- errors
def _b64_instance() -> dict:
    from components.warmup import image_example

    return {"b64": base64.b64encode(image_example(tile(0))).decode()}


BAD_REQUESTS = [
    # (id, method, path suffix or absolute path, body, HTTP status, text in the error)
    ("empty body", "POST", ":predict", b"", 400, "The document is empty"),
    ("not json", "POST", ":predict", b"instances = [1, 2]", 400, "JSON Parse error"),
    ("not an object", "POST", ":predict", b"[1, 2]", 400, "Is not object"),
    ("no inputs", "POST", ":predict", b'{"signature_name": "serving_default"}', 400,
     "Missing 'inputs' or 'instances' key"),
    ("both formats", "POST", ":predict", b'{"instances": [1], "inputs": [1]}', 400,
     "expecting only one of 'inputs' or 'instances'"),
    ("empty instances", "POST", ":predict", b'{"instances": []}', 400, "No values in 'instances'"),
    ("signature not a string", "POST", ":predict", b'{"signature_name": 100, "instances": [1]}',
     400, "'signature_name' key must be a string value."),
    ("unknown signature", "POST", ":predict", b'{"signature_name": "nope", "instances": [1]}',
     400, 'Serving signature name: "nope" not found in signature def'),
    ("bad base64", "POST", ":predict", b'{"instances": [{"b64": "%%%"}]}', 400,
     "Unable to base64 decode"),
    ("number for a string input", "POST", ":predict", b'{"instances": [1.5]}', 400,
     "is not of expected type: string"),
    ("string for a float input", "POST", ":predict",
     b'{"signature_name": "predict_image", "instances": [[[["x", 1, 2]]]]}', 400,
     "is not of expected type: float32"),
    ("ragged floats", "POST", ":predict",
     b'{"signature_name": "predict_image", "instances": [[[[1, 2, 3]], [[1, 2]]]]}', 400,
     "not a dense tensor"),
    ("wrong rank", "POST", ":predict",
     b'{"signature_name": "predict_image", "instances": [[1.0, 2.0, 3.0]]}', 400, ""),
    ("not a tf.Example", "POST", ":predict", b'{"instances": ["not an example"]}', 400, ""),
    ("unknown model", "POST", "/v1/models/nope:predict", b'{"instances": [1]}', 404,
     "Servable not found for request: Latest(nope)"),
    ("unknown version", "POST", "/versions/7:predict", b'{"instances": [1]}', 404,
     "Servable not found for request: Specific(tailings, 7)"),
    ("unknown label", "POST", "/labels/canary:predict", b'{"instances": [1]}', 400,
     "Unrecognized servable version label: canary"),
    ("status of unknown model", "GET", "/v1/models/nope", b"", 404,
     "Could not find any versions of model nope"),
    ("status of unknown version", "GET", "/versions/7", b"", 404,
     "Could not find version 7 of model tailings"),
    ("metadata of unknown version", "GET", "/versions/7/metadata", b"", 404,
     "Servable not found for request: Specific(tailings, 7)"),
    ("no model name", "GET", "/v1/models", b"", 400, "Missing model name in request."),
    ("malformed path", "GET", "/v1/foo", b"", 400, "Malformed request: GET /v1/foo"),
    ("predict by GET", "GET", ":predict", b"", 400, "Malformed request"),
    ("version not a number", "POST", "/versions/one:predict", b"{}", 400, "Malformed request"),
    ("version too large", "POST", "/versions/99999999999999999999:predict", b"{}", 400,
     "Failed to convert version"),
    ("classify a predict-only signature", "POST", ":classify", b'{"examples": [{"x": 1}]}', 400,
     "No classification inputs found in SignatureDef: "),
    ("regress a predict-only signature", "POST", ":regress", b'{"examples": [{"x": 1}]}', 400,
     "No regression inputs found in SignatureDef: "),
    ("classify an unknown model", "POST", "/v1/models/nope:classify", b'{"examples": [{}]}',
     404, "Servable not found for request: Latest(nope)"),
    ("bad gzip", "POST", ":predict", b"not gzip", 400, "Failed to decompress gzip"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "text"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_tf_servings_code_and_an_error_body(
    server, pushed, http, method, path, body, status, text
):
    cfg, _ = pushed
    url = server.url + path if path.startswith("/v1") else model_url(server, cfg, path)
    headers = {"Content-Encoding": "gzip"} if b"not gzip" in body else {}
    response = http.request(method, url, data=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    doc = response.json()
    assert set(doc) == {"error"}
    assert text in doc["error"], doc["error"]


def test_body_over_the_limit_gets_413_with_the_limit_in_the_message(server, pushed, http):
    cfg, _ = pushed
    body = b'{"instances": ["' + b"x" * (TEST_BODY_LIMIT + 10) + b'"]}'
    response = http.post(model_url(server, cfg, ":predict"), data=body)
    assert response.status_code == 413
    assert response.json()["error"] == (
        f"Request body of {len(body)} bytes is over the server's limit of {TEST_BODY_LIMIT}"
    )
    # Compressed small, over the limit once decoded: refused without inflating it all.
    bomb = gzip.compress(b" " * (TEST_BODY_LIMIT * 4))
    response = http.post(
        model_url(server, cfg, ":predict"), data=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 413 and "after gzip decoding" in response.json()["error"]


def test_unknown_paths_outside_the_api_get_404(server, http):
    response = http.get(f"{server.url}/index.html")
    assert response.status_code == 404 and "error" in response.json()


# --------------------------------------------------------------------------- load, versions
def test_200_requests_from_4_concurrent_clients_all_succeed(server, pushed, reference, http):
    cfg, _ = pushed
    images = tile(11)[None]
    expected = expected_probabilities(reference, "predict_image", images=images)
    body = json.dumps({"signature_name": "predict_image", "instances": images.tolist()})
    url = model_url(server, cfg, ":predict")

    def client(count: int) -> list[str]:
        failures = []
        with Http() as session:
            for _ in range(count):
                response = session.post(url, data=body, timeout=60)
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                got = np.array(response.json()["predictions"])
                if not np.allclose(got, expected, atol=1e-6):
                    failures.append("wrong predictions")
        return failures

    with ThreadPoolExecutor(4) as pool:
        failures = [f for result in pool.map(client, [50] * 4) for f in result]
    assert failures == []
    metrics = http.get(server.url + METRICS_PATH).text
    line = f'tailings_serving_requests_total{{api="predict",code="200",model="{cfg.model_name}"}}'
    count = next(float(s.split()[-1]) for s in metrics.splitlines() if s.startswith(line))
    assert count >= 200
    assert "tailings_serving_request_seconds_bucket" in metrics
    assert "tailings_serving_model_seconds_count" in metrics
    # TF Serving's own metrics, under its names, so its dashboards work here too.
    line = f':tensorflow:serving:request_count{{model_name="{cfg.model_name}",status="OK"}}'
    assert int(next(s.split()[-1] for s in metrics.splitlines() if s.startswith(line))) >= 200
    runtime = f'model_name="{cfg.model_name}",API="Predict",runtime="TF1"'
    assert f":tensorflow:serving:runtime_latency_count{{{runtime}}}" in metrics


def test_new_version_is_hot_loaded_while_a_client_loops(pushed, tmp_path, http):
    cfg, version_dir = pushed
    base = tmp_path / "models" / cfg.model_name
    copy_version(version_dir, base, 1)
    config = ServerConfig(port=0, poll_seconds=0.2)
    images = tile(4)[None]
    body = json.dumps({"signature_name": "predict_image", "instances": images.tolist()})
    outcomes: list[int] = []
    stop = threading.Event()

    with EmbeddedServer([single_model(base.parent, cfg.model_name)], config) as server:
        url = f"{server.url}/v1/models/{cfg.model_name}"

        def loop() -> None:
            with Http() as session:
                while not stop.is_set():
                    outcomes.append(session.post(url + ":predict", data=body).status_code)

        client = threading.Thread(target=loop)
        client.start()
        try:
            time.sleep(0.5)
            before = len(outcomes)
            copy_version(version_dir, base, 2)
            assert server.manager.wait_available(cfg.model_name, version=2, timeout=60)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                states = http.get(url).json()["model_version_status"]
                if [(s["version"], s["state"]) for s in states] == [
                    ("2", "AVAILABLE"),
                    ("1", "END"),
                ]:
                    break
                time.sleep(0.1)
            assert [(s["version"], s["state"]) for s in states] == [
                ("2", "AVAILABLE"),
                ("1", "END"),
            ]
            assert http.get(url + "/metadata").json()["model_spec"]["version"] == "2"
            time.sleep(0.3)
        finally:
            stop.set()
            client.join(timeout=60)
    assert len(outcomes) > before + 3, "the client did not keep sending during the switch"
    assert set(outcomes) == {200}, sorted(set(outcomes))


def test_version_that_fails_to_load_is_reported_and_the_old_one_keeps_serving(
    pushed, tmp_path, http
):
    cfg, version_dir = pushed
    base = tmp_path / "models" / cfg.model_name
    copy_version(version_dir, base, 1)
    config = ServerConfig(port=0, poll_seconds=0.1, load_retries=1, load_retry_seconds=0.1)
    with EmbeddedServer([single_model(base.parent, cfg.model_name)], config) as server:
        url = f"{server.url}/v1/models/{cfg.model_name}"
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        broken.rename(base / "2")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = {s["version"]: s for s in http.get(url).json()["model_version_status"]}
            if states.get("2", {}).get("state") == "END":
                break
            time.sleep(0.1)
        assert states["2"]["state"] == "END"
        assert states["2"]["status"]["error_code"] != "OK"
        assert str(base / "2" / "saved_model.pb") in states["2"]["status"]["error_message"]
        # Availability is preserved: version 1 is not unloaded for a version that never loaded.
        assert states["1"]["state"] == "AVAILABLE"
        assert http.get(url + "/metadata").json()["model_spec"]["version"] == "1"

        # Replaced by a complete copy under the same number, after a poll has seen it gone,
        # it loads (TF Serving forgets a failed version once it leaves the disk).
        shutil.rmtree(base / "2")
        polls = server.manager.polls
        deadline = time.monotonic() + 30
        while server.manager.polls < polls + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        copy_version(version_dir, base, 2)
        assert server.manager.wait_available(cfg.model_name, version=2, timeout=120)
        assert http.get(url + "/metadata").json()["model_spec"]["version"] == "2"
