"""The embedded model server: TF Serving's REST API on Tornado, models from the ModelManager.

Why Tornado: an established HTTP/1.1 server (keep-alive, chunked bodies, streaming uploads)
already installed here, whose event loop keeps accepting connections while requests run. Every
request is parsed, predicted and encoded in a worker thread pool: TensorFlow releases the GIL
while the model runs, so concurrent requests overlap and the loop never blocks on a model.

Routes (case-insensitive, as TF Serving's regexes):
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    predictions
    GET  /monitoring/prometheus/metrics                          request counts and latencies
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http
import logging
import re
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
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serving import rest
from serving.config import METRICS_PATH, ServerConfig
from serving.errors import ServingError
from serving.manager import ModelManager
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
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
JSON_TYPE = "application/json"
BODY_CHUNK_BYTES = 1 << 20  # tiles are MBs: read them in few chunks (Tornado's default: 64 KiB)


@dataclass
class Reply:
    status: int
    body: bytes
    api: str = "other"
    model: str = ""
    content_type: str = JSON_TYPE


class Metrics:
    """Prometheus metrics of one server (own registry, so several servers can coexist)."""

    def __init__(self, model_names: list[str]) -> None:
        self.registry = CollectorRegistry()
        self.known = set(model_names)
        self.requests = Counter(
            "tailings_serving_requests",
            "REST requests by model, API and HTTP status",
            ("model", "api", "code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "tailings_serving_request_seconds",
            "REST request wall time, body received to response ready",
            ("model", "api"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_time = Histogram(
            "tailings_serving_model_seconds",
            "Time inside the model call of a predict request",
            ("model", "signature"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def label(self, model: str) -> str:
        """Only configured names become label values (no unbounded label sets from URLs)."""
        return model if model in self.known else ""

    def observe(self, reply: Reply, seconds: float) -> None:
        model = self.label(reply.model)
        self.requests.labels(model, reply.api, str(reply.status)).inc()
        self.latency.labels(model, reply.api).observe(seconds)

    def page(self) -> bytes:
        return generate_latest(self.registry)


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
            return Reply(err.http_status, rest.error_body(err.message), api, model)
        except Exception as err:  # a bug, not bad input: 500, still in TF Serving's format
            log.exception("request %s %s failed", method, path)
            return Reply(500, rest.error_body(f"Internal: {type(err).__name__}: {err}"), api, model)

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
            raise ServingError.unimplemented(
                f"{api} is not implemented by the embedded server; use :predict"
            )
        with gc_paused():
            doc = rest.parse_json(body)
        signature = rest.signature_name(doc)
        with self.manager.servable(name, version, label) as servable:
            with gc_paused():
                arrays, row_format = rest.predict_inputs(doc, servable.input_infos(signature))
            del doc  # the nested lists of a JSON-numbers request: freed by refcount, now
            started = time.perf_counter()
            outputs = servable.run(signature, arrays)
            self.metrics.model_time.labels(self.metrics.label(name), signature).observe(
                time.perf_counter() - started
            )
        return rest.predict_response(outputs, row_format)

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


@tornado.web.stream_request_body
class RestHandler(tornado.web.RequestHandler):
    """Collects the body (bounded), runs the request in the worker pool, writes the reply."""

    def initialize(self, server: EmbeddedServer) -> None:
        self.server = server
        self.limit = server.config.max_body_bytes
        self.chunks: list[bytes] = []
        self.size = 0

    def prepare(self) -> None:
        self.started = time.perf_counter()
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.limit:
            self.size = int(length)  # over the limit: the body is read and dropped

    def data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size <= self.limit:
            self.chunks.append(chunk)
        else:
            self.chunks.clear()

    async def _serve(self) -> None:
        method, path = self.request.method or "", self.request.path
        if self.size > self.limit:
            message = (
                f"Request body of {self.size} bytes is over the server's limit of {self.limit}"
            )
            reply = Reply(413, rest.error_body(message))
        else:
            reply = await asyncio.get_running_loop().run_in_executor(
                self.server.executor, self._work, method, path, b"".join(self.chunks)
            )
        self.server.metrics.observe(reply, time.perf_counter() - self.started)
        self.set_status(reply.status, reason=_reason(reply.status))
        self.set_header("Content-Type", reply.content_type)
        self.finish(reply.body)

    def _work(self, method: str, path: str, body: bytes) -> Reply:
        if self.request.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                body = gunzip(body, self.limit)
            except ServingError as err:
                return Reply(err.http_status, rest.error_body(err.message))
        return self.server.api.dispatch(method, path, body)

    get = post = put = delete = patch = _serve  # others get TF Serving's "Malformed request"


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
            self.manager.start()
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            # Room to read (and drop) a body somewhat over the limit, so the client gets the
            # 413 with its message instead of a reset connection; far beyond, Tornado hangs up.
            self._http = tornado.httpserver.HTTPServer(
                self.application(),
                max_body_size=2 * self.config.max_body_bytes,
                chunk_size=BODY_CHUNK_BYTES,
            )
            self._http.add_sockets(sockets)
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="rest-server", daemon=True)
        self._thread.start()
        ready.wait()

    def stop(self) -> None:
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
