"""TF Serving's gRPC API on the embedded server's models: PredictionService and ModelService.

Why: gRPC clients written for `tensorflow_model_server` (the stock `tensorflow_serving.apis`
stubs) work unchanged against `tailings serve`, and a tile travels as raw bytes in a protobuf
instead of JSON, so a remote prediction costs little more than an in-process one
(benchmarks/results/serving.md).

The services run on the same `ModelManager` and `Servable` objects as the REST API
(serving/server.py), so both APIs see the same versions, labels and model states at every
moment. Behaviour follows TF Serving's source (github.com/tensorflow/serving, read at commit
9d981c5c), file by file:

- Predict: model_servers/prediction_service_impl.cc -> servables/tensorflow/predict_impl.cc
  (`TensorflowPredictor::Predict`) -> predict_util.cc (`RunPredict`, `PreProcessPrediction`):
  ModelSpec resolved by model_servers/server_core.cc (`ServableRequestFromModelSpec`; labels by
  `GetModelVersionForLabel`, as the manager does for REST); inputs checked as
  tensorflow/cc/saved_model/util.cc (`GetInputValues`); `output_filter` as
  `PreProcessPrediction`. Metrics as prediction_service_impl.cc records them: request_count
  for every Predict, request_latency (entrypoint "GRPC") for successful ones, runtime_latency
  around the model call, on the same Prometheus page as REST's.
- GetModelMetadata: servables/tensorflow/get_model_metadata_impl.cc: `metadata_field` must be
  exactly "signature_def"; the answer is a `SignatureDefMap` packed in an Any.
- GetModelStatus: model_servers/get_model_status_impl.cc: a version in ModelSpec gives that
  version, anything else (a label included) gives every version the manager knows.
- Status codes: model_servers/grpc_status_util.cc (`ToGRPCStatus`): the TensorFlow error code
  as is (gRPC's codes have the same numbers), the message cut at 1024 characters.
- Server options: model_servers/server.cc: `SetMaxMessageSize(INT32_MAX)` both ways.

Where we differ, deliberately:
- Outputs are written as `tensor_content` (raw bytes), as TF Serving does with
  `--enable_serialization_as_tensor_content`; its default fills `float_val` & co., which costs
  ~15 ms to encode and ~13 ms to decode for one 448 x 448 probability map in Python. Clients that
  read tensors with `tf.make_ndarray` (the usual way) get the same arrays either way.
- `output_filter` selects what is returned; the model still computes every output (a
  `tf.function` signature cannot be pruned per request as a TF1 session's fetches can).
- Classify and Regress are checked as TF Serving checks them (a predict-only signature, as all
  of ours, is INVALID_ARGUMENT), but a signature that passes is UNIMPLEMENTED rather than run;
  MultiInference and HandleReloadConfigRequest are UNIMPLEMENTED (the REST side has no config
  reload either).
- The port is not shared (SO_REUSEPORT off): a second server on a busy port fails at start
  instead of silently splitting connections with the first one.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import numpy as np
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.config import GRPC_PORT
from serving.errors import FAILED_PRECONDITION, INTERNAL, OK, ServingError
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.servable import Servable

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"  # kDefaultServingSignatureDefKey
SIGNATURE_DEF = "signature_def"  # GetModelMetadataImpl::kSignatureDef
MAX_MESSAGE_BYTES = 2**31 - 1  # server.cc: builder.SetMaxMessageSize(INT32_MAX)
ERROR_MESSAGE_LIMIT = 1024  # grpc_status_util.cc: kErrorMessageLimit
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
DT_STRING = 7  # tensorflow.DataType

Response = TypeVar("Response")


# --------------------------------------------------------------------------- tensors
def _numpy_dtype(dtype_enum: int) -> np.dtype:
    import tensorflow as tf

    return np.dtype(tf.dtypes.as_dtype(dtype_enum).as_numpy_dtype)


def to_ndarray(proto: Any) -> np.ndarray:
    """A TensorProto as an array: `tensor_content` without a copy, strings as bytes objects,
    anything else (`float_val` & co., half floats, one value filling a shape) by
    `tf.make_ndarray`. Raises ValueError or TypeError for a proto that is no dense tensor."""
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if proto.dtype == DT_STRING:
        if proto.tensor_content:  # TF's varint-encoded string list: tf.make_ndarray ignores it
            raise ValueError("DT_STRING in tensor_content is not supported; use string_val")
        values = list(proto.string_val)
        if len(values) == int(np.prod(shape)):
            return np.array(values, dtype=object).reshape(shape)
    elif proto.tensor_content:
        dtype = _numpy_dtype(proto.dtype)
        if dtype.kind in "biufc":
            return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    import tensorflow as tf

    return tf.make_ndarray(proto)


def write_tensor(array: np.ndarray, proto: Any) -> Any:
    """Fill a TensorProto: raw bytes in `tensor_content` for numbers (fast both ways), bytes in
    `string_val` for strings (what `tf.make_ndarray` reads for DT_STRING)."""
    import tensorflow as tf

    array = np.asarray(array)
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    if array.dtype.kind in "OSU":
        proto.dtype = DT_STRING
        proto.string_val.extend(
            v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)
        )
        return proto
    proto.dtype = tf.dtypes.as_dtype(array.dtype).as_datatype_enum
    proto.tensor_content = np.ascontiguousarray(array).tobytes()
    return proto


# --------------------------------------------------------------------------- requests
def grpc_code(code: int) -> grpc.StatusCode:
    """gRPC's status for a TensorFlow error code: the same number (grpc_status_util.cc)."""
    return STATUS_CODES.get(code, grpc.StatusCode.UNKNOWN)


