"""The embedded server's Prometheus metrics, shared by its REST API (serving/server.py) and its
gRPC API (serving/grpc_api.py): one set of metrics for both, on one page.

Both API modules import this one, and it imports neither of them.
"""

from __future__ import annotations

import bisect
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from serving.errors import CODE_NAMES, OK

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# The APIs TF Serving's REST handler dispatches on, the `API` label of its latency metric.
MODEL_APIS = ("classify", "regress", "predict")

# TF Serving's request metrics (servables/tensorflow/util.cc:66-89): names as its Prometheus
# exporter writes them ('/' -> ':', util/prometheus_exporter.cc:53-63), in microseconds, with
# buckets Buckets::Exponential(10, 1.8, 33): 10 us x 1.8^i for i < 33 (~25 min), then +Inf.
TFS_REQUEST_COUNT = ":tensorflow:serving:request_count"
TFS_REQUEST_LATENCY = ":tensorflow:serving:request_latency"
TFS_RUNTIME_LATENCY = ":tensorflow:serving:runtime_latency"


def _exponential_limits(scale: float, growth: float, count: int) -> tuple[float, ...]:
    """Bucket upper limits as TensorFlow computes them (a running product, not a power)."""
    limits, bound = [], scale
    for _ in range(count):
        limits.append(bound)
        bound *= growth
    return tuple(limits)


TFS_LATENCY_LIMITS = _exponential_limits(10.0, 1.8, 33)


def _number(value: float) -> str:
    """A double as absl::StrCat writes it (six significant digits), as TF Serving's page does."""
    return f"{value:.6g}"


def _escape(value: str) -> str:
    """A label value escaped as prometheus_exporter.cc:32-40 does: backslash, double quote."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """`name="value",...` in the order the metric declares its labels."""
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))


class _TFHistogram:
    """A TensorFlow monitoring Sampler cell: a value lands in the first bucket whose limit is
    above it (tsl Histogram::Add, std::upper_bound), the last bucket running to DBL_MAX."""

    def __init__(self, limits: tuple[float, ...]) -> None:
        self.limits = limits
        self.buckets = [0] * (len(limits) + 1)
        self.sum = 0.0

    def add(self, value: float) -> None:
        self.buckets[bisect.bisect_right(self.limits, value)] += 1
        self.sum += value


class TFServingMetrics:
    """TF Serving's request_count, request_latency and runtime_latency, written as its
    Prometheus exporter writes them, so dashboards built on TF Serving work on this server.

    util/prometheus_exporter.cc:65-140: `# TYPE` lines and no `# HELP`; a counter keeps its
    name (no `_total`); histogram buckets are cumulative with `le` last among the labels, the
    last one `+Inf`; sums are printed with six significant digits.
    """

    COUNT_LABELS = ("model_name", "status")
    LATENCY_LABELS = ("model_name", "API", "entrypoint")
    RUNTIME_LABELS = ("model_name", "API", "runtime")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, ...], int] = {}
        self._latency: dict[tuple[str, ...], _TFHistogram] = {}
        self._runtime: dict[tuple[str, ...], _TFHistogram] = {}

    def request(self, model: str, code: int, api: str, micros: int, entrypoint: str) -> None:
        """One request: counted whatever its outcome; its latency only if it succeeded.

        http_server.cc:194-201 (REST; gRPC: prediction_service_impl.cc:53-59): latency is
        recorded for OK only, the count for every status.
        """
        with self._lock:
            key = (model, CODE_NAMES.get(code, "UNKNOWN"))
            self._counts[key] = self._counts.get(key, 0) + 1
            if code == OK:
                cell = (model, api, entrypoint)
                self._latency.setdefault(cell, _TFHistogram(TFS_LATENCY_LIMITS)).add(micros)

    def runtime(self, model: str, api: str, micros: int) -> None:
        """Time inside the model of a successful call: predict_util.cc:108-113 records it
        around Session::Run with runtime="TF1", the label TF Serving gives this model."""
        with self._lock:
            cell = (model, api, "TF1")
            self._runtime.setdefault(cell, _TFHistogram(TFS_LATENCY_LIMITS)).add(micros)

    def page(self) -> str:
        """The three metrics in TF Serving's order (by name) and format."""
        with self._lock:
            lines = [f"# TYPE {TFS_REQUEST_COUNT} counter"]
            for key in sorted(self._counts):
                lines.append(
                    f"{TFS_REQUEST_COUNT}{{{_labels(self.COUNT_LABELS, key)}}} {self._counts[key]}"
                )
            lines += self._histogram(TFS_REQUEST_LATENCY, self.LATENCY_LABELS, self._latency)
            lines += self._histogram(TFS_RUNTIME_LATENCY, self.RUNTIME_LABELS, self._runtime)
        return "\n".join(lines) + "\n"

    @staticmethod
    def _histogram(
        name: str, label_names: tuple[str, ...], cells: dict[tuple[str, ...], _TFHistogram]
    ) -> list[str]:
        lines = [f"# TYPE {name} histogram"]
        for key in sorted(cells):
            cell, labels = cells[key], _labels(label_names, key)
            cumulative = 0
            for i, count in enumerate(cell.buckets):
                cumulative += count
                le = _number(cell.limits[i]) if i < len(cell.limits) else "+Inf"
                lines.append(f'{name}_bucket{{{labels},le="{le}"}} {cumulative}')
            lines.append(f"{name}_sum{{{labels}}} {_number(cell.sum)}")
            lines.append(f"{name}_count{{{labels}}} {cumulative}")
        return lines


class Metrics:
    """Prometheus metrics of one server (own registry, so several servers can coexist):
    TF Serving's three (`:tensorflow:serving:*`, microseconds) and, beside them, this
    project's `tailings_serving_*` (seconds, HTTP status codes), which benchmarks read."""

    def __init__(self, model_names: list[str]) -> None:
        self.registry = CollectorRegistry()
        self.known = set(model_names)
        self.tfserving = TFServingMetrics()
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

    def observe(self, model: str, api: str, status: int, code: int, seconds: float) -> None:
        """One REST request under /v1/ (TF Serving counts exactly those, http_server.cc:141):
        its model, API ("predict", "status", ...), HTTP status and TF Serving status code."""
        model = self.label(model)
        self.requests.labels(model, api, str(status)).inc()
        self.latency.labels(model, api).observe(seconds)
        # TF Serving's API label is the method of a POST (":predict" -> "predict"), and empty
        # for status and metadata (http_rest_api_util.cc:99-107 ParseModelInfo).
        tfs_api = api if api in MODEL_APIS else ""
        self.tfserving.request(model, code, tfs_api, round(seconds * 1e6), "REST")

    def observe_model(self, model: str, signature: str, seconds: float) -> None:
        """Time inside the model call of a successful predict request."""
        self.model_time.labels(self.label(model), signature).observe(seconds)
        self.tfserving.runtime(self.label(model), "Predict", round(seconds * 1e6))

    def page(self) -> bytes:
        return generate_latest(self.registry) + self.tfserving.page().encode()
