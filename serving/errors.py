"""The serving layer's errors: `PredictError` (bad input to `tailings predict`), and errors with
TF Serving's status codes and its HTTP mapping (http_server.cc ToHTTPStatusCode)."""

from __future__ import annotations

from data.errors import TailingsError


class PredictError(TailingsError):
    """Bad input or an unusable model/server; the message names the file and the problem.
    Here, not in `serving.predict`, so the readers `serving.predict` calls (`serving.sentinel2`)
    raise it without importing their caller."""


# tensorflow.error.Code values and the HTTP status TF Serving's REST API answers them with.
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED = 0, 1, 2, 3, 4
NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED = 5, 6, 7, 8
FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED = 9, 10, 11, 12
INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED = 13, 14, 15, 16

# tensorflow.error.Code names: the `status` label of TF Serving's request_count metric
# (servables/tensorflow/util.cc:117 RecordModelRequestCount, error::Code_Name).
CODE_NAMES = {
    OK: "OK",
    CANCELLED: "CANCELLED",
    UNKNOWN: "UNKNOWN",
    INVALID_ARGUMENT: "INVALID_ARGUMENT",
    DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
    NOT_FOUND: "NOT_FOUND",
    ALREADY_EXISTS: "ALREADY_EXISTS",
    PERMISSION_DENIED: "PERMISSION_DENIED",
    RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
    FAILED_PRECONDITION: "FAILED_PRECONDITION",
    ABORTED: "ABORTED",
    OUT_OF_RANGE: "OUT_OF_RANGE",
    UNIMPLEMENTED: "UNIMPLEMENTED",
    INTERNAL: "INTERNAL",
    UNAVAILABLE: "UNAVAILABLE",
    DATA_LOSS: "DATA_LOSS",
    UNAUTHENTICATED: "UNAUTHENTICATED",
}

HTTP_STATUS = {
    OK: 200,
    CANCELLED: 499,
    UNKNOWN: 500,
    INVALID_ARGUMENT: 400,
    DEADLINE_EXCEEDED: 504,
    NOT_FOUND: 404,
    ALREADY_EXISTS: 409,
    PERMISSION_DENIED: 403,
    RESOURCE_EXHAUSTED: 429,
    FAILED_PRECONDITION: 400,
    ABORTED: 409,
    OUT_OF_RANGE: 400,
    UNIMPLEMENTED: 501,
    INTERNAL: 500,
    UNAVAILABLE: 503,
    DATA_LOSS: 500,
    UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A failed request: a TF Serving error code, its HTTP status and the message for {"error"}."""

    def __init__(self, code: int, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status or HTTP_STATUS.get(code, 500)

    @classmethod
    def invalid_argument(cls, message: str) -> ServingError:
        return cls(INVALID_ARGUMENT, message)

    @classmethod
    def not_found(cls, message: str) -> ServingError:
        return cls(NOT_FOUND, message)

    @classmethod
    def unimplemented(cls, message: str) -> ServingError:
        return cls(UNIMPLEMENTED, message)

    @classmethod
    def failed_precondition(cls, message: str) -> ServingError:
        return cls(FAILED_PRECONDITION, message)

    @classmethod
    def too_large(cls, message: str) -> ServingError:
        """A body over the server's limit: HTTP 413 (TF Serving has no such limit to mirror)."""
        return cls(RESOURCE_EXHAUSTED, message, http_status=413)
