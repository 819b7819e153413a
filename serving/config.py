"""Every knob of `tailings serve` and `tailings predict`, with its default, in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from components.blending import DEFAULT_OVERLAP

# Where the pipeline pushes models (pipeline.config.PipelineConfig.serving_dir) and their name.
MODELS_DIR = Path("serving/models")
MODEL_NAME = "tailings"
MODEL_CONFIG = Path("serving/models.config")
MONITORING_CONFIG = Path("serving/monitoring.config")
# compose.yaml mounts MODELS_DIR here; base paths under it in models.config are container paths.
CONTAINER_MODELS_DIR = PurePosixPath("/models")

# TF Serving's ports and paths (its documented defaults).
GRPC_PORT = 8500
REST_PORT = 8501
METRICS_PATH = "/monitoring/prometheus/metrics"
TFSERVING_BINARY = "tensorflow_model_server"
TFSERVING_IMAGE = "tensorflow/serving:2.16.1"  # matches tensorflow / tensorflow-serving-api

# Model names: what `tailings run --model-name` accepts; never a path, never '/' or ':'.
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# A Sentinel-2 processing baseline as the products write it: 02.08, 05.09.
BASELINE_RE = re.compile(r"\d{2}\.\d{2}")


@dataclass(frozen=True)
class ServerConfig:
    """The embedded server: HTTP front end and the version manager behind it."""

    host: str = "127.0.0.1"  # loopback unless asked otherwise
    port: int = REST_PORT  # 0 picks a free port (tests)
    # Requests run in this many threads (JSON decoding, the model, JSON encoding); TensorFlow
    # itself uses every core for one request, so more threads than cores only queue.
    threads: int = 4
    max_body_bytes: int = 128 * 2**20  # after gzip decoding; 8 tiles of 448^2 as b64 are ~26 MB
    poll_seconds: float = 1.0  # as TF Serving's --file_system_poll_wait_seconds
    # A version that fails to load is retried this many times, this far apart, then given up
    # (END) until it leaves the disk. TF Serving's defaults, model_servers/server.h:68-69
    # (2.16.1): max_num_load_retries = 5, load_retry_interval_micros = 1 minute, so 5 minutes.
    load_retries: int = 5  # --max_num_load_retries
    load_retry_seconds: float = 60.0  # --load_retry_interval_micros, in seconds
    warmup: bool = True  # replay assets.extra/tf_serving_warmup_requests before AVAILABLE
    unload_wait_seconds: float = 30.0  # an unloading version waits this long for its requests
    # TF Serving's --rest_api_enable_cors_support (main.cc:103, default false): CORS headers on
    # every /v1/ response (http_server.cc:183, http_rest_api_util.cc:40 AddCORSHeaders).
    enable_cors: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be > 0, got {self.poll_seconds}")
        if self.load_retries < 0:
            raise ValueError(f"load_retries must be >= 0, got {self.load_retries}")
        if self.load_retry_seconds < 0:
            raise ValueError(f"load_retry_seconds must be >= 0, got {self.load_retry_seconds}")


@dataclass(frozen=True)
class TFServingConfig:
    """Flags for the real `tensorflow_model_server` (`tailings serve --engine tfserving`)."""

    binary: str = TFSERVING_BINARY
    grpc_port: int = GRPC_PORT
    rest_port: int = REST_PORT
    poll_seconds: int = 1  # --file_system_poll_wait_seconds
    config_poll_seconds: int = 60  # --model_config_file_poll_wait_seconds
    enable_warmup: bool = True
    # The same behaviour flags as the embedded server's (ServerConfig), passed under TF Serving's
    # own names so one `tailings serve` command line means the same on both engines.
    load_retries: int = 5  # --max_num_load_retries
    load_retry_seconds: float = 60.0  # --load_retry_interval_micros, in seconds
    allow_unavailable_labels: bool = False  # --allow_version_labels_for_unavailable_models
    enable_cors: bool = False  # --rest_api_enable_cors_support


# The ground size of the pixels the served models were trained on: the study's Sentinel-2 B2,
# B3, B4 at 10 m (exported in EPSG:4326 as ~8.93e-5 degree pixels: 9.0-9.4 m wide and 9.9 m tall
# on the ground). `tailings predict` compares a scene's pixels with it (resolution_warning).
TRAINING_PIXEL_M = 10.0
# Silent within 1.25x either way (8-12.5 m): any 10 m product in any CRS and latitude band of
# the study area (UTM scale 0.9996-1.001; degree exports 9.3 m wide at 21 S, 8.1 m at 35 S).
# A warning up to 2x (5-20 m: one octave, e.g. Sentinel-2's 20 m bands resampled); beyond 2x
# refused (60 m bands, the study's broken img_23 at 87 m x 9.9 m) unless --allow-resolution.
PIXEL_SIZE_WARN_FACTOR = 1.25
PIXEL_SIZE_REFUSE_FACTOR = 2.0


@dataclass(frozen=True)
class PredictConfig:
    """Sliding-window prediction of a whole scene (`tailings predict`)."""

    tile: int = 448  # must equal the side the model's serving_default accepts
    # Pixels shared by neighbouring windows (blended: components.blending, where the default's
    # measurement is named; the pipeline's ScenePredictor blends eval sites with it too).
    overlap: int = DEFAULT_OVERLAP
    threshold: float = 0.5  # probability at or above which a pixel is tailings
    batch_size: int = 4  # windows per model call / REST request
    timeout_seconds: float = 300.0  # one REST request
    # Output GeoTIFFs: compressed, tiled, with overviews (Cloud-Optimized GeoTIFF layout).
    block_size: int = 256
    mask_compression: str = "deflate"
    probability_compression: str = "deflate"
    mask_predictor: int = 2  # horizontal differencing
    probability_predictor: int = 3  # floating-point predictor
    # Sentinel-2 products (serving.sentinel2): the product's own cloud mask (L1C MSK_CLASSI,
    # L2A SCL) makes cloudy pixels no data, counted apart (`--no-cloud-mask` turns it off).
    mask_clouds: bool = True
    # The processing baseline of band files that come without their product's metadata
    # ('05.09'): from 04.00 their digital numbers carry an offset of -1000. None: refuse them.
    band_baseline: str | None = None

    def __post_init__(self) -> None:
        if self.tile < 1:
            raise ValueError(f"tile must be >= 1, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"overlap must be in [0, tile={self.tile}), got {self.overlap}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.band_baseline is not None and not BASELINE_RE.fullmatch(self.band_baseline):
            raise ValueError(
                f"baseline must be a processing baseline such as 05.09, got {self.band_baseline}"
            )

    @property
    def stride(self) -> int:
        return self.tile - self.overlap
