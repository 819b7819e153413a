"""The embedded server's HTTP behaviour against TF Serving's source, with a stand-in model.

No SavedModel is trained or loaded: the manager's loader returns a Servable whose signatures
are written here, so these tests run in seconds. What they check is what TF Serving's HTTP
server does (model_servers/http_server.cc, http_rest_api_handler.cc, util/json_tensor.cc,
servables/tensorflow/classifier.cc and regressor.cc, util/prometheus_exporter.cc).
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from serving.config import METRICS_PATH, ServerConfig
from serving.errors import INVALID_ARGUMENT, NOT_FOUND, OK
from serving.manager import ModelManager
from serving.metrics import TFS_LATENCY_LIMITS, TFServingMetrics
from serving.model_config import ModelEntry
from serving.servable import Servable
from serving.server import EmbeddedServer
from tests.serving.conftest import REQUEST_TIMEOUT, Http

LIMIT = 64 * 1024  # the body limit of these servers
DT_FLOAT, DT_STRING = 1, 7  # tensorflow.DataType


def signature(inputs: dict[str, int], outputs: dict[str, int], method: str):
    from tensorflow.core.protobuf import meta_graph_pb2

    sig = meta_graph_pb2.SignatureDef(method_name=method)
    for infos, spec in ((sig.inputs, inputs), (sig.outputs, outputs)):
        for alias, dtype in spec.items():
            infos[alias].name = f"{alias}:0"
            infos[alias].dtype = dtype
            infos[alias].tensor_shape.unknown_rank = True
    return sig


def signatures() -> dict:
    return {
        # Predict-only, as every signature our pipeline exports.
        "serving_default": signature(
            {"x": DT_FLOAT}, {"y": DT_FLOAT}, "tensorflow/serving/predict"
        ),
        "classification": signature(
            {"inputs": DT_STRING},
            {"classes": DT_STRING, "scores": DT_FLOAT},
            "tensorflow/serving/classify",
        ),
        "regression": signature(
            {"inputs": DT_STRING}, {"outputs": DT_FLOAT}, "tensorflow/serving/regress"
        ),
    }


class DoublingServable(Servable):
    """serving_default: y = 2 x, without TensorFlow running anything."""

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.input_infos(signature_name)
        return {"y": np.asarray(inputs["x"], np.float32) * 2}


def load(name: str, version: int, path: Path) -> Servable:
    defs = signatures()
    return DoublingServable(name, version, path, defs, dict.fromkeys(defs))


def start_server(tmp_path: Path, **config) -> EmbeddedServer:
    base = tmp_path / "m"
    (base / "1").mkdir(parents=True)
    entries = [ModelEntry("m", base)]
    cfg = ServerConfig(port=0, max_body_bytes=LIMIT, warmup=False, **config)
    server = EmbeddedServer(entries, cfg, manager=ModelManager(entries, cfg, loader=load))
    server.start()
    assert server.manager.wait_available("m", timeout=REQUEST_TIMEOUT)
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("http"))
    yield server
    server.stop()


@pytest.fixture
def http():
    with Http() as session:
        yield session


def raw(server: EmbeddedServer, request: bytes) -> tuple[int, str, bytes]:
    """Send bytes, read until the server closes: (status, head, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=REQUEST_TIMEOUT) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode("latin-1"), body


# --------------------------------------------------------------------------- OPTIONS, HEAD
def test_options_is_tf_servings_cors_preflight(server, http):
    """Issue 16, 4: http_server.cc:170-177, an Origin with a scheme is OK, else 400; no body."""
    url = f"{server.url}/v1/models/m:predict"
    response = http.options(url, headers={"Origin": "https://app.example"})
    assert (response.status_code, response.content) == (200, b"")
    assert "Access-Control-Allow-Origin" not in response.headers  # CORS support is off
    response = http.options(url)
    assert (response.status_code, response.content) == (400, b"")
    assert http.options(url, headers={"Origin": "app.example"}).status_code == 400


def test_cors_support_adds_tf_servings_headers(tmp_path, http):
    server = start_server(tmp_path, enable_cors=True)
    try:
        for response in (
            http.options(f"{server.url}/v1/models/m", headers={"Origin": "http://a.example"}),
            http.get(f"{server.url}/v1/models/m"),
            http.get(f"{server.url}/v1/models/nope"),
        ):
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert response.headers["Access-Control-Allow-Methods"] == "POST, GET"
            assert response.headers["Access-Control-Allow-Headers"] == "Content-Type"
    finally:
        server.stop()


def test_head_is_malformed_as_in_tf_serving(server, http):
    response = http.head(f"{server.url}/v1/models/m")
    assert response.status_code == 400 and response.content == b""


