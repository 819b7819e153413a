"""TF Serving's gRPC API on the embedded server, called with the stock tensorflow-serving-api stubs.

Expected codes and messages are TF Serving's (serving/grpc_api.py names the source files).
"""

from __future__ import annotations

import re
import socket

import grpc
import numpy as np
import pytest
import rasterio
import requests
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from components import trainer_lib
from components.warmup import image_example, read_signatures
from serving.config import METRICS_PATH, ServerConfig
from serving.grpc_api import GrpcServer
from serving.model_config import load_model_config
from serving.predict import PredictError, RemoteModel
from serving.server import EmbeddedServer
from tailings.cli import main
from tests.fixtures.geotiffs import scene, write_geotiff
from tests.fixtures.pipeline import TILE
from tests.serving.conftest import REQUEST_TIMEOUT, copy_version, write_models_config

pytestmark = pytest.mark.slow

NAME = "tailings"  # the model name in the test server's config
LABELS = {"stable": 1, "canary": 2}


def tile(seed: int) -> np.ndarray:
    image, _ = scene(TILE, TILE, seed=seed)
    return np.moveaxis(image, 0, -1)  # [H, W, 3] float32


@pytest.fixture(scope="module")
def grpc_server(pushed, tmp_path_factory):
    """The embedded server with gRPC on free ports: versions 1 and 2 (copies of the pushed
    model) served side by side (policy `all`), labels stable -> 1 and canary -> 2."""
    _, version_dir = pushed
    root = tmp_path_factory.mktemp("grpc")
    base_path = root / "models" / NAME
    for version in (1, 2):
        copy_version(version_dir, base_path, version)
    labels = "".join(f'    version_labels {{ key: "{k}" value: {v} }}\n' for k, v in LABELS.items())
    config = write_models_config(
        root / "models.config",
        NAME,
        base_path,
        extra="    model_version_policy { all {} }\n" + labels,
    )
    entries = load_model_config(config, models_dir=root / "models")
    server = EmbeddedServer(entries, ServerConfig(port=0, threads=2), grpc_port=0)
    server.start()
    assert server.manager.wait_available(NAME, 1, timeout=120)
    assert server.manager.wait_available(NAME, 2, timeout=120)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def channel(grpc_server):
    with grpc.insecure_channel(grpc_server.grpc.address) as chan:
        yield chan


@pytest.fixture(scope="module")
def predictions(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(signature: str = "", spec: dict | None = None, **inputs) -> object:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = NAME
    if signature:
        request.model_spec.signature_name = signature
    for key, value in (spec or {}).items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return request


def call(method, request):
    return method(request, timeout=REQUEST_TIMEOUT)


def rpc_error(method, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(method, request)
    return caught.value


# --------------------------------------------------------------------------- Predict
def test_predict_equals_the_in_process_model(predictions, reference, converter_example):
    examples = [converter_example, image_example(tile(3))]
    response = call(predictions.Predict, predict_request(examples=examples))
    expected = reference.signatures["serving_default"](examples=tf.constant(examples))
    assert set(response.outputs) == {trainer_lib.PROBABILITIES}
    probabilities = tf.make_ndarray(response.outputs[trainer_lib.PROBABILITIES])
    assert probabilities.shape == (2, TILE, TILE, 1) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, expected[trainer_lib.PROBABILITIES], atol=1e-6)
    # The latest version answered; the response names it and the default signature.
    spec = response.model_spec
    assert (spec.name, spec.signature_name, spec.version.value) == (NAME, "serving_default", 2)

    images = np.stack([tile(1), tile(2)])
    response = call(predictions.Predict, predict_request("predict_image", images=images))
    expected = reference.signatures["predict_image"](images=tf.constant(images))
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs[trainer_lib.PROBABILITIES]),
        expected[trainer_lib.PROBABILITIES],
        atol=1e-6,
    )