def _status_message(message: str) -> str:
    if len(message) > ERROR_MESSAGE_LIMIT:
        return message[:ERROR_MESSAGE_LIMIT] + "...TRUNCATED"
    return message


def _keys(keys: Iterable[str]) -> str:
    """A key set as TF Serving prints it: std::set order, comma-joined."""
    return ",".join(sorted(keys))


class _Api:
    """Shared by both services: ModelSpec resolution, error handling, metrics."""

    def __init__(self, manager: ModelManager, metrics: Metrics | None = None) -> None:
        self.manager = manager
        self.metrics = metrics  # the REST server's: one set of metrics for both APIs

    def _answer(
        self,
        context: grpc.ServicerContext,
        method: str,
        work: Callable[[], Response],
        record: Callable[[int], None] | None = None,
    ) -> Response:
        """`work()`'s response, or its ServingError as TF Serving's gRPC status; `record`
        gets the status code either way."""
        response: Response | None = None
        try:
            response = work()
            code, message = OK, ""
        except ServingError as err:
            code, message = err.code, err.message
        except Exception as err:  # a bug, not bad input: INTERNAL, as REST answers 500
            log.exception("gRPC %s failed", method)
            code, message = INTERNAL, f"Internal: {type(err).__name__}: {err}"
        if record is not None:
            record(code)
        if code != OK or response is None:
            context.abort(grpc_code(code), _status_message(message))
            raise AssertionError("context.abort returned")  # it raises; for type checkers
        return response

    def _servable_request(self, request: Any) -> tuple[str, int | None, str | None]:
        """(name, version, label) of a request's ModelSpec, checked as server_core.cc does."""
        if not request.HasField("model_spec"):
            raise ServingError.invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        if not spec.name:
            raise ServingError.invalid_argument("ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            return spec.name, spec.version.value, None
        if choice == "version_label":  # resolved by the manager, as for REST's /labels/
            return spec.name, None, spec.version_label
        return spec.name, None, None


class PredictionServiceServicer(_Api, prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; the other methods answer UNIMPLEMENTED (module doc)."""

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        record = self._recorder(request, "Predict")
        return self._answer(context, "Predict", lambda: self._predict(request), record)

    def _recorder(self, request: Any, api: str) -> Callable[[int], None]:
        """TF Serving's request_count (every call) and request_latency (OK calls, entrypoint
        "GRPC"), as prediction_service_impl.cc records them for Predict, Classify, Regress."""
        started = time.perf_counter()

        def record(code: int) -> None:
            if self.metrics is not None:
                micros = round((time.perf_counter() - started) * 1e6)
                model = self.metrics.label(request.model_spec.name)
                self.metrics.tfserving.request(model, code, api, micros, "GRPC")

        return record

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._answer(context, "GetModelMetadata", lambda: self._metadata(request))

    def _predict(self, request: Any) -> Any:
        name, version, label = self._servable_request(request)
        with self.manager.servable(name, version, label) as servable:
            signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            if signature_name not in servable.functions:  # predict_util.cc RunPredict
                raise ServingError(
                    FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.'
                )
            signature = servable.signature_defs[signature_name]
            inputs = _input_arrays(signature, request.inputs)
            aliases = _output_aliases(signature, request.output_filter)
            started = time.perf_counter()
            outputs = servable.run(signature_name, inputs)
            if self.metrics is not None:
                self.metrics.observe_model(name, signature_name, time.perf_counter() - started)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = name  # MakeModelSpec: the request's name
            response.model_spec.signature_name = signature_name
            response.model_spec.version.value = servable.version
        for alias in aliases:
            write_tensor(outputs[alias], response.outputs[alias])
        return response

    def _metadata(self, request: Any) -> Any:
        if not request.HasField("model_spec"):
            raise ServingError.invalid_argument("Missing ModelSpec")
        # ValidateGetModelMetadataRequest runs before the servable is looked up.
        if not request.metadata_field:
            raise ServingError.invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in request.metadata_field:
            if field != SIGNATURE_DEF:
                raise ServingError.invalid_argument(f"Metadata field {field} is not supported")
        name, version, label = self._servable_request(request)
        with self.manager.servable(name, version, label) as servable:
            return metadata_response(servable)

    def Classify(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        record = self._recorder(request, "Classify")
        return self._answer(context, "Classify", lambda: self._refuse("classify", request), record)

    def Regress(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        record = self._recorder(request, "Regress")
        return self._answer(context, "Regress", lambda: self._refuse("regress", request), record)

    def _refuse(self, api: str, request: Any) -> Any:
        """TF Serving's checks of a Classify / Regress call, in its order (model spec, model,
        then the signature: classifier.cc GetClassificationSignatureDef, regressor.cc
        GetRegressionSignatureDef, shared with REST's :classify / :regress), so a
        predict-only signature, as all of ours, gets its INVALID_ARGUMENT. One that passes
        would be run by TF Serving; here it is UNIMPLEMENTED."""
        from serving import rest

        name, version, label = self._servable_request(request)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        with self.manager.servable(name, version, label) as servable:
            rest.check_classify_regress_signature(api, servable.signature_defs, signature_name)
        raise ServingError.unimplemented(
            f"signature {signature_name!r} is a {api} signature, which TF Serving would run; "
            "the embedded server runs Predict only (serve this model with --engine tfserving)"
        )

    def MultiInference(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "MultiInference is not implemented by the embedded server; use Predict",
        )


def metadata_response(servable: Servable) -> Any:
    """GetModelMetadataResponse as SavedModelGetSignatureDef builds it: the version that
    answered, and every SignatureDef of the MetaGraph in a SignatureDefMap packed in an Any."""
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response.metadata[SIGNATURE_DEF].Pack(signature_map)
    return response


def _input_arrays(signature: Any, request_inputs: Any) -> dict[str, np.ndarray]:
    """The request's tensors as arrays, after predict_util.cc's VerifyRequestInputsSize and
    saved_model/util.cc's GetInputValues (signature defaults fill missing inputs)."""
    expected, defaults = signature.inputs, signature.defaults
    sent = set(request_inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not defaults):
        raise ServingError.invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{_keys(sent)}}}) != len({{{_keys(expected)}}}). "
            f"Sent extra: {{{_keys(sent - set(expected))}}}. "
            f"Missing but required: {{{_keys(set(expected) - sent)}}}."
        )
    arrays: dict[str, np.ndarray] = {}
    for index, alias in enumerate(sorted(expected)):
        info = expected[alias]
        if alias in request_inputs:
            proto = request_inputs[alias]
        elif alias in defaults:
            proto = defaults[alias]
        else:
            raise ServingError.invalid_argument(
                f"Signature input alias: {alias}(feed name: {info.name}) not found in request "
                f"and no default value provided. Inputs expected to be in the request "
                f"{{{_keys(sent)}}}, or default input alias set: {_keys(defaults)}"
            )
        try:
            arrays[alias] = to_ndarray(proto)
        except (ValueError, TypeError):
            raise ServingError.invalid_argument(f"tensor parsing error: {alias}") from None
        if proto.dtype != info.dtype:  # the session's own check, in its words
            raise ServingError.invalid_argument(
                f"Expects arg[{index}] to be {_dtype_name(info.dtype)} but "
                f"{_dtype_name(proto.dtype)} is provided"
            )
    used = sent & set(expected)
    if sent and used != sent:
        raise ServingError.invalid_argument(
            f"Inputs contains invalid name. Used request inputs: {_keys(used)}, "
            f"request input: {_keys(sent)}"
        )
    return arrays