# --------------------------------------------------------------------------- body limit
def test_413_reports_the_body_size(server, http):
    """Issue 16, 4: the message said twice the size (Content-Length plus the bytes read)."""
    body = b"x" * (LIMIT + 10)
    response = http.post(f"{server.url}/v1/models/m:predict", data=body)
    assert response.status_code == 413
    assert response.json() == {
        "error": f"Request body of {LIMIT + 10} bytes is over the server's limit of {LIMIT}"
    }


def test_body_over_twice_the_limit_gets_the_413_json(server, http):
    """Issue 16, 4: Tornado's own limit answered an empty 400 beyond twice the limit."""
    url = f"{server.url}/v1/models/m:predict"
    response = http.post(url, data=b"x" * (5 * LIMIT))
    assert response.status_code == 413, response.content
    assert f"{5 * LIMIT} bytes" in response.json()["error"]
    # Chunked, no Content-Length: counted as read.
    response = http.post(url, data=(b"x" * LIMIT for _ in range(5)))
    assert response.status_code == 413 and f"{5 * LIMIT} bytes" in response.json()["error"]
    # The connection was kept: the same session still works.
    assert http.get(f"{server.url}/v1/models/m").status_code == 200


def test_client_expecting_100_continue_gets_the_413_before_sending(server):
    status, head, body = raw(
        server,
        b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n"
        b"Expect: 100-continue\r\n\r\n",
    )
    assert status == 413 and "100 Continue" not in head
    assert b"10000000000 bytes" in body


# --------------------------------------------------------------------------- classify, regress
BASE = "/v1/models/m"
EXAMPLES = b'{"examples": [{"f": [1.5, 2.5], "g": {"b64": "YWJj"}}]}'
CLASSIFY_REGRESS = [
    # (id, path, body, HTTP status, text in the error) - TF Serving's texts
    ("predict-only signature", f"{BASE}:classify", EXAMPLES, 400,
     "No classification inputs found in SignatureDef: "),
    ("predict-only signature (regress)", f"{BASE}:regress", EXAMPLES, 400,
     "No regression inputs found in SignatureDef: "),
    ("unknown model", "/v1/models/nope:classify", EXAMPLES, 404,
     "Servable not found for request: Latest(nope)"),
    ("unknown version", f"{BASE}/versions/7:regress", EXAMPLES, 404,
     "Servable not found for request: Specific(m, 7)"),
    ("unknown label", f"{BASE}/labels/x:classify", EXAMPLES, 400,
     "Unrecognized servable version label: x"),
    ("unknown signature", f"{BASE}:classify",
     b'{"signature_name": "nope", "examples": [{}]}', 400,
     "No signature was found with the name: nope"),
    ("no examples", f"{BASE}:regress", b'{"signature_name": "regression"}', 400,
     "When method is classify, key 'examples' is expected and was not found"),
    ("examples not a list", f"{BASE}:classify", b'{"examples": {}}', 400,
     "Expecting 'examples' value to be an list/array"),
    ("no example", f"{BASE}:classify", b'{"examples": []}', 400,
     "'examples' value is an empty array"),
    ("example not an object", f"{BASE}:classify", b'{"examples": [1]}', 400,
     "Example must be JSON object but got JSON Number"),
    ("mixed feature kinds", f"{BASE}:classify", b'{"examples": [{"f": [1, "a"]}]}', 400,
     "Unexpected element type in feature: f expecting type: int64"),
    ("null feature", f"{BASE}:classify", b'{"examples": [{"f": null}]}', 400,
     "Feature: f has element with unexpected JSON type: Null"),
    ("bad context", f"{BASE}:classify", b'{"context": [], "examples": [{}]}', 400,
     "Example must be JSON object but got JSON Array"),
    ("two outputs to regress", f"{BASE}:regress",
     b'{"signature_name": "classification", "examples": [{}]}', 400,
     "Expected one output Tensor."),
    ("regression outputs to classify", f"{BASE}:classify",
     b'{"signature_name": "regression", "examples": [{}]}', 400,
     'Expected classification signature outputs to contain at least one of "classes" or '
     '"scores". Signature was: '),
    ("a classification signature", f"{BASE}:classify",
     b'{"signature_name": "classification", "examples": [{"f": 1}]}', 501,
     "the embedded server runs :predict only"),
    ("a regression signature", f"{BASE}:regress",
     b'{"signature_name": "regression", "examples": [{"f": 1}]}', 501,
     "the embedded server runs :predict only"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "status", "text"),
    [case[1:] for case in CLASSIFY_REGRESS],
    ids=[case[0] for case in CLASSIFY_REGRESS],
)
def test_classify_and_regress_are_checked_as_tf_serving_does(
    server, http, path, body, status, text
):
    """Issue 16, 2: they answered 501 whatever the request; TF Serving answers 400 for a
    predict-only signature and 404 for an unknown model."""
    response = http.post(server.url + path, data=body)
    assert response.status_code == status, response.text
    assert text in response.json()["error"], response.json()["error"]


