"""Benchmark serving: one 448x448 prediction in-process vs. TF Serving's gRPC and REST APIs.

    .venv/bin/python benchmarks/serving.py [--model serving/models/tailings] [--repeats 60]

The remote sides are the real thing: `tailings serve` (the embedded server) in its own process,
on 127.0.0.1, serving both APIs from one model manager; REST is called with
`serving.client.RestClient`, gRPC with the stock `tensorflow_serving.apis` stub (as
`serving.client.GrpcClient` calls it), the two ways `tailings predict --server` calls a server.
The in-process side calls the same SavedModel through `serving.servable.Servable`, the code the
server itself runs, in this process. All sides get the same tile and return a numpy array of
probabilities, so the remote numbers include everything a client pays on top of the model:
encoding the request, HTTP/1.1 (REST) or HTTP/2 (gRPC) on loopback, the server's decoding and
encoding (JSON and base64, or protobuf), and decoding the response. Variants are interleaved
(one of each per round) so load from other jobs lands on all of them alike; every round records
how much CPU other processes used, and rounds disturbed by them are run again. Results go to
`benchmarks/results/serving.json` and, as tables, `serving.md` (`--render` rewrites the tables
from the JSON).

Measured:
- latency of one tile (batch 1): p50, p90, p99, mean, per variant, with the remote time split
  into client encode / round trip (server included) / client decode, and the server's own
  model time from its Prometheus histogram (REST requests);
- throughput at 1, 2 and 4 concurrent clients (each its own connection) over REST and gRPC,
  against in-process calls from 1, 2 and 4 threads;
- payload sizes of the request formats and the responses, raw and gzip-compressed.
Targets: gRPC p50 <= 1.15 x in-process p50 (issue 16); REST was held to the same in issue 4 and
stays near 1.4 x: its JSON and base64 are the cost.
"""

from __future__ import annotations

import argparse
import base64
import gc
import gzip
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
from _env import DEFAULT_DATA, RESULTS, ROOT  # sets the environment first

DEFAULT_MODEL = ROOT / "serving" / "models" / "tailings"
DEFAULT_OUT = RESULTS / "serving.json"
TARGET_RATIO = 1.15  # remote p50 / in-process p50 (gRPC: issue 16; REST: issue 4)
TARGET_VARIANTS = {  # variant -> the issue that set its target
    "grpc_example": 16,
    "grpc_image": 16,
    "rest_b64_example": 4,
    "rest_json_floats": 4,
}
MODEL_NAME = "tailings"
CLIENT_COUNTS = (1, 2, 4)
TICK = os.sysconf("SC_CLK_TCK")


# --- load from other jobs -------------------------------------------------------------------
def _busy_ticks() -> int:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values[:8]) - idle


def _process_ticks(pid: int | str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])


class OtherLoad:
    """CPU cores used by processes other than this one and the server, over a span of time."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid

    def snapshot(self) -> tuple[float, int, int]:
        own = _process_ticks("self") + (_process_ticks(self.server_pid) if self.server_pid else 0)
        return time.monotonic(), _busy_ticks(), own

    def cores_since(self, start: tuple[float, int, int]) -> float:
        now = self.snapshot()
        seconds = max(now[0] - start[0], 1e-9)
        other = (now[1] - start[1]) - (now[2] - start[2])
        return max(other, 0) / TICK / seconds

    def wait_quiet(self, quiet_cores: float, max_wait: float) -> float:
        """Sample 2 s at a time until other jobs use at most `quiet_cores`; last sample."""
        deadline = time.monotonic() + max_wait
        while True:
            start = self.snapshot()
            time.sleep(2.0)
            cores = self.cores_since(start)
            if cores <= quiet_cores or time.monotonic() >= deadline:
                return cores
            print(f"  other jobs use {cores:.2f} cores; waiting for <= {quiet_cores}", flush=True)


# --- inputs and the two sides ---------------------------------------------------------------
def find_version_dir(path: Path) -> Path:
    from serving.predict import PredictError
    from serving.predict import find_version_dir as find

    try:
        return find(path)
    except PredictError as err:
        raise SystemExit(
            f"{err}\nPush a model first (`tailings run`), or pass --model DIR."
        ) from None


def input_tile(tile: int, data: Path) -> tuple[np.ndarray, str]:
    """A real Sentinel-2 tile when the study's data is there, else seeded synthetic reflectance."""
    import rasterio

    for path in sorted((data / "img").glob("img_*.tif"))[:20]:
        with rasterio.open(path) as src:
            if src.height >= tile and src.width >= tile and src.count == 3:
                pixels = src.read(window=((0, tile), (0, tile)), out_dtype="float32")
                return np.ascontiguousarray(np.moveaxis(pixels, 0, -1)), str(path)
    rng = np.random.default_rng(0)
    return rng.uniform(0.0, 0.3, size=(tile, tile, 3)).astype(np.float32), "synthetic"


