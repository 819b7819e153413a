"""TF Serving's REST contract: request JSON -> input arrays, output arrays -> response JSON.

Follows tensorflow_serving/util/json_tensor.cc and model_servers/http_rest_api_*.cc:
- predict: `signature_name` (default `serving_default`), exactly one of `instances` (row format,
  answered with `predictions`) or `inputs` (columnar, answered with `outputs`); the output name
  is omitted when the signature has one output; `{"b64": ...}` carries bytes for string inputs,
  and string outputs whose alias ends in `_bytes` come back the same way;
- status and metadata JSON are printed from TF Serving's own protos with `json_format`.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np
import orjson

from serving.errors import ServingError
from serving.manager import VersionState

DEFAULT_SIGNATURE = "serving_default"
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
B64 = "b64"
BYTES_SUFFIX = "_bytes"
_INT_RANGES = {
    np.dtype(np.int8): (-(2**7), 2**7 - 1),
    np.dtype(np.uint8): (0, 2**8 - 1),
    np.dtype(np.int16): (-(2**15), 2**15 - 1),
    np.dtype(np.int32): (-(2**31), 2**31 - 1),
    np.dtype(np.uint32): (0, 2**32 - 1),
}


def _show(value: Any, limit: int = 120) -> str:
    """A JSON value for an error message, cut short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


# --------------------------------------------------------------------------- requests
def parse_json(body: bytes) -> dict:
    """The request object; TF Serving's parse errors (it also accepts NaN and Infinity)."""
    if not body.strip():
        raise ServingError.invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:  # NaN / Infinity / -Infinity, which rapidjson accepts and orjson does not
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise ServingError.invalid_argument(f"JSON Parse error: {err}") from None
    if not isinstance(doc, dict):
        raise ServingError.invalid_argument(f"JSON Value: {_show(doc)} Is not object")
    return doc


def signature_name(doc: dict) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise ServingError.invalid_argument(
            f"JSON Value: {_show(doc)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name or DEFAULT_SIGNATURE


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(B64), str)


def _decode_b64(value: dict) -> bytes:
    """Standard base64, strictly: characters outside the alphabet are an error, not skipped.

    (`base64.b64decode(validate=True)` checks with a regex first, twice as slow on MB-sized
    tiles as deleting the alphabet and looking at what is left.)
    """
    text = value[B64].encode("ascii", errors="replace")
    if text.translate(None, _B64_ALPHABET):
        raise ServingError.invalid_argument("Unable to base64 decode")
    text += b"=" * (-len(text) % 4)  # padding may be left out, as absl's decoder allows
    try:
        return binascii.a2b_base64(text)
    except binascii.Error:
        raise ServingError.invalid_argument("Unable to base64 decode") from None


def _numpy_dtype(dtype_enum: int) -> np.dtype:
    import tensorflow as tf

    try:
        return np.dtype(tf.dtypes.as_dtype(dtype_enum).as_numpy_dtype)
    except TypeError:
        raise ServingError.unimplemented(f"Conversion to tensor type {dtype_enum}") from None


def _strings(value: Any, where: str) -> Any:
    if isinstance(value, list):
        return [_strings(v, where) for v in value]
    if isinstance(value, str):
        return value.encode()
    if _is_b64(value):
        return _decode_b64(value)
    raise ServingError.invalid_argument(
        f"{where}: JSON Value: {_show(value)} is not of expected type: string"
    )


def _string_array(value: Any, where: str) -> np.ndarray:
    converted = _strings(value, where)
    array = np.empty(0, dtype=object)
    try:
        array = np.array(converted, dtype=object)
    except ValueError:
        pass
    if array.size != _count_leaves(converted) or not all(isinstance(x, bytes) for x in array.flat):
        raise ServingError.invalid_argument(f"{where}: lists of unequal sizes (not a dense tensor)")
    return array


def _count_leaves(value: Any) -> int:
    return sum(_count_leaves(v) for v in value) if isinstance(value, list) else 1


