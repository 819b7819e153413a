"""The JSON side of TF Serving's REST contract, without a server: inputs in, outputs out."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest
from tensorflow.core.protobuf import meta_graph_pb2

from serving import rest
from serving.client import dense_predictions
from serving.errors import ServingError


def info(dtype: int, dims: list[int] | None = None):
    tensor = meta_graph_pb2.TensorInfo(dtype=dtype)
    for size in dims or []:
        tensor.tensor_shape.dim.add(size=size)
    return tensor


FLOAT, STRING, INT32 = 1, 7, 3
IMAGES = {"images": info(FLOAT, [-1, -1, -1, 3])}
EXAMPLES = {"examples": info(STRING, [-1])}


@pytest.mark.parametrize("shape", [(1, 448, 448, 1), (2, 3, 4, 1), (5, 1), (1, 1), (3, 1, 1)])
def test_trailing_one_shortcut_writes_exactly_orjsons_text(shape):
    array = np.random.default_rng(0).random(shape, dtype=np.float32)
    expected = orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)
    assert rest.numbers_json(array) == expected
    assert rest.numbers_json(array.astype(np.int32)) == orjson.dumps(
        array.astype(np.int32), option=orjson.OPT_SERIALIZE_NUMPY
    )


def test_predictions_round_trip_exactly_through_the_fast_decoder():
    probabilities = np.random.default_rng(1).random((2, 64, 64, 1), dtype=np.float32)
    body = rest.predict_response({"probabilities": probabilities}, row_format=True)
    parsed = np.asarray(orjson.loads(body)["predictions"], dtype=np.float32)
    np.testing.assert_array_equal(parsed, probabilities)  # float32 text is exact
    np.testing.assert_array_equal(dense_predictions(body, probabilities.shape), probabilities)
    # TF Serving pretty-prints; the decoder reads that too.
    pretty = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2)
    np.testing.assert_array_equal(dense_predictions(pretty, probabilities.shape), probabilities)
    with pytest.raises(Exception, match="shape"):
        dense_predictions(body, (2, 64, 63, 1))


def test_outputs_formats_follow_json_tensor():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([b"x", b"\xff"], dtype=object)
    one = orjson.loads(rest.predict_response({"y": a}, row_format=False))
    assert one == {"outputs": a.tolist()}
    two = orjson.loads(rest.predict_response({"y": a, "z_bytes": b}, row_format=True))
    assert two == {
        "predictions": [
            {"y": [0.0, 1.0, 2.0], "z_bytes": {"b64": "eA=="}},
            {"y": [3.0, 4.0, 5.0], "z_bytes": {"b64": "/w=="}},
        ]
    }
    nan = rest.predict_response({"y": np.array([np.nan, np.inf], np.float32)}, row_format=True)
    assert nan == b'{"predictions": [NaN, Infinity]}'
    with pytest.raises(ServingError, match="inconsistent batch size"):
        rest.predict_response({"y": a, "z": np.zeros(3)}, row_format=True)


def test_row_and_columnar_inputs():
    image = np.zeros((2, 2, 3)).tolist()
    arrays, row = rest.predict_inputs({"instances": [image, image]}, IMAGES)
    assert row and arrays["images"].shape == (2, 2, 2, 3) and arrays["images"].dtype == np.float32
    arrays, row = rest.predict_inputs({"inputs": {"images": [image]}}, IMAGES)
    assert not row and arrays["images"].shape == (1, 2, 2, 3)
    encoded = base64.b64encode(b"\x00\x01example").decode().rstrip("=")  # padding optional
    arrays, _ = rest.predict_inputs({"instances": [{"b64": encoded}, "text"]}, EXAMPLES)
    assert arrays["examples"].tolist() == [b"\x00\x01example", b"text"]
    arrays, _ = rest.predict_inputs({"instances": [{"examples": {"b64": encoded}}]}, EXAMPLES)
    assert arrays["examples"].tolist() == [b"\x00\x01example"]


@pytest.mark.parametrize(
    ("doc", "infos", "message"),
    [
        ({"instances": [{"b64": "ab$d"}]}, EXAMPLES, "Unable to base64 decode"),
        ({"instances": [[1e39, 0, 0]]}, IMAGES, "without loss of precision"),
        ({"instances": [True]}, IMAGES, "is not of expected type: float32"),
        ({"instances": [2**40]}, {"n": info(INT32)}, "out of range for int32"),
        ({"instances": [1.5]}, {"n": info(INT32)}, "is not of expected type: int32"),
        ({"instances": [["a", "b"], ["c"]]}, EXAMPLES, "not a dense tensor"),
        ({"instances": [{"other": 1}]}, EXAMPLES, "does not have named input: other"),
        ({"instances": [1], "x": 1, "inputs": [1]}, EXAMPLES, "only one of 'inputs'"),
        ({"instances": {"a": 1}}, EXAMPLES, "to be an list/array"),
        ({"inputs": {"x": 1}}, {**IMAGES, **EXAMPLES}, "Missing named input: examples"),
        ({"inputs": [1]}, {**IMAGES, **EXAMPLES}, "expecting an object as multiple input"),
    ],
)
def test_bad_inputs_are_invalid_argument(doc, infos, message):
    with pytest.raises(ServingError) as err:
        rest.predict_inputs(doc, infos)
    assert err.value.http_status == 400 and message in err.value.message


def test_request_json_errors():
    for body, message in ((b"  ", "The document is empty"), (b"{", "JSON Parse error")):
        with pytest.raises(ServingError, match=message):
            rest.parse_json(body)
    assert rest.parse_json(b'{"instances": [NaN, Infinity]}')["instances"][1] == float("inf")
    assert rest.signature_name({"signature_name": ""}) == "serving_default"


def test_gc_pause_nests_across_threads_and_restores_the_collector():
    import gc
    import threading

    from serving.server import gc_paused

    assert gc.isenabled()
    inside = threading.Event()
    release = threading.Event()

    def other_request() -> None:
        with gc_paused():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other_request)
    thread.start()
    inside.wait(10)
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other request is still parsing
    release.set()
    thread.join()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()