def test_output_filter_returns_only_the_named_outputs(predictions, reference, converter_example):
    request = predict_request("transform_features", examples=[converter_example])
    everything = call(predictions.Predict, request)
    expected = reference.signatures["transform_features"](examples=tf.constant([converter_example]))
    assert set(everything.outputs) == set(expected)
    assert tf.make_ndarray(everything.outputs["pair_id"]).tolist() == [b"x"]  # a string output
    request.output_filter.extend(["pixel_std", "pixel_mean"])
    filtered = call(predictions.Predict, request)
    assert set(filtered.outputs) == {"pixel_std", "pixel_mean"}
    for alias in ("pixel_std", "pixel_mean"):
        np.testing.assert_allclose(
            tf.make_ndarray(filtered.outputs[alias]), expected[alias], atol=1e-6
        )


def test_version_and_label_choose_the_version(predictions):
    examples = [image_example(tile(4))]
    cases = [({}, 2), ({"version": 1}, 1), ({"version": 2}, 2)]
    cases += [({"version_label": label}, version) for label, version in LABELS.items()]
    for spec, version in cases:
        response = call(predictions.Predict, predict_request(spec=spec, examples=examples))
        assert response.model_spec.version.value == version, spec
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.CopyFrom(predict_request(spec=spec).model_spec)
        assert call(predictions.GetModelMetadata, request).model_spec.version.value == version


# --------------------------------------------------------------------------- metadata, status
def test_metadata_returns_the_signature_defs(predictions, pushed):
    _, version_dir = pushed
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = NAME
    response = call(predictions.GetModelMetadata, request)
    assert (response.model_spec.name, response.model_spec.version.value) == (NAME, 2)
    assert list(response.metadata) == ["signature_def"]
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    assert dict(signature_map.signature_def) == read_signatures(str(version_dir))
    serving = signature_map.signature_def["serving_default"]
    assert [d.size for d in serving.outputs[trainer_lib.PROBABILITIES].tensor_shape.dim] == [
        -1,
        TILE,
        TILE,
        1,
    ]


def test_status_lists_versions_and_states(models, grpc_server):
    def status(**spec):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = spec.pop("name", NAME)
        if "version" in spec:
            request.model_spec.version.value = spec["version"]
        if "version_label" in spec:
            request.model_spec.version_label = spec["version_label"]
        response = call(models.GetModelStatus, request)
        return [
            (s.version, get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
             s.status.error_code, s.status.error_message)
            for s in response.model_version_status
        ]  # fmt: skip

    available = [(2, "AVAILABLE", 0, ""), (1, "AVAILABLE", 0, "")]
    assert status() == available  # newest first
    assert status(version=1) == [(1, "AVAILABLE", 0, "")]
    # get_model_status_impl.cc looks at the version only: a label gives every version.
    assert status(version_label="stable") == available
    # The REST API serves the same manager: the same versions in the same states.
    rest = requests.get(f"{grpc_server.url}/v1/models/{NAME}", timeout=REQUEST_TIMEOUT).json()
    assert [(int(s["version"]), s["state"]) for s in rest["model_version_status"]] == [
        (v, state) for v, state, _, _ in available
    ]


# --------------------------------------------------------------------------- errors
def _bad_tensor() -> object:
    proto = tf.make_tensor_proto(np.zeros((1, 4, 4, 3), np.float32))
    proto.tensor_content = proto.tensor_content[:-4]  # one float short of its shape
    return proto


