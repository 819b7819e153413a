"""One loaded model version: its signature definitions and a thread-safe way to run them.

The embedded server and `tailings predict --model` both call models through this class, so
the in-process path runs exactly what the server runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.warmup import read_signatures, read_warmup
from serving.errors import ServingError

_TF_ERROR_NOISE = ("Graph execution error", "Detected at node", "<stack traces")


def _check_shape(alias: str, shape: tuple[int, ...], expected) -> None:
    """Refuse shapes the signature excludes: some kernels abort the process on a wrong rank."""
    if expected.unknown_rank:
        return
    dims = [d.size for d in expected.dim]
    if len(shape) != len(dims) or any(d >= 0 and d != n for d, n in zip(dims, shape, strict=True)):
        wanted = "[" + ", ".join("?" if d < 0 else str(d) for d in dims) + "]"
        raise ServingError.invalid_argument(
            f"input '{alias}' has shape {list(shape)}; the signature takes {wanted}"
        )


def _op_error_message(err) -> str:
    """TensorFlow's own sentence from a graph error, without the node stack and op names."""
    text = getattr(err, "message", None) or str(err)
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("[[")]
    useful = [line for line in lines if not line.startswith(_TF_ERROR_NOISE)]
    return useful[-1] if useful else (lines[-1] if lines else type(err).__name__)


@dataclass
class Servable:
    """A SavedModel version loaded with `tf.saved_model.load` (tag `serve`)."""

    name: str
    version: int
    path: Path
    signature_defs: dict[str, Any]  # name -> tensorflow.SignatureDef, as in saved_model.pb
    functions: dict[str, Any]  # name -> concrete function (callable signatures only)
    handle: Any = None  # the loaded object; keeps the functions' variables alive
    _in_flight: int = 0
    _idle: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def load(cls, name: str, version: int, path: Path) -> Servable:
        import tensorflow as tf

        signature_defs = read_signatures(str(path))
        loaded = tf.saved_model.load(str(path), tags=["serve"])
        functions = dict(loaded.signatures)
        return cls(name, version, Path(path), signature_defs, functions, loaded)

    # ------------------------------------------------------------------ signatures
    def signature(self, signature_name: str):
        """The SignatureDef, or TF Serving's error for an unknown name (400)."""
        if signature_name not in self.functions:
            raise ServingError.invalid_argument(
                f'Serving signature name: "{signature_name}" not found in signature def'
            )
        return self.signature_defs[signature_name]

    def input_infos(self, signature_name: str) -> dict[str, Any]:
        return dict(self.signature(signature_name).inputs)

    def output_infos(self, signature_name: str) -> dict[str, Any]:
        return dict(self.signature(signature_name).outputs)

    # ------------------------------------------------------------------ running
    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call a signature; TensorFlow's complaints about the inputs become 400 errors."""
        import tensorflow as tf

        infos = self.input_infos(signature_name)
        for alias in inputs:
            if alias not in infos:
                raise ServingError.invalid_argument(
                    f"input tensor alias not found in signature: {alias}. Inputs expected to be "
                    f"in the set {{{','.join(sorted(infos))}}}."
                )
        missing = sorted(set(infos) - set(inputs))
        if missing:
            raise ServingError.invalid_argument(
                f"Missing input(s) {','.join(missing)} for signature: {signature_name}"
            )
        for alias, value in inputs.items():
            _check_shape(alias, np.shape(value), infos[alias].tensor_shape)
        function = self.functions[signature_name]
        try:
            tensors = {
                alias: tf.convert_to_tensor(value, dtype=tf.as_dtype(infos[alias].dtype))
                for alias, value in inputs.items()
            }
            outputs = function(**tensors)
        except tf.errors.OpError as err:
            raise ServingError(err.error_code, _op_error_message(err)) from None
        except (ValueError, TypeError) as err:
            raise ServingError.invalid_argument(str(err).strip().splitlines()[0]) from None
        return {alias: tensor.numpy() for alias, tensor in outputs.items()}

    def warm_up(self) -> int:
        """Replay `assets.extra/tf_serving_warmup_requests` as TF Serving does; requests run."""
        import tensorflow as tf

        count = 0
        for log in read_warmup(str(self.path)):
            if log.WhichOneof("log_type") != "predict_log":
                raise ServingError.invalid_argument(
                    f"{self.path}: warmup record {count} is not a predict_log; only Predict "
                    "requests are replayed"
                )
            request = log.predict_log.request
            signature_name = request.model_spec.signature_name or "serving_default"
            arrays = {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()}
            self.run(signature_name, arrays)
            count += 1
        return count

    # ------------------------------------------------------------------ in-flight requests
    def enter(self) -> None:
        with self._idle:
            self._in_flight += 1

    def leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Until no request uses this version (before unloading it); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout)