def _numeric_array(value: Any, dtype: np.dtype, where: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError) as err:
        raise ServingError.invalid_argument(f"{where}: not a dense tensor: {err}") from None
    kind, target = array.dtype.kind, dtype.kind
    allowed = {"f": "fiu", "i": "iu", "u": "iu", "b": "b", "c": "fiuc"}.get(target, "")
    if array.size and kind not in allowed:
        sample = array.flat[0] if array.ndim else array.item()
        raise ServingError.invalid_argument(
            f"{where}: JSON Value: {_show(sample if kind != 'O' else value)} is not of expected "
            f"type: {dtype.name}"
        )
    if target == "f" and kind == "f" and array.size:
        limit = np.finfo(dtype).max
        finite = np.isfinite(array)
        if np.any(np.abs(array[finite]) > limit):
            raise ServingError.invalid_argument(
                f"{where}: Cannot convert JSON value to {dtype.name} without loss of precision."
            )
    if dtype in _INT_RANGES and array.size:
        low, high = _INT_RANGES[dtype]
        if array.min() < low or array.max() > high:
            raise ServingError.invalid_argument(
                f"{where}: JSON value out of range for {dtype.name}"
            )
    return array.astype(dtype, copy=False)


def to_array(value: Any, info: Any, where: str) -> np.ndarray:
    """A JSON value (nested lists, numbers, strings, b64 objects) as the input's dtype."""
    dtype = _numpy_dtype(info.dtype)
    if dtype.kind in "OSU":
        return _string_array(value, where)
    return _numeric_array(value, dtype, where)


def predict_inputs(doc: dict, infos: dict[str, Any]) -> tuple[dict[str, np.ndarray], bool]:
    """Input arrays by alias and whether the request used the row (`instances`) format."""
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise ServingError.invalid_argument(
            f"JSON Value: {_show(doc)} Not formatted correctly expecting only one of 'inputs' "
            "or 'instances' keys to exist "
        )
    if not infos:
        raise ServingError.invalid_argument("Failed to get input map for signature")
    names = sorted(infos)
    if has_instances:
        return _row_inputs(doc["instances"], doc, infos, names), True
    if has_inputs:
        return _columnar_inputs(doc["inputs"], infos, names), False
    raise ServingError.invalid_argument("Missing 'inputs' or 'instances' key")


def _is_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _row_inputs(instances: Any, doc: dict, infos: dict, names: list[str]) -> dict:
    if not isinstance(instances, list):
        raise ServingError.invalid_argument(
            f"JSON Value: {_show(doc)} Excepting 'instances' to be an list/array"
        )
    if not instances:
        raise ServingError.invalid_argument(
            f"JSON Value: {_show(doc)} No values in 'instances' array"
        )
    objects = _is_object(instances[0])
    if not objects and len(names) > 1:
        raise ServingError.invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    if not objects:
        for i, item in enumerate(instances):
            if _is_object(item):
                raise ServingError.invalid_argument(
                    f"Expecting value/list but got object at item {i} of input list"
                )
        name = names[0]
        return {name: to_array(instances, infos[name], f"'instances' for input '{name}'")}
    columns: dict[str, list] = {name: [] for name in names}
    for i, item in enumerate(instances):
        if not _is_object(item):
            raise ServingError.invalid_argument(
                f"Expecting object but got list at item {i} of input list"
            )
        if set(item) != set(names):
            for key in item:
                if key not in infos:
                    raise ServingError.invalid_argument(
                        f"Failed to process element: {i} key: {key} of 'instances' list. "
                        f"Error: JSON object: does not have named input: {key}"
                    )
            raise ServingError.invalid_argument(
                f"Failed to process element: {i} of 'instances' list. JSON object: "
                f"{_show(item)} keys must be equal to: {','.join(names)}"
            )
        for name in names:
            columns[name].append(item[name])
    return {
        name: to_array(values, infos[name], f"'instances' for input '{name}'")
        for name, values in columns.items()
    }


def _columnar_inputs(value: Any, infos: dict, names: list[str]) -> dict:
    if not _is_object(value):
        if len(names) > 1:
            raise ServingError.invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        return {names[0]: to_array(value, infos[names[0]], f"'inputs' for '{names[0]}'")}
    arrays = {}
    for name in names:
        if name not in value:
            raise ServingError.invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = to_array(value[name], infos[name], f"'inputs' for '{name}'")
    return arrays


# --------------------------------------------------------------------------- classify, regress
# Request JSON: util/json_tensor.cc:765-808 (FillClassifyRegressRequestFromJson), features
# :653-762 (AddValueToFeature, MakeExampleFromJsonObject). Signature checks, with TF Serving's
# default --enable_signature_method_name_check=false (server.h:102): classifier.cc:151-215,
# regressor.cc:146-205. All are INVALID_ARGUMENT (400).
CLASSIFY_INPUTS = "inputs"  # tensorflow/cc/saved_model/signature_constants.h
CLASSIFY_CLASSES, CLASSIFY_SCORES = "classes", "scores"
REGRESS_INPUTS, REGRESS_OUTPUTS = "inputs", "outputs"
_INT64_MAX, _UINT64_MAX = 2**63 - 1, 2**64 - 1


