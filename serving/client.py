"""TF Serving clients (REST and gRPC): work against the embedded server and tensorflow_model_server.

Responses to predict are dense float tensors of hundreds of thousands of numbers: the model's
[1, 448, 448, 1] output is 200,704 one-number lists. Parsed as nested lists (json, orjson) and
turned into an array, that costs several times the model call (benchmarks/results/serving.md).
`dense_predictions` checks that the body is exactly `{"predictions": <nested numeric lists>}`
with the bracket count of the expected shape, then parses the numbers as one flat list, and
falls back to a full JSON parse for anything else.

`GrpcClient` speaks TF Serving's gRPC API with the stock `tensorflow_serving.apis` stubs: the
tile goes as raw bytes and the probabilities come back as raw bytes (`tensor_content`), so it
pays neither base64 nor JSON. `make_client` picks one by the URL's scheme (`grpc://` or http).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import requests

NUMERIC_BYTES = b"0123456789.eE+-,[] \t\r\n"
GRPC_SCHEME = "grpc://"
_PREFIX = re.compile(rb'\s*\{\s*"predictions"\s*:\s*')


class ServerError(RuntimeError):
    """The server could not be reached or answered with an error; the message says which."""


def _bracket_count(shape: Sequence[int]) -> int:
    """'[' in the JSON of a dense tensor of this shape: one per list at every nesting level."""
    return sum(math.prod(shape[:k]) for k in range(len(shape)))


def dense_predictions(body: bytes, shape: Sequence[int], dtype=np.float32) -> np.ndarray:
    """The `predictions` array of a row-format response, expected to have `shape`."""
    start = body.find(b"[")
    end = body.rfind(b"]")
    if start > 0 and _PREFIX.fullmatch(body[:start]) and body[end + 1 :].strip() == b"}":
        region = body[start : end + 1]
        if not region.translate(None, NUMERIC_BYTES) and region.count(b"[") == _bracket_count(
            shape
        ):
            # Brackets out, one flat list in: orjson parses it ~1.5x faster than np.fromstring.
            values = orjson.loads(b"[" + region.translate(None, b"[]") + b"]")
            if len(values) == math.prod(shape):
                return np.array(values, dtype=dtype).reshape(shape)
    doc = orjson.loads(body)
    array = np.asarray(doc["predictions"], dtype=dtype)
    if array.shape != tuple(shape):
        raise ServerError(f"predictions have shape {array.shape}, expected {tuple(shape)}")
    return array


class RestClient:
    """One model on one server, over a keep-alive session."""

    def __init__(
        self,
        url: str,
        model: str,
        version: int | None = None,
        timeout: float = 300.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.session = requests.Session()
        suffix = f"/versions/{version}" if version is not None else ""
        self.model_url = f"{self.url}/v1/models/{model}{suffix}"

    def close(self) -> None:
        self.session.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.ConnectionError:
            raise ServerError(
                f"cannot connect to the model server at {self.url}: is it running? "
                "Start one with `tailings serve`"
            ) from None
        except requests.Timeout:
            raise ServerError(f"{url}: no answer within {self.timeout:g} s") from None
        if response.status_code != 200:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text[:300]
            raise ServerError(f"{method} {url}: HTTP {response.status_code}: {message}")
        return response

    def status(self) -> dict:
        return self._request("GET", self.model_url).json()

    def metadata(self) -> dict:
        return self._request("GET", f"{self.model_url}/metadata").json()

    def signature_defs(self) -> dict:
        """SignatureDef protos by name, from the metadata JSON (as TF Serving prints it)."""
        doc = self.metadata()  # first: a server that is down is reported before TF's protos load
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        signature_map = get_model_metadata_pb2.SignatureDefMap()
        try:
            json_format.ParseDict(
                doc["metadata"]["signature_def"], signature_map, ignore_unknown_fields=True
            )
        except (KeyError, json_format.ParseError) as err:
            raise ServerError(f"{self.model_url}/metadata: unexpected metadata: {err}") from None
        return dict(signature_map.signature_def)

    def predict_raw(self, payload: bytes, headers: dict | None = None) -> bytes:
        """POST a ready JSON body to :predict; the response body."""
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        response = self._request(
            "POST", f"{self.model_url}:predict", data=payload, headers=all_headers
        )
        return response.content

    def predict_examples(
        self, examples: Sequence[bytes], output_shape: Sequence[int], signature: str
    ) -> np.ndarray:
        """Serialized tf.Examples as b64 instances; the single output as an array."""
        instances = [{"b64": base64.b64encode(example).decode("ascii")} for example in examples]
        body = orjson.dumps({"signature_name": signature, "instances": instances})
        shape = (len(examples), *output_shape)
        return dense_predictions(self.predict_raw(body), shape)

    def predict_floats(
        self, images: np.ndarray, output_shape: Sequence[int], signature: str
    ) -> np.ndarray:
        """A float batch as JSON numbers (row format); the single output as an array."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        body = orjson.dumps(
            {"signature_name": signature, "instances": images}, option=orjson.OPT_SERIALIZE_NUMPY
        )
        shape = (images.shape[0], *output_shape)
        return dense_predictions(self.predict_raw(body), shape)