# (id, request changes, gRPC status, start of TF Serving's message)
PREDICT_ERRORS = [
    ("unknown model", {"name": "nope"}, "NOT_FOUND",
     "Servable not found for request: Latest(nope)"),
    ("unknown version", {"version": 9}, "NOT_FOUND",
     f"Servable not found for request: Specific({NAME}, 9)"),
    ("unknown label", {"version_label": "beta"}, "INVALID_ARGUMENT",
     "Unrecognized servable version label: beta"),
    ("label of an unknown model", {"name": "nope", "version_label": "stable"}, "INVALID_ARGUMENT",
     "Unrecognized servable version label: stable"),
    ("no model name", {"name": ""}, "INVALID_ARGUMENT", "ModelSpec has no name specified."),
    ("unknown signature", {"signature_name": "nope"}, "FAILED_PRECONDITION",
     'Serving signature key "nope" not found.'),
    ("bad input shape", {"signature_name": "predict_image",
                         "inputs": {"images": np.zeros((2, 8, 8, 4), np.float32)}},
     "INVALID_ARGUMENT", "input 'images' has shape [2, 8, 8, 4]; the signature takes [?, ?, ?, 3]"),
    ("input of the wrong type", {"signature_name": "predict_image",
                                 "inputs": {"images": np.array(["x"], dtype=object)}},
     "INVALID_ARGUMENT", "Expects arg[0] to be float but string is provided"),
    ("extra input", {"extra": {"pixels": [b"x"]}}, "INVALID_ARGUMENT",
     "input size does not match signature: 2!=1 len({examples,pixels}) != len({examples}). "
     "Sent extra: {pixels}. Missing but required: {}."),
    ("unknown input name", {"inputs": {"pixels": [b"x"]}}, "INVALID_ARGUMENT",
     "Signature input alias: examples(feed name: "),
    ("missing input", {"inputs": {}}, "INVALID_ARGUMENT",
     "input size does not match signature: 0!=1 len({}) != len({examples}). Sent extra: {}. "
     "Missing but required: {examples}."),
    ("tensor that does not parse", {"signature_name": "predict_image",
                                    "inputs": {"images": _bad_tensor()}},
     "INVALID_ARGUMENT", "tensor parsing error: images"),
    ("unknown output", {"output_filter": ["nope"]}, "INVALID_ARGUMENT",
     "output tensor alias not found in signature: nope Outputs expected to be in the set "
     "{probabilities}."),
    ("repeated output", {"output_filter": ["probabilities"] * 2}, "INVALID_ARGUMENT",
     "duplicate output tensor alias: probabilities"),
    ("not a tf.Example", {"inputs": {"examples": [b"not an example"]}}, "INVALID_ARGUMENT",
     "Could not parse example input"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "code", "message"),
    [case[1:] for case in PREDICT_ERRORS],
    ids=[case[0] for case in PREDICT_ERRORS],
)
def test_predict_errors_are_tf_servings(predictions, changes, code, message):
    request = predict_request(examples=[image_example(tile(0))])
    changes = dict(changes)
    for key in ("name", "signature_name", "version_label"):
        if key in changes:
            setattr(request.model_spec, key, changes.pop(key))
    if "version" in changes:
        request.model_spec.version.value = changes.pop("version")
    request.output_filter.extend(changes.pop("output_filter", []))
    if "inputs" in changes:  # replace the default examples
        request.ClearField("inputs")
    for alias, value in {**changes.get("inputs", {}), **changes.get("extra", {})}.items():
        proto = value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        request.inputs[alias].CopyFrom(proto)
    error = rpc_error(predictions.Predict, request)
    assert error.code().name == code, error.details()
    assert error.details().startswith(message), error.details()


def test_request_errors_of_the_other_calls_are_tf_servings(predictions, models):
    cases = [
        (predictions.Predict, predict_pb2.PredictRequest(), "INVALID_ARGUMENT",
         "Missing ModelSpec"),
        (predictions.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(),
         "INVALID_ARGUMENT", "Missing ModelSpec"),
        (models.GetModelStatus, get_model_status_pb2.GetModelStatusRequest(), "INVALID_ARGUMENT",
         "Missing ModelSpec"),
    ]  # fmt: skip
    metadata = get_model_metadata_pb2.GetModelMetadataRequest
    status = get_model_status_pb2.GetModelStatusRequest
    cases += [
        (predictions.GetModelMetadata, metadata(model_spec={"name": NAME}), "INVALID_ARGUMENT",
         "GetModelMetadataRequest must specify at least one metadata_field"),
        (predictions.GetModelMetadata,
         metadata(model_spec={"name": NAME}, metadata_field=["signature_def", "x"]),
         "INVALID_ARGUMENT", "Metadata field x is not supported"),
        (predictions.GetModelMetadata,
         metadata(model_spec={"name": "nope"}, metadata_field=["signature_def"]),
         "NOT_FOUND", "Servable not found for request: Latest(nope)"),
        (models.GetModelStatus, status(model_spec={"name": "nope"}), "NOT_FOUND",
         "Could not find any versions of model nope"),
        (models.GetModelStatus, status(model_spec={"name": NAME, "version": {"value": 7}}),
         "NOT_FOUND", f"Could not find version 7 of model {NAME}"),
        # classifier.cc / regressor.cc refuse a predict-only signature, as all of ours are.
        (predictions.Classify, classification_pb2.ClassificationRequest(model_spec={"name": NAME}),
         "INVALID_ARGUMENT", "No classification inputs found in SignatureDef"),
        (predictions.Regress, regression_pb2.RegressionRequest(model_spec={"name": NAME}),
         "INVALID_ARGUMENT", "No regression inputs found in SignatureDef"),
        (predictions.Classify, classification_pb2.ClassificationRequest(model_spec={"name": "x"}),
         "NOT_FOUND", "Servable not found for request: Latest(x)"),
        (models.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest(),
         "UNIMPLEMENTED", "HandleReloadConfigRequest is not implemented"),
    ]  # fmt: skip
    for method, request, code, message in cases:
        error = rpc_error(method, request)
        assert (error.code().name, error.details()[: len(message)]) == (code, message)