def _dtype_name(dtype_enum: int) -> str:
    """TensorFlow's DataTypeString: DT_FLOAT -> "float", DT_STRING -> "string"."""
    from tensorflow.core.framework import types_pb2

    try:
        return types_pb2.DataType.Name(dtype_enum).removeprefix("DT_").lower()
    except ValueError:
        return f"DataType {dtype_enum}"


def _output_aliases(signature: Any, output_filter: Iterable[str]) -> list[str]:
    """What to return: `output_filter` in its order (checked as PreProcessPrediction does),
    or every output of the signature."""
    aliases: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise ServingError.invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                f"the set {{{_keys(signature.outputs)}}}."
            )
        if alias in aliases:
            raise ServingError.invalid_argument(f"duplicate output tensor alias: {alias}")
        aliases.append(alias)
    return aliases or list(signature.outputs)


class ModelServiceServicer(_Api, model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus from the manager's version states; no config reload (module doc)."""

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._answer(context, "GetModelStatus", lambda: self._status(request))

    def _status(self, request: Any) -> Any:
        if not request.HasField("model_spec"):
            raise ServingError.invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        # get_model_status_impl.cc looks at the version only: no name check, no label.
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, state in self.manager.version_states(spec.name, version):
            status = response.model_version_status.add()
            status.version = number
            status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            status.status.error_code = state.error_code
            status.status.error_message = state.error_message
        return response

    def HandleReloadConfigRequest(  # noqa: N802
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "HandleReloadConfigRequest is not implemented by the embedded server: edit the "
            "model config and restart `tailings serve` (or use --engine tfserving)",
        )


# --------------------------------------------------------------------------- the server
class GrpcServer:
    """Both services for one ModelManager on HOST:PORT; `bind` (fail fast), then `start`.

    The two steps let the embedded server take its ports before it loads any model and answer
    only once the initial load is done, as TF Serving does.
    """

    def __init__(
        self,
        manager: ModelManager,
        host: str = "127.0.0.1",
        port: int = GRPC_PORT,
        threads: int = 4,
        metrics: Metrics | None = None,
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.host = host
        self.port = port  # the bound port after bind() (port 0 picks a free one)
        self.threads = threads
        self._server: grpc.Server | None = None

    @property
    def url(self) -> str:
        return f"grpc://{self.address}"

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def bind(self) -> int:
        """Create the server and take the port; OSError if it cannot be had."""
        server = grpc.server(
            ThreadPoolExecutor(self.threads, thread_name_prefix="grpc"),
            options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServiceServicer(self.manager, self.metrics), server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServiceServicer(self.manager, self.metrics), server
        )
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError:  # grpcio >= 1.50 raises; older versions return 0
            port = 0
        if not port:
            server.stop(None)
            # strerror is what `tailings serve` prints after the REST address
            raise OSError(
                errno.EADDRINUSE, f"gRPC address {self.address} is in use or cannot be bound"
            )
        self._server, self.port = server, port
        return port

    def start(self) -> None:
        if self._server is None:
            self.bind()
        assert self._server is not None
        self._server.start()

    def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, give running ones `grace` seconds, then cancel them."""
        if self._server is not None:
            self._server.stop(grace).wait(grace + 5.0)
            self._server = None