def _json_type(value: Any) -> str:
    """rapidjson's type names, as TF Serving's JsonTypeString (json_tensor.cc:91)."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    return "String" if isinstance(value, str) else "Number"


def _feature_value_kind(name: str, value: Any) -> str:
    """The tf.train.Feature list one JSON value of a feature goes into, or TF Serving's error."""
    if isinstance(value, bool):
        return "int64"
    if isinstance(value, str):
        return "bytes"
    if _is_b64(value):
        return "bytes"
    if isinstance(value, float):
        return "float"
    if isinstance(value, int):
        if _INT64_MAX < value <= _UINT64_MAX:
            raise ServingError.invalid_argument(
                f"Feature: {name} has uint64_t element. Only int64_t is supported."
            )
        return "int64" if value <= _INT64_MAX else "float"  # rapidjson: a double beyond u64
    raise ServingError.invalid_argument(
        f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}"
    )


def _check_example(value: Any) -> None:
    """One JSON object as a tf.Example: every feature's values of one kind."""
    if not isinstance(value, dict):
        raise ServingError.invalid_argument(
            f"Example must be JSON object but got JSON {_json_type(value)}"
        )
    for name, content in value.items():
        kind = ""
        for item in content if isinstance(content, list) else [content]:
            item_kind = _feature_value_kind(name, item)
            if kind and item_kind != kind:
                raise ServingError.invalid_argument(
                    f"Unexpected element type in feature: {name} expecting type: {kind}"
                )
            if _is_b64(item):  # decoded after the kind check, as json_tensor.cc:703-707
                _decode_b64(item)
            kind = item_kind


