"""The embedded model server: TF Serving's REST API on Tornado, models from the ModelManager.

Why Tornado: an established HTTP/1.1 server (keep-alive, chunked bodies, streaming uploads)
already installed here, whose event loop keeps accepting connections while requests run. Every
request is parsed, predicted and encoded in a worker thread pool: TensorFlow releases the GIL
while the model runs, so concurrent requests overlap and the loop never blocks on a model.

Routes (case-insensitive, as TF Serving's regexes):
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    predictions
    POST ...:classify, ...:regress                               checked as TF Serving does
    OPTIONS /v1/...                                              CORS preflight, as TF Serving
    GET  /monitoring/prometheus/metrics                          request counts and latencies
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http
import logging
import re
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import unquote

import tornado.httpserver
import tornado.netutil
import tornado.web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serving import rest
from serving.config import METRICS_PATH, ServerConfig
from serving.errors import FAILED_PRECONDITION, INTERNAL, OK, ServingError
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.model_config import ModelEntry

log = logging.getLogger(__name__)

# tensorflow_serving/model_servers/http_rest_api_util.cc
PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
INT64_MAX = 2**63 - 1
JSON_TYPE = "application/json"
BODY_CHUNK_BYTES = 1 << 20  # tiles are MBs: read them in few chunks (Tornado's default: 64 KiB)
# An OPTIONS request is a CORS preflight when its Origin has a scheme (http_server.cc:171-172).
PREFLIGHT_ORIGIN_RE = re.compile(r"https?://")
# http_rest_api_util.cc:40-44 AddCORSHeaders (with --rest_api_enable_cors_support).
CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, GET"),
    ("Access-Control-Allow-Headers", "Content-Type"),
)


@dataclass
class Reply:
    status: int
    body: bytes
    api: str = "other"
    model: str = ""
    content_type: str | None = JSON_TYPE  # None: no body, no Content-Type (TF Serving's OPTIONS)
    code: int = OK  # the TF Serving status code behind `status`, for request_count


class RestApi:
    """Request dispatch, independent of the HTTP stack: (method, path, body) -> Reply."""

    def __init__(self, manager: ModelManager, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics

    def dispatch(self, method: str, path: str, body: bytes) -> Reply:
        api, model = "other", ""
        try:
            match = PREDICT_RE.fullmatch(path) if method == "POST" else None
            if match:
                model, version, label = self._model_spec(match)
                api = match.group(4).lower()
                return Reply(200, self._predict(api, model, version, label, body), api, model)
            match = STATUS_RE.fullmatch(path) if method == "GET" else None
            if match:
                api = "metadata" if match.group(4) else "status"
                if not match.group(1):
                    raise ServingError.invalid_argument("Missing model name in request.")
                model, version, label = self._model_spec(match)
                if api == "metadata":
                    return Reply(200, self._metadata(model, version, label), api, model)
                states = self.manager.version_states(model, version, label)
                return Reply(200, rest.status_body(states), api, model)
            raise ServingError.invalid_argument(f"Malformed request: {method} {path}")
        except ServingError as err:
            return Reply(err.http_status, rest.error_body(err.message), api, model, code=err.code)
        except Exception as err:  # a bug, not bad input: 500, still in TF Serving's format
            log.exception("request %s %s failed", method, path)
            message = rest.error_body(f"Internal: {type(err).__name__}: {err}")
            return Reply(500, message, api, model, code=INTERNAL)

    @staticmethod
    def preflight(origin: str) -> Reply:
        """OPTIONS on /v1/...: TF Serving's CORS preflight (http_server.cc:170-177).

        OK when the Origin header has an http(s) scheme, else FAILED_PRECONDITION "Origin header
        is missing in CORS preflight" (400); either way the body is empty, as TF Serving writes
        only the handler's output, which an OPTIONS request never reaches.
        """
        if PREFLIGHT_ORIGIN_RE.search(origin):
            return Reply(200, b"", "options", content_type=None)
        return Reply(400, b"", "options", content_type=None, code=FAILED_PRECONDITION)

    @staticmethod
    def _model_spec(match: re.Match) -> tuple[str, int | None, str | None]:
        name = unquote(match.group(1))
        version = None
        if match.group(2):
            version = int(match.group(2))
            if version > INT64_MAX:
                raise ServingError.invalid_argument(
                    f"Failed to convert version: {match.group(2)} to numeric."
                )
        label = unquote(match.group(3)) if match.group(3) else None
        return name, version, label

    def _predict(
        self, api: str, name: str, version: int | None, label: str | None, body: bytes
    ) -> bytes:
        if api != "predict":
            self._classify_or_regress(api, name, version, label, body)
        with gc_paused():
            doc = rest.parse_json(body)
        signature = rest.signature_name(doc)
        with self.manager.servable(name, version, label) as servable:
            with gc_paused():
                arrays, row_format = rest.predict_inputs(doc, servable.input_infos(signature))
            del doc  # the nested lists of a JSON-numbers request: freed by refcount, now
            started = time.perf_counter()
            outputs = servable.run(signature, arrays)
            self.metrics.observe_model(name, signature, time.perf_counter() - started)
        return rest.predict_response(outputs, row_format)

    def _classify_or_regress(
        self, api: str, name: str, version: int | None, label: str | None, body: bytes
    ) -> None:
        """TF Serving's checks of a :classify / :regress request, in its order: the JSON
        (json_tensor.cc:765-808), then the model (classification_service.cc:52-53: 404 for an
        unknown model or version), then the signature (classifier.cc:151-215, regressor.cc:
        146-205: 400 for a predict-only one, such as every signature our pipeline exports).

        A signature that passes would be run by TF Serving; the embedded server does not run
        classification or regression, and says so (UNIMPLEMENTED, 501).
        """
        doc = rest.parse_json(body)
        signature = rest.signature_name(doc)
        rest.check_examples(doc)
        with self.manager.servable(name, version, label) as servable:
            rest.check_classify_regress_signature(api, servable.signature_defs, signature)
        raise ServingError.unimplemented(
            f"signature {signature!r} is a {api} signature, which TF Serving would run; the "
            "embedded server runs :predict only (serve this model with --engine tfserving)"
        )

    def _metadata(self, name: str, version: int | None, label: str | None) -> bytes:
        with self.manager.servable(name, version, label) as servable:
            return rest.metadata_body(name, servable.version, servable.signature_defs)


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a request's JSON becomes arrays (any thread).

    A JSON-numbers tile is ~200,000 nested lists; allocating them triggers full collections,
    which in a process holding TensorFlow walk millions of objects (measured: ~4x the parse
    time). The lists hold no cycles, so reference counting frees them without the collector.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def gunzip(body: bytes, limit: int) -> bytes:
    """A gzip request body, decoded; never more than `limit` bytes (no zip bombs)."""
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = decoder.decompress(body, limit + 1)
    except zlib.error as err:
        raise ServingError.invalid_argument(
            f"Failed to decompress gzip request body: {err}"
        ) from None
    if len(data) > limit:
        raise ServingError.too_large(
            f"Request body is over the server's limit of {limit} bytes after gzip decoding"
        )
    return data


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:  # 499, TF Serving's CANCELLED
        return "Client Closed Request"


def _model_in(path: str) -> str:
    """The model name a /v1/ path names, or "" (for the metrics of a request refused early)."""
    match = PREDICT_RE.fullmatch(path) or STATUS_RE.fullmatch(path)
    return unquote(match.group(1)) if match and match.group(1) else ""


@tornado.web.stream_request_body
class RestHandler(tornado.web.RequestHandler):
    """Collects the body (bounded), runs the request in the worker pool, writes the reply.

    A body over the limit is never kept: it is read and dropped, and the answer is 413 with
    the size in the message; Tornado's own size limit is out of the way, so the client gets
    that JSON and not Tornado's empty 400 whatever the size. (TF Serving has no limit: it
    reads every body whole into memory, http_server.cc:154-160.) A client that waits for
    "100 Continue" before sending an over-limit body gets the 413 at once instead, and the
    connection is closed rather than the body read.
    """

    def initialize(self, server: EmbeddedServer) -> None:
        self.server = server
        self.limit = server.config.max_body_bytes
        self.chunks: list[bytes] = []
        self.received = 0  # body bytes read so far
        self.declared: int | None = None  # Content-Length, if given
        self.too_large = False

    def prepare(self) -> None:
        self.started = time.perf_counter()
        length = self.request.headers.get("Content-Length", "")
        self.declared = int(length) if length.isdigit() else None
        if self.declared is not None and self.declared > self.limit:
            self.too_large = True
            if self.request.headers.get("Expect", "").lower() == "100-continue":
                self._reply(self._too_large_reply())  # before Tornado says "100 Continue"

    def data_received(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limit:
            self.too_large = True
        if self.too_large:
            self.chunks.clear()
        else:
            self.chunks.append(chunk)

    def _too_large_reply(self) -> Reply:
        size = self.declared if self.declared is not None else self.received
        err = ServingError.too_large(
            f"Request body of {size} bytes is over the server's limit of {self.limit}"
        )
        model = _model_in(self.request.path)
        return Reply(413, rest.error_body(err.message), model=model, code=err.code)

    async def _serve(self) -> None:
        method, path = self.request.method or "", self.request.path
        if self.too_large:
            reply = self._too_large_reply()
        else:
            reply = await asyncio.get_running_loop().run_in_executor(
                self.server.executor, self._work, method, path, b"".join(self.chunks)
            )
        self._reply(reply)

    def _reply(self, reply: Reply) -> None:
        seconds = time.perf_counter() - self.started
        self.server.metrics.observe(reply.model, reply.api, reply.status, reply.code, seconds)
        self.set_status(reply.status, reason=_reason(reply.status))
        if reply.content_type is None:
            self.clear_header("Content-Type")
        else:
            self.set_header("Content-Type", reply.content_type)
        if self.server.config.enable_cors:
            for name, value in CORS_HEADERS:
                self.set_header(name, value)
        self.finish(reply.body)

    def _work(self, method: str, path: str, body: bytes) -> Reply:
        if method == "OPTIONS":
            return self.server.api.preflight(self.request.headers.get("Origin", ""))
        if self.request.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                body = gunzip(body, self.limit)
            except ServingError as err:
                return Reply(err.http_status, rest.error_body(err.message), code=err.code)
        return self.server.api.dispatch(method, path, body)

    # Every method TF Serving's HTTP server accepts (evhttp_server.cc:112-117) reaches its
    # handler: OPTIONS is the CORS preflight, GET and POST the API, the others get TF Serving's
    # "Malformed request" 400 (HEAD without its body, as HTTP has it).
    get = post = put = delete = patch = head = options = _serve


class MetricsHandler(tornado.web.RequestHandler):
    def initialize(self, server: EmbeddedServer) -> None:
        self.server = server

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.server.metrics.page())


class NotFoundHandler(tornado.web.RequestHandler):
    def prepare(self) -> None:
        self.set_status(404)
        self.set_header("Content-Type", JSON_TYPE)
        message = f"Not found: {self.request.method} {self.request.path} (the API is under /v1/)"
        self.finish(rest.error_body(message))


class EmbeddedServer:
    """The REST server and its model manager; `start()` runs both in background threads."""

    def __init__(
        self,
        entries: list[ModelEntry],
        config: ServerConfig | None = None,
        say: Callable[[str], None] = log.info,
        manager: ModelManager | None = None,
        grpc_port: int | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.say = say
        self.manager = manager or ModelManager(entries, self.config, say=say)
        self.metrics = Metrics([e.name for e in entries])
        self.api = RestApi(self.manager, self.metrics)
        self.executor = ThreadPoolExecutor(self.config.threads, thread_name_prefix="rest")
        self.port = self.config.port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: tornado.httpserver.HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.grpc = None  # TF Serving's gRPC API on the same manager; grpc_port None: REST only
        if grpc_port is not None:
            from serving.grpc_api import GrpcServer  # imports TensorFlow (its protos): only here

            self.grpc = GrpcServer(
                self.manager, self.config.host, grpc_port, self.config.threads, self.metrics
            )

    @property
    def url(self) -> str:
        host = self.config.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def application(self) -> tornado.web.Application:
        handlers = [
            (r"(?i)/v1/.*", RestHandler, {"server": self}),
            (re.escape(METRICS_PATH), MetricsHandler, {"server": self}),
        ]
        return tornado.web.Application(
            handlers,
            default_handler_class=NotFoundHandler,
            log_function=lambda handler: log.debug(
                "%d %s %s", handler.get_status(), handler.request.method, handler.request.uri
            ),
        )

    def start(self) -> None:
        """Bind the port (fail fast), load the models on disk, then serve; returns when ready.

        As TF Serving, requests are answered only after the initial load: connections made
        meanwhile wait in the listen backlog.
        """
        sockets = tornado.netutil.bind_sockets(self.config.port, address=self.config.host)
        self.port = sockets[0].getsockname()[1]
        try:
            if self.grpc is not None:
                self.grpc.bind()
            self.manager.start()
        except BaseException:
            for sock in sockets:
                sock.close()
            if self.grpc is not None:
                self.grpc.stop(0)
            raise
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._http = tornado.httpserver.HTTPServer(
                self.application(),
                max_body_size=sys.maxsize,  # RestHandler enforces the limit, with a 413
                chunk_size=BODY_CHUNK_BYTES,
            )
            self._http.add_sockets(sockets)
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="rest-server", daemon=True)
        self._thread.start()
        ready.wait()
        if self.grpc is not None:
            self.grpc.start()

    def stop(self) -> None:
        if self.grpc is not None:
            self.grpc.stop()
        if self._loop is not None and self._http is not None:

            async def shutdown() -> None:
                self._http.stop()
                await self._http.close_all_connections()

            future = asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
            try:
                future.result(timeout=10)
            except Exception:  # stopping anyway
                log.exception("closing connections failed")
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.manager.stop()

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