# --------------------------------------------------------------------------- metrics
def test_tf_serving_metrics_are_exported_under_its_names(tmp_path, http):
    """Issue 16, 5: TF Serving's names, labels and microsecond buckets, ours beside them."""
    server = start_server(tmp_path)
    try:
        body = {"instances": [[1.0, 2.0]]}
        assert http.post(f"{server.url}/v1/models/m:predict", json=body).json() == {
            "predictions": [[2.0, 4.0]]
        }
        assert http.get(f"{server.url}/v1/models/m").status_code == 200
        assert http.post(f"{server.url}/v1/models/m:predict", data=b"{").status_code == 400
        page = http.get(server.url + METRICS_PATH).text
    finally:
        server.stop()
    lines = page.splitlines()
    count = ":tensorflow:serving:request_count"
    assert f"# TYPE {count} counter" in lines
    assert f'{count}{{model_name="m",status="OK"}} 2' in lines
    assert f'{count}{{model_name="m",status="INVALID_ARGUMENT"}} 1' in lines
    latency = ":tensorflow:serving:request_latency"
    assert f"# TYPE {latency} histogram" in lines
    predict = 'model_name="m",API="predict",entrypoint="REST"'
    buckets = [line for line in lines if line.startswith(f"{latency}_bucket{{{predict},")]
    assert len(buckets) == 34  # 33 limits, 10 us x 1.8^i, then +Inf
    assert buckets[0].startswith(f'{latency}_bucket{{{predict},le="10"}} ')
    assert buckets[2].startswith(f'{latency}_bucket{{{predict},le="32.4"}} ')
    assert buckets[-1] == f'{latency}_bucket{{{predict},le="+Inf"}} 1'
    assert f"{latency}_count{{{predict}}} 1" in lines
    assert f'{latency}_count{{model_name="m",API="",entrypoint="REST"}} 1' in lines  # status
    runtime = ":tensorflow:serving:runtime_latency"
    assert f'{runtime}_count{{model_name="m",API="Predict",runtime="TF1"}} 1' in lines
    # This project's metrics, in seconds, stay beside them.
    assert 'tailings_serving_requests_total{api="predict",code="200",model="m"} 1.0' in lines


def test_tf_serving_histograms_are_written_as_its_exporter_writes_them():
    """util/prometheus_exporter_test.cc's Histogram case, with request_latency's buckets: a
    value lands in the first bucket whose limit is above it (10 us goes under le="18")."""
    metrics = TFServingMetrics()
    for micros in (2, 10, 20, 200):
        metrics.request("m", OK, "predict", micros, "REST")
    metrics.request("m", NOT_FOUND, "predict", 5, "REST")  # counted, no latency
    metrics.request("m", INVALID_ARGUMENT, "", 5, "REST")
    page = metrics.page()
    labels = 'model_name="m",API="predict",entrypoint="REST"'
    expected_start = [
        "# TYPE :tensorflow:serving:request_count counter",
        ':tensorflow:serving:request_count{model_name="m",status="INVALID_ARGUMENT"} 1',
        ':tensorflow:serving:request_count{model_name="m",status="NOT_FOUND"} 1',
        ':tensorflow:serving:request_count{model_name="m",status="OK"} 4',
        "# TYPE :tensorflow:serving:request_latency histogram",
        f':tensorflow:serving:request_latency_bucket{{{labels},le="10"}} 1',
        f':tensorflow:serving:request_latency_bucket{{{labels},le="18"}} 2',
        f':tensorflow:serving:request_latency_bucket{{{labels},le="32.4"}} 3',
        f':tensorflow:serving:request_latency_bucket{{{labels},le="58.32"}} 3',
        f':tensorflow:serving:request_latency_bucket{{{labels},le="104.976"}} 3',
        f':tensorflow:serving:request_latency_bucket{{{labels},le="188.957"}} 3',
        f':tensorflow:serving:request_latency_bucket{{{labels},le="340.122"}} 4',
    ]
    lines = page.splitlines()
    assert lines[: len(expected_start)] == expected_start
    assert lines[len(expected_start) + 25 :] == [
        f':tensorflow:serving:request_latency_bucket{{{labels},le="1.47476e+09"}} 4',
        f':tensorflow:serving:request_latency_bucket{{{labels},le="+Inf"}} 4',
        f":tensorflow:serving:request_latency_sum{{{labels}}} 232",
        f":tensorflow:serving:request_latency_count{{{labels}}} 4",
        "# TYPE :tensorflow:serving:runtime_latency histogram",
    ]
    assert len(TFS_LATENCY_LIMITS) == 33 and page.endswith("\n")