def start_server(version_dir: Path, work: Path) -> tuple[subprocess.Popen, str, str]:
    """`tailings serve` on free REST and gRPC ports, serving the version through a symlinked
    base path; (process, REST URL, gRPC URL)."""
    base = work / "models" / MODEL_NAME
    base.mkdir(parents=True)
    (base / "1").symlink_to(version_dir.resolve(), target_is_directory=True)
    argv = [sys.executable, "-m", "tailings", "serve", "--port", "0", "--grpc-port", "0"]
    argv += ["--model-base-path", str(base.parent), "--model-name", MODEL_NAME]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    lines: list[str] = []
    urls: dict[str, str] = {}
    while len(urls) < 2:
        line = process.stderr.readline()
        if not line:
            raise SystemExit("the server exited:\n" + "".join(lines[-20:]))
        lines.append(line)
        match = re.search(r"serving (REST|gRPC) on ((?:http|grpc)://\S+)", line)
        if match:
            urls[match.group(1)] = match.group(2)
    threading.Thread(target=lambda: process.stderr.read(), daemon=True).start()
    return process, urls["REST"], urls["gRPC"]


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def server_model_seconds(url: str) -> dict[str, tuple[float, float]]:
    """(sum seconds, count) of the server's in-model time per signature, from its metrics."""
    import requests

    from serving.config import METRICS_PATH

    text = requests.get(url + METRICS_PATH, timeout=30).text
    out: dict[str, list[float]] = {}
    pattern = r'tailings_serving_model_seconds_(sum|count)\{model="[^"]*",signature="([^"]+)"\}'
    for line in text.splitlines():
        match = re.match(pattern + r" (\S+)", line)
        if match:
            part, signature, value = match.groups()
            out.setdefault(signature, [0.0, 0.0])[0 if part == "sum" else 1] = float(value)
    return {k: (v[0], v[1]) for k, v in out.items()}


# --- variants -------------------------------------------------------------------------------
@dataclass
class Variant:
    key: str
    label: str
    signature: str
    remote: bool  # through a server: compared with the in-process variant of its signature
    run: Callable[[], dict[str, float]]  # phase -> seconds; "total" always present
    samples: dict[str, list[float]] = field(default_factory=dict)
    other_cores: list[float] = field(default_factory=list)

    def add(self, phases: dict[str, float], other: float) -> None:
        for phase, seconds in phases.items():
            self.samples.setdefault(phase, []).append(seconds)
        self.other_cores.append(other)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": pct(values, 50) * 1e3,
        "p90_ms": pct(values, 90) * 1e3,
        "p99_ms": pct(values, 99) * 1e3,
        "mean_ms": statistics.fmean(values) * 1e3,
        "min_ms": min(values) * 1e3,
    }