def check_examples(doc: dict) -> int:
    """The `context` and `examples` of a :classify / :regress request; the example count."""
    if "context" in doc:
        _check_example(doc["context"])
    if "examples" not in doc:
        # The text says "classify" for :regress too: one template serves both (json_tensor.cc:785).
        raise ServingError.invalid_argument(
            f"JSON Value: {_show(doc)} When method is classify, key 'examples' is expected and "
            "was not found"
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise ServingError.invalid_argument(
            f"JSON Value: {_show(doc)} Expecting 'examples' value to be an list/array"
        )
    if not examples:
        raise ServingError.invalid_argument(
            f"JSON Value: {_show(doc)} 'examples' value is an empty array"
        )
    for example in examples:
        _check_example(example)
    return len(examples)


def _debug_string(signature: Any) -> str:
    """A SignatureDef as C++ DebugString() prints it: the text format."""
    from google.protobuf import text_format

    return text_format.MessageToString(signature)


def check_classify_regress_signature(
    api: str, signature_defs: dict[str, Any], signature_name: str
) -> Any:
    """The SignatureDef a :classify / :regress request names, if it is one such a request can
    run; else TF Serving's INVALID_ARGUMENT for it (a predict-only signature is refused)."""
    signature = signature_defs.get(signature_name)
    if signature is None:
        raise ServingError.invalid_argument(
            f"No signature was found with the name: {signature_name}"
        )
    inputs, outputs = signature.inputs, signature.outputs
    if len(inputs) != 1:
        raise ServingError.invalid_argument("Expected one input Tensor.")
    if api == "classify":
        if len(outputs) not in (1, 2):
            raise ServingError.invalid_argument(
                f"Expected one or two output Tensors, found {len(outputs)}"
            )
        if CLASSIFY_INPUTS not in inputs:
            raise ServingError.invalid_argument(
                f"No classification inputs found in SignatureDef: {_debug_string(signature)}"
            )
        if CLASSIFY_CLASSES not in outputs and CLASSIFY_SCORES not in outputs:
            raise ServingError.invalid_argument(
                "Expected classification signature outputs to contain at least one of "
                f'"{CLASSIFY_CLASSES}" or "{CLASSIFY_SCORES}". Signature was: '
                f"{_debug_string(signature)}"
            )
        return signature
    if len(outputs) != 1:
        raise ServingError.invalid_argument("Expected one output Tensor.")
    if REGRESS_INPUTS not in inputs:
        raise ServingError.invalid_argument(
            f"No regression inputs found in SignatureDef: {_debug_string(signature)}"
        )
    if REGRESS_OUTPUTS not in outputs:
        raise ServingError.invalid_argument(
            f"No regression outputs found in SignatureDef: {_debug_string(signature)}"
        )
    return signature


# --------------------------------------------------------------------------- responses
def _jsonable(name: str, array: np.ndarray) -> Any:
    """A string tensor as nested lists: b64 objects for `*_bytes` aliases, else text."""
    as_bytes = name.endswith(BYTES_SUFFIX)

    def convert(item: Any) -> Any:
        if isinstance(item, list):
            return [convert(v) for v in item]
        if as_bytes:
            return {B64: base64.b64encode(item).decode()}
        return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else item

    return convert(array.tolist())


def _has_non_finite(outputs: dict[str, np.ndarray]) -> bool:
    return any(a.dtype.kind == "f" and not np.isfinite(a).all() for a in outputs.values())


def predict_response(outputs: dict[str, np.ndarray], row_format: bool) -> bytes:
    """`{"predictions": ...}` (row) or `{"outputs": ...}` (columnar), as json_tensor.cc."""
    values: dict[str, Any] = {}
    for name, array in outputs.items():
        array = np.ascontiguousarray(array)
        values[name] = _jsonable(name, array) if array.dtype.kind in "OSU" else array
    if row_format:
        batch = None
        for name, array in outputs.items():
            if np.ndim(array) == 0:
                raise ServingError.invalid_argument(
                    f"Tensor name: {name} has no shape information "
                )
            if batch is not None and array.shape[0] != batch:
                raise ServingError.invalid_argument(
                    f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                    f"expecting: {batch}"
                )
            batch = array.shape[0]
        if len(values) == 1:
            doc: dict[str, Any] = {"predictions": next(iter(values.values()))}
        else:
            doc = {"predictions": [{n: v[i] for n, v in values.items()} for i in range(batch)]}
    else:
        doc = {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    if _has_non_finite(outputs):  # orjson would write null; TF Serving writes NaN / Infinity
        return json.dumps(doc, default=lambda a: a.tolist()).encode()
    ((key, value),) = doc.items()
    if isinstance(value, np.ndarray):  # one output: the common case, and the large one
        return b'{"' + key.encode() + b'":' + numbers_json(value) + b"}"
    return orjson.dumps(doc, option=_NUMPY)


def numbers_json(array: np.ndarray) -> bytes:
    """JSON of a numeric array, as orjson writes it, faster for a trailing dimension of 1.

    orjson pays per nested list, and the model's [N, H, W, 1] output has one list per pixel
    (3x the time of [N, H, W]). So write [N, H, W] and put each number in brackets: every ','
    of that text becomes '],[' and the whole gets one more pair; numbers contain no ','.
    """
    if array.ndim >= 2 and array.shape[-1] == 1 and array.size > 1 and array.dtype.kind in "fiu":
        inner = orjson.dumps(np.ascontiguousarray(array[..., 0]), option=_NUMPY)
        return b"[" + inner.replace(b",", b"],[") + b"]"
    return orjson.dumps(array, option=_NUMPY)


# --------------------------------------------------------------------------- status, metadata
def status_body(states: list[tuple[int, VersionState]]) -> bytes:
    """GetModelStatusResponse as TF Serving prints it (always_print_primitive_fields)."""
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_status_pb2

    response = get_model_status_pb2.GetModelStatusResponse()
    for version, state in states:
        status = response.model_version_status.add()
        status.version = version
        status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
        status.status.SetInParent()
        status.status.error_code = state.error_code
        status.status.error_message = state.error_message
    return json_format.MessageToJson(
        response, including_default_value_fields=True, preserving_proto_field_name=True
    ).encode()


def metadata_body(name: str, version: int, signature_defs: dict[str, Any]) -> bytes:
    """GetModelMetadataResponse as TF Serving prints it: model_spec, then the unpacked
    SignatureDefMap under metadata.signature_def (http_rest_api_util.cc ToJsonString)."""
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = name
    response.model_spec.version.value = version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response.metadata["signature_def"].Pack(signature_map)

    unpacked = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(unpacked)
    options = {"including_default_value_fields": True, "preserving_proto_field_name": True}
    doc = {
        "model_spec": json_format.MessageToDict(response.model_spec, **options),
        "metadata": {"signature_def": json_format.MessageToDict(unpacked, **options)},
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)