class GrpcClient:
    """One model on one server over TF Serving's gRPC API (one HTTP/2 channel per client).

    The same methods as `RestClient` where they mean the same (`status`, `metadata`,
    `signature_defs`, `predict_examples`, `predict_floats`), plus `predict` for named tensors.
    """

    def __init__(
        self,
        url: str,
        model: str,
        version: int | None = None,
        timeout: float = 300.0,
        label: str | None = None,
    ) -> None:
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        from serving.grpc_api import CHANNEL_OPTIONS

        self.url = url.rstrip("/")
        self.model = model
        self.version = version
        self.label = label
        self.timeout = timeout
        self.target = grpc_target(self.url)
        self.model_url = f"{self.url} (model {model})"  # for messages, as RestClient's
        self.channel = grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self._signatures: dict | None = None  # from GetModelMetadata, once

    def close(self) -> None:
        self.channel.close()

    def _spec(self, spec: Any, signature: str | None = None) -> None:
        spec.name = self.model
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label
        if signature:
            spec.signature_name = signature

    def _call(self, method: Any, request: Any, what: str) -> Any:
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise ServerError(
                    f"cannot connect to the model server at {self.url}: is it running? "
                    f"Start one with `tailings serve` ({details})"
                ) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ServerError(
                    f"{what} {self.model_url}: no answer within {self.timeout:g} s"
                ) from None
            raise ServerError(f"{what} {self.model_url}: {code.name}: {details}") from None

    def status(self) -> Any:
        """GetModelStatusResponse: every version's state (the version, if one was given)."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        return self._call(self.models.GetModelStatus, request, "GetModelStatus")

    def metadata(self) -> Any:
        """GetModelMetadataResponse with the `signature_def` field."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        return self._call(self.predictions.GetModelMetadata, request, "GetModelMetadata")

    def signature_defs(self) -> dict:
        """SignatureDef protos by name, unpacked from the metadata's SignatureDefMap."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        signature_map = get_model_metadata_pb2.SignatureDefMap()
        if not self.metadata().metadata["signature_def"].Unpack(signature_map):
            raise ServerError(f"{self.model_url}: metadata holds no SignatureDefMap")
        self._signatures = dict(signature_map.signature_def)
        return self._signatures

    def _input_alias(self, signature: str) -> str:
        """The signature's one input, as a REST request in row format names none."""
        if self._signatures is None:
            self.signature_defs()
        assert self._signatures is not None
        if signature not in self._signatures:
            raise ServerError(f"{self.model_url}: no signature {signature!r}")
        aliases = list(self._signatures[signature].inputs)
        if len(aliases) != 1:
            raise ServerError(f"{self.model_url}: {signature} takes {aliases}, not one input")
        return aliases[0]

    def predict(
        self,
        inputs: dict[str, np.ndarray],
        signature: str = "serving_default",
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """Named input arrays in, named output arrays out (PredictRequest / PredictResponse)."""
        from tensorflow_serving.apis import predict_pb2

        from serving.grpc_api import to_ndarray, write_tensor

        request = predict_pb2.PredictRequest(output_filter=list(output_filter))
        self._spec(request.model_spec, signature)
        for alias, array in inputs.items():
            write_tensor(array, request.inputs[alias])
        response = self._call(self.predictions.Predict, request, "Predict")
        return {alias: to_ndarray(proto) for alias, proto in response.outputs.items()}

    def _single(self, outputs: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        """The one output, as `RestClient` returns the one `predictions` array."""
        if len(outputs) != 1:
            raise ServerError(f"{self.model_url}: expected one output, got {sorted(outputs)}")
        (array,) = outputs.values()
        if array.shape != shape:
            raise ServerError(f"predictions have shape {array.shape}, expected {shape}")
        return array

    def predict_examples(
        self, examples: Sequence[bytes], output_shape: Sequence[int], signature: str
    ) -> np.ndarray:
        """Serialized tf.Examples as one DT_STRING tensor; the single output as an array."""
        batch = np.empty(len(examples), dtype=object)
        batch[:] = list(examples)
        outputs = self.predict({self._input_alias(signature): batch}, signature)
        return self._single(outputs, (len(examples), *output_shape))

    def predict_floats(
        self, images: np.ndarray, output_shape: Sequence[int], signature: str
    ) -> np.ndarray:
        """A float32 batch as raw bytes (`tensor_content`); the single output as an array."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        outputs = self.predict({self._input_alias(signature): images}, signature)
        return self._single(outputs, (images.shape[0], *output_shape))


def grpc_target(url: str) -> str:
    """`grpc://HOST[:PORT]` as gRPC's `HOST:PORT` target (TF Serving's 8500 when no port)."""
    from serving.config import GRPC_PORT

    address = url[len(GRPC_SCHEME) :] if url.startswith(GRPC_SCHEME) else url
    address = address.rstrip("/")
    host_end = address.rfind("]") + 1  # [::1]:8500: the port is after the bracket
    if ":" not in address[host_end:]:
        address = f"{address}:{GRPC_PORT}"
    return address


def make_client(url: str, model: str, timeout: float = 300.0) -> RestClient | GrpcClient:
    """A gRPC client for `grpc://` URLs, else a REST one (`http://...`, as before)."""
    if url.startswith(GRPC_SCHEME):
        return GrpcClient(url, model, timeout=timeout)
    return RestClient(url, model, timeout=timeout)