def test_grpc_calls_are_in_tf_servings_metrics(grpc_server, predictions):
    """prediction_service_impl.cc: request_count for every Predict (by status), request_latency
    with entrypoint GRPC for the successful ones; one Prometheus page with REST's."""

    def counts() -> dict[str, float]:
        page = requests.get(f"{grpc_server.url}{METRICS_PATH}", timeout=REQUEST_TIMEOUT).text
        keys = {
            "ok": f':tensorflow:serving:request_count{{model_name="{NAME}",status="OK"}}',
            "not_found": ':tensorflow:serving:request_count{model_name="",status="NOT_FOUND"}',
            "latency": ":tensorflow:serving:request_latency_count"
            f'{{model_name="{NAME}",API="Predict",entrypoint="GRPC"}}',
        }
        values = dict(line.rsplit(" ", 1) for line in page.splitlines() if " " in line)
        return {key: float(values.get(name, 0)) for key, name in keys.items()}

    before = counts()
    for _ in range(2):
        call(predictions.Predict, predict_request(examples=[image_example(tile(6))]))
    unknown = predict_request(examples=[b""])
    unknown.model_spec.name = "not-configured"  # counted under "": no label per bad name
    rpc_error(predictions.Predict, unknown)
    after = counts()
    assert {key: after[key] - before[key] for key in after} == {
        "ok": 2,
        "not_found": 1,
        "latency": 2,
    }


def test_a_busy_grpc_port_is_refused(grpc_server):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = GrpcServer(grpc_server.manager, "127.0.0.1", sock.getsockname()[1])
        with pytest.raises(OSError, match="gRPC address 127.0.0.1:\\d+ is in use"):
            server.bind()
    # A second server on the first one's port is refused too (no SO_REUSEPORT sharing).
    with pytest.raises(OSError, match="is in use"):
        GrpcServer(grpc_server.manager, "127.0.0.1", grpc_server.grpc.port).bind()


# --------------------------------------------------------------------------- tailings predict
def test_tailings_predict_over_grpc_gives_the_local_mask(grpc_server, pushed, tmp_path, capsys):
    cfg, _ = pushed
    image, _ = scene(100, 130, seed=8, blobs=2)
    scene_path = write_geotiff(tmp_path / "scene.tif", image)
    common = ["--tile", str(TILE), "--overlap", "16", "--threshold", "0.5"]
    local = ["predict", str(scene_path), "--out", str(tmp_path / "a.tif"), "--model"]
    assert main([*local, str(cfg.push_dir), *common]) == 0
    url = grpc_server.grpc.url
    assert re.fullmatch(r"grpc://127\.0\.0\.1:\d+", url)
    remote = ["predict", str(scene_path), "--out", str(tmp_path / "b.tif"), "--server", url]
    assert main([*remote, "--model-name", NAME, *common]) == 0
    assert f"({url} (model {NAME}))" in capsys.readouterr().err
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_grpc_server_down_is_a_clear_error():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PredictError, match="cannot connect to the model server.*tailings serve"):
        RemoteModel.connect(f"grpc://127.0.0.1:{port}", NAME, timeout=5)
