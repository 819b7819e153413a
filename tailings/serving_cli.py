"""`tailings serve` and `tailings predict`: serve pushed models, predict whole scenes."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from tailings.common import EXIT_OK, CliError, check_writable, say


# --------------------------------------------------------------------------- serve
def add_serve(sub) -> None:
    from serving.config import MODEL_NAME, MODELS_DIR, REST_PORT, ServerConfig

    d = ServerConfig()
    p = sub.add_parser(
        "serve",
        help="serve pushed models over TF Serving's REST and gRPC APIs (embedded or TF Serving)",
        description=(
            "Serve the models the pipeline pushes (numeric version folders under "
            "--model-base-path/--model-name, or the models of --model-config) with TF Serving's "
            "REST API: GET /v1/models/NAME[/versions/V|/labels/L][/metadata], POST "
            "...:predict, GET /monitoring/prometheus/metrics; and its gRPC API on --grpc-port "
            "(PredictionService, ModelService). New versions are loaded as they "
            "appear. --engine embedded (default) runs this project's server; --engine "
            "tfserving runs tensorflow_model_server on the same models."
        ),
    )
    p.add_argument(
        "--engine", choices=("embedded", "tfserving"), default="embedded", help="default: embedded"
    )
    p.add_argument(
        "--model-base-path",
        type=Path,
        default=MODELS_DIR,
        help="folder holding MODEL-NAME/<version>/ (default: %(default)s); with --model-config, "
        "where the config's /models/... base paths are on this machine",
    )
    p.add_argument("--model-name", default=MODEL_NAME, help="default: %(default)s")
    p.add_argument(
        "--model-config",
        type=Path,
        default=None,
        help="a TF Serving model config (e.g. serving/models.config): names, base paths, "
        "version policies and labels; replaces --model-name",
    )
    p.add_argument(
        "--host", default=d.host, help="embedded: address to bind (default: %(default)s)"
    )
    p.add_argument("--port", type=int, default=REST_PORT, help="REST port (default: %(default)s)")
    p.add_argument(
        "--grpc-port",
        type=int,
        default=8500,
        help="gRPC port (default: %(default)s); embedded: on --host, 0 picks a free port",
    )
    p.add_argument(
        "--threads", type=int, default=d.threads, help="embedded: request threads (%(default)s)"
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=d.max_body_bytes / 2**20,
        help="embedded: largest request body in MiB after gzip decoding (default: %(default)g)",
    )
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=d.poll_seconds,
        help="how often to look for new versions (default: %(default)g)",
    )
    p.add_argument(
        "--max-num-load-retries",
        type=int,
        default=d.load_retries,
        help="embedded: retries of a version that fails to load before it is given up until it "
        "leaves the disk (default: %(default)s, as TF Serving's --max_num_load_retries)",
    )
    p.add_argument(
        "--load-retry-interval-seconds",
        type=float,
        default=d.load_retry_seconds,
        help="embedded: seconds between those retries (default: %(default)g, as TF Serving's "
        "--load_retry_interval_micros)",
    )
    p.add_argument(
        "--allow-version-labels-for-unavailable-models",
        action="store_true",
        help="accept the config's version_labels at startup, before their versions load; "
        "without it they are refused, as TF Serving refuses them",
    )
    p.add_argument(
        "--rest-api-enable-cors-support",
        action="store_true",
        help="embedded: CORS headers on every API response, as TF Serving's flag of that name",
    )
    p.set_defaults(func=_serve)


def _model_entries(args: argparse.Namespace) -> list:
    from serving.model_config import load_model_config, single_model

    if args.model_config is not None:
        return load_model_config(args.model_config, args.model_base_path)
    return [single_model(args.model_base_path, args.model_name)]


def _serve(args: argparse.Namespace, beam_args: list[str]) -> int:
    from serving.manager import version_dirs
    from serving.model_config import check_version_labels

    entries = _model_entries(args)
    check_version_labels(entries, args.allow_version_labels_for_unavailable_models)
    for entry in entries:
        found = version_dirs(entry.base_path)
        note = f"versions {found}" if found else "no versions yet (waiting for a push)"
        say(f"model {entry.name}: {entry.base_path} [{entry.policy.describe()}], {note}")
    if args.engine == "tfserving":
        return _serve_tfserving(args, entries)
    return _serve_embedded(args, entries)


def _serve_tfserving(args: argparse.Namespace, entries: list) -> int:
    from serving.config import TFServingConfig
    from serving.tfserving import TFServingNotFound, run_tfserving

    cfg = TFServingConfig(
        grpc_port=args.grpc_port,
        rest_port=args.port,
        poll_seconds=max(1, round(args.poll_seconds)),
        load_retries=args.max_num_load_retries,
        load_retry_seconds=args.load_retry_interval_seconds,
        allow_unavailable_labels=args.allow_version_labels_for_unavailable_models,
        enable_cors=args.rest_api_enable_cors_support,
    )
    try:
        return run_tfserving(entries, cfg, say)
    except TFServingNotFound as err:
        raise CliError(str(err)) from None


def _serve_embedded(args: argparse.Namespace, entries: list) -> int:
    from serving.config import ServerConfig
    from serving.server import EmbeddedServer

    try:
        cfg = ServerConfig(
            host=args.host,
            port=args.port,
            threads=args.threads,
            max_body_bytes=int(args.max_body_mb * 2**20),
            poll_seconds=args.poll_seconds,
            load_retries=args.max_num_load_retries,
            load_retry_seconds=args.load_retry_interval_seconds,
            enable_cors=args.rest_api_enable_cors_support,
        )
    except ValueError as err:
        raise CliError(str(err)) from None
    server = EmbeddedServer(entries, cfg, say=say, grpc_port=args.grpc_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server.start()
    except OSError as err:
        server.stop()
        raise CliError(f"cannot listen on {args.host}:{args.port}: {err.strerror}") from None
    say(f"serving REST on {server.url} (Ctrl-C to stop)")
    say(f"serving gRPC on {server.grpc.url}")
    for entry in entries:
        say(f"  curl {server.url}/v1/models/{entry.name}")
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    say("stopping")
    server.stop()
    return EXIT_OK


# --------------------------------------------------------------------------- predict
def add_predict(sub) -> None:
    from serving.config import (
        MODEL_NAME,
        PIXEL_SIZE_REFUSE_FACTOR,
        TRAINING_PIXEL_M,
        PredictConfig,
    )

    d = PredictConfig()
    p = sub.add_parser(
        "predict",
        help="predict a tailings mask for a whole GeoTIFF scene (in-process or via a server)",
        description=(
            "Slide overlapping windows over SCENE (a 3-band float GeoTIFF: B2, B3, B4 "
            "reflectance, any size), blend them, and write a uint8 mask (1 tailings, 0 "
            "background, 255 no data) as a Cloud-Optimized GeoTIFF on the scene's grid. Prints "
            "the tailings pixel count and area in hectares. The model runs in this process "
            "(--model) or behind TF Serving's REST API (--server); both give the same output."
        ),
    )
    p.add_argument("scene", type=Path, help="input GeoTIFF")
    p.add_argument("--out", type=Path, required=True, help="output mask GeoTIFF")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--server",
        help="model server URL: REST (http://127.0.0.1:8501) or gRPC (grpc://127.0.0.1:8500)",
    )
    where.add_argument(
        "--model",
        type=Path,
        help="a pushed SavedModel (version folder or its parent; default serving/models/NAME)",
    )
    p.add_argument(
        "--model-name", default=MODEL_NAME, help="model name on the server (%(default)s)"
    )
    p.add_argument("--probabilities", type=Path, help="also write float32 probabilities here")
    p.add_argument("--polygons", type=Path, help="also write tailings polygons as GeoJSON here")
    p.add_argument("--threshold", type=float, default=d.threshold, help="default: %(default)s")
    p.add_argument(
        "--tile",
        type=int,
        default=d.tile,
        help="window side; must be what the model accepts (default: %(default)s)",
    )
    p.add_argument("--overlap", type=int, default=d.overlap, help="default: %(default)s")
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="windows per call (%(default)s)"
    )
    p.add_argument(
        "--allow-resolution",
        action="store_true",
        help=f"predict (with a warning) a scene whose pixels are more than "
        f"{PIXEL_SIZE_REFUSE_FACTOR:g}x off the {TRAINING_PIXEL_M:g} m the model was trained on",
    )
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace, beam_args: list[str]) -> int:
    """Every flag, the scene's header and the model folder are checked before TensorFlow or
    the model loads (seconds to half a minute): a wrong input costs under a second, one line."""
    from urllib.parse import urlsplit

    from serving.config import MODEL_NAME_RE, MODELS_DIR, PredictConfig

    try:
        cfg = PredictConfig(
            tile=args.tile,
            overlap=args.overlap,
            threshold=args.threshold,
            batch_size=args.batch_size,
        )
    except ValueError as err:
        raise CliError(str(err)) from None
    if not MODEL_NAME_RE.fullmatch(args.model_name):
        raise CliError(f"--model-name {args.model_name!r}: not a model name (letters, digits, _.-)")
    if args.server is not None:
        url = urlsplit(args.server)
        if url.scheme not in ("http", "https", "grpc") or not url.netloc:
            raise CliError(
                f"--server {args.server}: not a server URL such as http://127.0.0.1:8501 "
                "or grpc://127.0.0.1:8500"
            )
    if not args.scene.is_file():  # as serving.predict.open_scene says it, before numpy loads
        raise CliError(
            f"{args.scene}: " + ("not a file" if args.scene.exists() else "no such file")
        )
    from serving.predict import find_version_dir, inspect_scene, resolution_warning

    info = inspect_scene(args.scene)  # the header only: GeoTIFF, 3 float bands, CRS, grid
    warning = resolution_warning(info, allow=args.allow_resolution)
    if warning:
        say(f"tailings predict: warning: {warning}")
    outputs = [args.out, args.probabilities, args.polygons]
    if args.scene.resolve() in {o.resolve() for o in outputs if o is not None}:
        raise CliError(f"{args.scene}: an output would overwrite the input scene")
    for flag, path in zip(("--out", "--probabilities", "--polygons"), outputs, strict=True):
        if path is not None:  # before the model loads and the scene is read
            check_writable(path, flag, is_file=True)
    if not args.server:  # the folder and its saved_model.pb; loading it waits until the end
        find_version_dir(args.model or MODELS_DIR / args.model_name)
    from serving.predict import LocalModel, RemoteModel, predict_scene

    if args.server:
        model = RemoteModel.connect(args.server, args.model_name, cfg.timeout_seconds)
    else:
        model = LocalModel.open(args.model or MODELS_DIR / args.model_name)
    result = predict_scene(
        args.scene,
        model,
        args.out,
        cfg,
        out_probabilities=args.probabilities,
        out_polygons=args.polygons,
        say=say,
    )
    for line in result.lines():
        say(line)
    return EXIT_OK