def make_variants(servable, client, grpc_client, tile: np.ndarray, example: bytes) -> list[Variant]:
    from tensorflow_serving.apis import predict_pb2

    from serving.client import dense_predictions
    from serving.grpc_api import to_ndarray, write_tensor

    size = tile.shape[0]
    shape = (1, size, size, 1)
    examples = np.array([example], dtype=object)
    images = tile[None]

    def in_process(signature: str, inputs: dict) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            start = time.perf_counter()
            out = servable.run(signature, inputs)["probabilities"]
            assert out.shape == shape
            return {"total": time.perf_counter() - start}

        return run

    def rest(
        signature: str, encode: Callable[[], bytes], decode: Callable[[bytes], np.ndarray]
    ) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            t0 = time.perf_counter()
            body = encode()
            t1 = time.perf_counter()
            response = client.predict_raw(body)
            t2 = time.perf_counter()
            out = decode(response)
            t3 = time.perf_counter()
            assert out.shape == shape
            return {"encode": t1 - t0, "http": t2 - t1, "decode": t3 - t2, "total": t3 - t0}

        return run

    def grpc(signature: str, alias: str, value: np.ndarray) -> Callable[[], dict[str, float]]:
        """The stock stub's Predict; phases as REST's (serializing is inside the call)."""

        def run() -> dict[str, float]:
            t0 = time.perf_counter()
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL_NAME
            request.model_spec.signature_name = signature
            write_tensor(value, request.inputs[alias])
            t1 = time.perf_counter()
            response = grpc_client.predictions.Predict(request, timeout=grpc_client.timeout)
            t2 = time.perf_counter()
            out = to_ndarray(response.outputs["probabilities"])
            t3 = time.perf_counter()
            assert out.shape == shape
            return {"encode": t1 - t0, "rpc": t2 - t1, "decode": t3 - t2, "total": t3 - t0}

        return run

    def b64_body() -> bytes:
        instance = {"b64": base64.b64encode(example).decode("ascii")}
        return orjson.dumps({"signature_name": "serving_default", "instances": [instance]})

    def floats_body() -> bytes:
        return orjson.dumps(
            {"signature_name": "predict_image", "instances": images},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    def fast(body: bytes) -> np.ndarray:
        return dense_predictions(body, shape)

    def generic(body: bytes) -> np.ndarray:
        return np.asarray(orjson.loads(body)["predictions"], dtype=np.float32)

    return [
        Variant(
            "in_process_example",
            "in-process serving_default (tf.Example)",
            "serving_default",
            False,
            in_process("serving_default", {"examples": examples}),
        ),
        Variant(
            "grpc_example",
            "gRPC serving_default, tf.Example (DT_STRING)",
            "serving_default",
            True,
            grpc("serving_default", "examples", examples),
        ),
        Variant(
            "rest_b64_example",
            "REST serving_default, b64 tf.Example",
            "serving_default",
            True,
            rest("serving_default", b64_body, fast),
        ),
        Variant(
            "in_process_image",
            "in-process predict_image (float32 array)",
            "predict_image",
            False,
            in_process("predict_image", {"images": images}),
        ),
        Variant(
            "grpc_image",
            "gRPC predict_image, float32 tensor_content",
            "predict_image",
            True,
            grpc("predict_image", "images", images),
        ),
        Variant(
            "rest_json_floats",
            "REST predict_image, JSON floats",
            "predict_image",
            True,
            rest("predict_image", floats_body, fast),
        ),
        Variant(
            "rest_b64_example_generic_decode",
            "REST serving_default, b64, response via orjson + np.asarray",
            "serving_default",
            True,
            rest("serving_default", b64_body, generic),
        ),
    ]


def measure_latency(
    variants: list[Variant],
    repeats: int,
    load: OtherLoad,
    quiet_cores: float,
    max_wait: float = 120.0,
) -> int:
    """`repeats` rounds of one call per variant. A round disturbed by other jobs (more than
    2 x `quiet_cores` during any of its calls) is discarded and run again, at most 2 x
    `repeats` times, after waiting up to `max_wait` (at most 120 s) for quiet; after that
    disturbed rounds are kept. Returns the number discarded."""
    for variant in variants:  # warm-up: first calls trace and allocate
        for _ in range(3):
            variant.run()
    done = discarded = 0
    while done < repeats:
        # Rotate the order so no variant always follows the same one.
        shift = done % len(variants)
        rows = []
        for variant in variants[shift:] + variants[:shift]:
            gc.collect()  # no variant pays for another's garbage (timeit disables gc too)
            gc.disable()
            start = load.snapshot()
            try:
                phases = variant.run()
            finally:
                gc.enable()
            rows.append((variant, phases, load.cores_since(start)))
        disturbed = max(other for _, _, other in rows) > 2 * quiet_cores
        if disturbed and discarded < 2 * repeats:  # past that budget, keep what comes
            discarded += 1
            load.wait_quiet(quiet_cores, min(max_wait, 120))
            continue
        for variant, phases, other in rows:
            variant.add(phases, other)
        done += 1
        if done % 10 == 0:
            print(f"  latency round {done}/{repeats} ({discarded} discarded)", flush=True)
    return discarded


def measure_throughput(
    call_factory: Callable[[], Callable[[], object]], clients: int, seconds: float, load: OtherLoad
) -> dict[str, float]:
    """Requests completed by `clients` threads, each looping its own call for `seconds`."""
    counts = [0] * clients
    errors = [0] * clients
    stop = threading.Event()
    calls = [call_factory() for _ in range(clients)]

    def loop(i: int) -> None:
        while not stop.is_set():
            try:
                calls[i]()
                counts[i] += 1
            except Exception:  # counted, not raised: the run must finish
                errors[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    start = load.snapshot()
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return {
        "clients": clients,
        "requests": sum(counts),
        "errors": sum(errors),
        "seconds": elapsed,
        "per_second": sum(counts) / elapsed,
        "other_jobs_cores": load.cores_since(start),
    }


# --- report ---------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("tensorflow", "tornado", "orjson", "requests", "numpy", "tensorflow-serving-api")
    return {name: version(name) for name in names}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


PHASES = ("encode", "http", "rpc", "decode")  # "http": REST's round trip, "rpc": gRPC's


def _round_trip(row: dict) -> str:
    """The phase holding the server's work: HTTP (REST) or RPC (gRPC)."""
    return "rpc" if "rpc" in row["phases"] else "http"


def markdown(result: dict) -> str:
    lines = [
        "# Serving benchmark",
        "",
        f"{result['date']}; {result['machine']['cpus']} CPUs ({result['machine']['cpu']}); "
        f"model `{result['model']['path']}` ({result['model']['tile']} x "
        f"{result['model']['tile']} tile, input: {result['model']['input']}).",
        "",
    ]
    if result.get("note"):
        lines += [f"**Machine state:** {result['note']}", ""]
    if result.get("command"):
        lines += ["Reproduce (from the repository root):", ""]
        lines += [f"    .venv/bin/python benchmarks/{result['command']}", ""]
    lines += [
        f"{result['repeats']} rounds of every variant, interleaved; "
        f"{result['discarded_rounds']} round(s) discarded and re-run: other jobs used more "
        f"than {2 * result['quiet_cores']:g} cores during them.",
        "",
        "## One tile, batch 1 (milliseconds)",
        "",
        "| variant | p50 | p90 | p99 | mean | p50 / in-process | encode | round trip | decode "
        "| other jobs (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["latency"]:
        t = row["total"]
        ratio = f"{row['ratio_p50']:.3f}" if row.get("ratio_p50") else "-"
        parts = [
            f"{row['phases'][p]['p50_ms']:.1f}" if p in row["phases"] else "-"
            for p in ("encode", _round_trip(row), "decode")
        ]
        lines.append(
            f"| {row['label']} | {t['p50_ms']:.1f} | {t['p90_ms']:.1f} | {t['p99_ms']:.1f} | "
            f"{t['mean_ms']:.1f} | {ratio} | {' | '.join(parts)} | "
            f"{row['other_jobs_cores_max']:.2f} |"
        )
    lines += ["", "Encode / round trip / decode are p50s of the client's phases; the round trip"]
    lines += ["(HTTP for REST, RPC for gRPC) includes the server's work. Server-side mean time"]
    lines += ["inside the model, per signature (from the server's metrics):", ""]
    for signature, ms in result["server_model_mean_ms"].items():
        lines.append(f"- `{signature}`: {ms:.1f} ms")
    lines += ["", f"## Targets: p50 <= {TARGET_RATIO} x in-process p50", ""]
    rows = {row["variant"]: row for row in result["latency"]}
    for verdict in result["targets"]:
        status = "met" if verdict["met"] else "NOT met"
        row, base = rows[verdict["variant"]], rows[verdict["baseline"]]
        trip = _round_trip(row)
        phases = {p: row["phases"][p]["p50_ms"] for p in ("encode", trip, "decode")}
        model = result["server_model_mean_ms"].get(row["signature"], float("nan"))
        api = "gRPC" if trip == "rpc" else "REST"
        what = "protobuf and transfer" if trip == "rpc" else "JSON, base64 and transfer"
        issue = f" (issue {verdict['issue']})" if verdict.get("issue") else ""
        server = phases[trip] - model  # a p50 minus a mean: noise can make it negative
        rest = f"~{server:.1f} server {what}" if server > 0 else f"server {what} within noise"
        lines.append(
            f"- {verdict['variant']}{issue}: {verdict['ratio_p50']:.3f} x -> {status}. "
            f"{api} {row['total']['p50_ms']:.1f} ms vs in-process {base['total']['p50_ms']:.1f} "
            f"ms: client encode {phases['encode']:.1f}, {trip.upper()} round trip "
            f"{phases[trip]:.1f} (of which ~{model:.1f} in the model, so {rest}), client "
            f"decode {phases['decode']:.1f}."
        )
    lines += ["", "## Throughput (tiles per second)", ""]
    seconds = result["throughput_seconds"]
    lines += [f"Each client (thread) sends one tile at a time for {seconds:g} s over its own"]
    lines += ["connection; client and server processes share the machine's cores.", ""]
    throughput = result["throughput"]
    columns = [("rest", "REST b64 tf.Example"), ("grpc", "gRPC tf.Example")]
    columns = [(key, name) for key, name in columns if key in throughput]
    lines += [
        "| clients | "
        + " | ".join(name for _, name in columns)
        + " | in-process serving_default (threads) |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for i, local in enumerate(throughput["in_process"]):
        cells = [str(local["clients"])]
        for key, _ in columns:
            remote = throughput[key][i]
            cells.append(
                f"{remote['per_second']:.2f} ({remote['errors']} errors; other jobs "
                f"{remote['other_jobs_cores']:.2f} cores)"
            )
        cells.append(
            f"{local['per_second']:.2f} (other jobs {local['other_jobs_cores']:.2f} cores)"
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Payloads (bytes)", "", "| body | raw | gzip |", "|---|---|---|"]
    for name, sizes in result["payload_bytes"].items():
        lines.append(f"| {name} | {sizes['raw']:,} | {sizes['gzip']:,} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="version or base path")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="img/ folder parent")
    parser.add_argument("--repeats", type=int, default=60, help="latency rounds (%(default)s)")
    parser.add_argument("--throughput-seconds", type=float, default=20.0)
    parser.add_argument("--quiet-cores", type=float, default=0.3)
    parser.add_argument(
        "--max-wait",
        type=float,
        default=600.0,
        help="longest wait for other jobs to quiet down before timing (s; default %(default)g)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--model-description", help="how the results name the model (default: its path)"
    )
    parser.add_argument(
        "--note", default="", help="machine state during the run, written into the results"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the .md from the --out JSON"
    )
    args = parser.parse_args()
    if args.render:
        table = markdown(json.loads(args.out.read_text()))
        args.out.with_suffix(".md").write_text(table)
        print(table)
        return
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so the server process is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from components.warmup import image_example, serving_tile_size
    from serving import rest
    from serving.client import GrpcClient, RestClient
    from serving.servable import Servable

    version_dir = find_version_dir(args.model)
    print(f"model: {version_dir}", flush=True)
    servable = Servable.load(MODEL_NAME, 1, version_dir)
    size = serving_tile_size(servable.signature_defs, where=str(version_dir))
    tile, source = input_tile(size, args.data)
    example = image_example(tile)

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    process, url, grpc_url = start_server(version_dir, work)
    print(f"server: {url} and {grpc_url} (pid {process.pid})", flush=True)
    load = OtherLoad(process.pid)
    try:
        client = RestClient(url, MODEL_NAME, timeout=120)
        grpc_client = GrpcClient(grpc_url, MODEL_NAME, timeout=120)
        variants = make_variants(servable, client, grpc_client, tile, example)
        quiet = load.wait_quiet(args.quiet_cores, args.max_wait)
        print(f"other jobs before timing: {quiet:.2f} cores", flush=True)
        before = server_model_seconds(url)
        discarded = measure_latency(variants, args.repeats, load, args.quiet_cores, args.max_wait)
        after = server_model_seconds(url)

        def rest_call() -> Callable[[], object]:
            own = RestClient(url, MODEL_NAME, timeout=120)
            return lambda: own.predict_examples([example], (size, size, 1), "serving_default")

        def grpc_call() -> Callable[[], object]:
            own = GrpcClient(grpc_url, MODEL_NAME, timeout=120)  # its own HTTP/2 connection
            own.signature_defs()  # the input's name, once, as `tailings predict` does
            return lambda: own.predict_examples([example], (size, size, 1), "serving_default")

        def local_call() -> Callable[[], object]:
            inputs = {"examples": np.array([example], dtype=object)}
            return lambda: servable.run("serving_default", inputs)

        factories = (("rest", rest_call), ("grpc", grpc_call), ("in_process", local_call))
        throughput: dict[str, list] = {key: [] for key, _ in factories}
        for clients in CLIENT_COUNTS:
            for key, factory in factories:
                load.wait_quiet(args.quiet_cores, min(args.max_wait, 60))
                row = measure_throughput(factory, clients, args.throughput_seconds, load)
                throughput[key].append(row)
                print(f"  throughput {key} x{clients}: {row['per_second']:.2f}/s", flush=True)
    finally:
        stop_server(process)
        shutil.rmtree(work, ignore_errors=True)

    by_key = {v.key: v for v in variants}
    baseline = {"serving_default": "in_process_example", "predict_image": "in_process_image"}
    latency = []
    for variant in variants:
        total = summary(variant.samples["total"])
        row = {
            "variant": variant.key,
            "label": variant.label,
            "signature": variant.signature,
            "total": total,
            "phases": {p: summary(s) for p, s in variant.samples.items() if p != "total"},
            "other_jobs_cores_mean": statistics.fmean(variant.other_cores),
            "other_jobs_cores_max": max(variant.other_cores),
        }
        if variant.remote:
            base = summary(by_key[baseline[variant.signature]].samples["total"])
            row["baseline"] = baseline[variant.signature]
            row["ratio_p50"] = total["p50_ms"] / base["p50_ms"]
        latency.append(row)
    server_mean = {
        sig: 1e3
        * (after[sig][0] - before.get(sig, (0, 0))[0])
        / max(after[sig][1] - before.get(sig, (0, 0))[1], 1)
        for sig in after
    }
    b64_body = orjson.dumps(
        {
            "signature_name": "serving_default",
            "instances": [{"b64": base64.b64encode(example).decode()}],
        }
    )
    floats_body = orjson.dumps(
        {"signature_name": "predict_image", "instances": tile[None]},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    probabilities = servable.run("serving_default", {"examples": np.array([example], object)})
    response_body = rest.predict_response(probabilities, row_format=True)  # the server's bytes
    grpc_request, grpc_response = grpc_messages(example, probabilities)
    bodies = {
        "float32 tile (no JSON)": tile.tobytes(),
        "request: b64 tf.Example": b64_body,
        "request: JSON floats": floats_body,
        "request: gRPC tf.Example (protobuf)": grpc_request,
        "response: JSON probabilities": response_body,
        "response: gRPC probabilities (protobuf, tensor_content)": grpc_response,
    }
    payload_bytes = {
        name: {"raw": len(body), "gzip": len(gzip.compress(body, 6))}
        for name, body in bodies.items()
    }
    targets = [
        {
            "variant": row["variant"],
            "baseline": row["baseline"],
            "ratio_p50": row["ratio_p50"],
            "target": TARGET_RATIO,
            "issue": TARGET_VARIANTS[row["variant"]],
            "met": row["ratio_p50"] <= TARGET_RATIO,
        }
        for row in latency
        if row["variant"] in TARGET_VARIANTS
    ]
    result = {
        "benchmark": "serving",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": reproduce_command(),
        "note": args.note,
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "versions": versions(),
        },
        "model": {
            "path": args.model_description or os.path.relpath(version_dir, ROOT),
            "tile": size,
            "input": os.path.relpath(source, ROOT) if source != "synthetic" else source,
        },
        "repeats": args.repeats,
        "discarded_rounds": discarded,
        "throughput_seconds": args.throughput_seconds,
        "quiet_cores": args.quiet_cores,
        "latency": latency,
        "server_model_mean_ms": server_mean,
        "throughput": throughput,
        "payload_bytes": payload_bytes,
        "targets": targets,
    }
    table = markdown(result)
    print(table)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
        print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


def reproduce_command() -> str:
    """This run's command line, shell-quoted, without the flags that only describe it."""
    labels = ("--note", "--model-description")
    argv, skip = [Path(sys.argv[0]).name], False
    for arg in sys.argv[1:]:
        if skip or arg.startswith(tuple(f"{flag}=" for flag in labels)):
            skip = False
            continue
        if arg in labels:
            skip = True
            continue
        argv.append(arg)
    return shlex.join(argv)


def grpc_messages(example: bytes, outputs: dict[str, np.ndarray]) -> tuple[bytes, bytes]:
    """The serialized PredictRequest and PredictResponse of one tile, as the benchmark sends
    and the server answers them."""
    from tensorflow_serving.apis import predict_pb2

    from serving.grpc_api import write_tensor

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = "serving_default"
    write_tensor(np.array([example], dtype=object), request.inputs["examples"])
    response = predict_pb2.PredictResponse()
    response.model_spec.name = MODEL_NAME
    for alias, array in outputs.items():
        write_tensor(array, response.outputs[alias])
    return request.SerializeToString(), response.SerializeToString()


if __name__ == "__main__":
    main()
