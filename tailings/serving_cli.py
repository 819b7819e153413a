"""`tailings serve` and `tailings predict`: serve pushed models, predict whole scenes."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from tailings.common import (
    EXIT_OK,
    CliError,
    check_model_name,
    check_writable,
    config_from_flags,
    say,
    stderr_is_terminal,
)


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

    cfg = config_from_flags(
        ServerConfig,
        host=args.host,
        port=args.port,
        threads=args.threads,
        max_body_bytes=int(args.max_body_mb * 2**20),
        poll_seconds=args.poll_seconds,
        load_retries=args.max_num_load_retries,
        load_retry_seconds=args.load_retry_interval_seconds,
        enable_cors=args.rest_api_enable_cors_support,
    )
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
        help="predict tailings masks for whole scenes: GeoTIFFs or Sentinel-2 products "
        "(in-process, via a server, on Beam)",
        description=(
            "Slide overlapping windows over each SCENE (a 3-band float GeoTIFF: B2, B3, B4 "
            "reflectance, any size), blend them, and write a uint8 mask (1 tailings, 0 "
            "background, 255 no data) as a Cloud-Optimized GeoTIFF on the scene's grid. Prints "
            "the tailings pixel count and area in hectares. One scene: --out MASK. Several "
            "(files, folders, quoted glob patterns): --out-dir DIR gets <name>.mask.tif per "
            "scene and summary.csv / summary.geojson; a scene that fails is reported there "
            "and the others still run (exit 6 if some failed, 1 if all did). The model runs "
            "in this process (--model), behind TF Serving's REST or gRPC API (--server), or in "
            "Beam's RunInference (--beam; Beam options after `--`); all give the same output. "
            "A SCENE may also be a Sentinel-2 product: a Level-1C or Level-2A SAFE folder or "
            ".zip, or a folder (or, with --out, a list) of its B02, B03, B04 band files at 10 m "
            "(JP2 or GeoTIFF); read as reflectance with the product's quantification value and "
            "offset, its own cloud mask making cloudy pixels no data (counted as cloudy_ha)."
        ),
    )
    p.add_argument(
        "scenes",
        nargs="+",
        metavar="SCENE",
        help="input GeoTIFF(s) or Sentinel-2 products (SAFE folder, .zip, folder of band "
        "files; with --out three band files); with --out-dir also folders (their *.tif, *.zip, "
        "*.SAFE) and quoted glob patterns ('scenes/**/*.tif')",
    )
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, help="output mask GeoTIFF (one scene)")
    out.add_argument(
        "--out-dir",
        type=Path,
        metavar="DIR",
        help="output folder for several scenes: <name>.mask.tif each, summary.csv, summary.geojson",
    )
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
    p.add_argument(
        "--probabilities",
        nargs="?",
        const=PER_SCENE,
        type=Path,
        metavar="FILE",
        help="also write float32 probabilities: to FILE (--out), or as <name>.probabilities.tif "
        "per scene (--out-dir, no FILE)",
    )
    p.add_argument(
        "--polygons",
        nargs="?",
        const=PER_SCENE,
        type=Path,
        metavar="FILE",
        help="also write tailings polygons as GeoJSON: to FILE (--out), or as "
        "<name>.polygons.geojson per scene (--out-dir, no FILE)",
    )
    p.add_argument(
        "--beam",
        action="store_true",
        help="with --out-dir and --model: predict in a Beam pipeline (RunInference); Beam "
        "options after `--` (e.g. -- --runner=PortableRunner --job_endpoint=HOST:8099)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="--beam on the DirectRunner: worker processes (default: %(default)s)",
    )
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
    p.add_argument(
        "--no-cloud-mask",
        action="store_true",
        help="Sentinel-2 products: predict cloudy pixels too (default: the product's own cloud "
        "mask, L1C MSK_CLASSI or L2A SCL, makes them no data, counted as cloudy_ha)",
    )
    p.add_argument(
        "--baseline",
        metavar="NN.NN",
        help="processing baseline of Sentinel-2 band files given without their product's "
        "metadata (the N0509 of a product's name is 05.09): from 04.00 their digital numbers "
        "carry an offset of -1000",
    )
    p.set_defaults(func=_predict)


# `--probabilities` / `--polygons` without a file: one per scene in --out-dir.
PER_SCENE = Path("\0per-scene")


def _predict(args: argparse.Namespace, beam_args: list[str]) -> int:
    """Every flag, the scenes' headers and the model folder are checked before TensorFlow or
    the model loads (seconds to half a minute): a wrong input costs under a second, one line."""
    from urllib.parse import urlsplit

    from serving.config import PredictConfig

    cfg = config_from_flags(
        PredictConfig,
        tile=args.tile,
        overlap=args.overlap,
        threshold=args.threshold,
        batch_size=args.batch_size,
        mask_clouds=not args.no_cloud_mask,
        band_baseline=args.baseline,
    )
    check_model_name(args.model_name)
    if args.server is not None:
        url = urlsplit(args.server)
        if url.scheme not in ("http", "https", "grpc") or not url.netloc:
            raise CliError(
                f"--server {args.server}: not a server URL such as http://127.0.0.1:8501 "
                "or grpc://127.0.0.1:8500"
            )
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    beam = args.beam or bool(beam_args)
    if args.out is not None:
        if beam or args.workers != 1:
            raise CliError(
                "--beam, --workers and Beam options predict several scenes: use --out-dir"
            )
        return _predict_one(args, cfg)
    if beam and args.server:
        raise CliError(
            "--beam runs the model inside Beam's workers (RunInference): pass --model, not --server"
        )
    return _predict_fleet(args, cfg, beam, beam_args)


def _model_dir(args: argparse.Namespace) -> Path:
    from serving.config import MODELS_DIR

    return args.model or MODELS_DIR / args.model_name


def _open_model(args: argparse.Namespace, cfg):
    """The model in this process (--model) or behind a server (--server)."""
    from serving.predict import LocalModel, RemoteModel

    if args.server:
        return RemoteModel.connect(args.server, args.model_name, cfg.timeout_seconds)
    return LocalModel.open(_model_dir(args))


def _one_scene(arguments: list[str]):
    """The scene of `--out`: a path, or a list of three band files as one product."""
    from serving import sentinel2

    paths = [Path(a) for a in arguments]
    if len(paths) == len(sentinel2.MODEL_BANDS) and all(sentinel2.band_of(p) for p in paths):
        return sentinel2.BandFiles(tuple(paths))
    scene = paths[0]
    several = (scene.is_dir() and not sentinel2.is_product(scene)) or (
        not scene.exists() and any(c in str(scene) for c in "*?[")
    )
    if len(paths) != 1 or several:
        return None
    return scene


def _predict_one(args: argparse.Namespace, cfg) -> int:
    """`tailings predict SCENE --out MASK`: one scene, its result printed."""
    from serving import sentinel2

    scene = _one_scene(args.scenes)
    if scene is None:
        raise CliError(
            "--out writes one scene's mask; for several scenes, a folder or a pattern "
            "use --out-dir DIR"
        )
    for flag, value in (("--probabilities", args.probabilities), ("--polygons", args.polygons)):
        if value is PER_SCENE:
            raise CliError(f"{flag}: give the FILE to write (one per scene is for --out-dir)")
    product = sentinel2.is_product(scene)
    if not product and not scene.is_file():  # as serving.predict.open_scene says it
        raise CliError(f"{scene}: " + ("not a file" if scene.exists() else "no such file"))
    from serving.predict import find_version_dir, inspect_scene, resolution_warning

    # The header only: GeoTIFF, 3 float bands, CRS, grid; a product's metadata and band files.
    info = inspect_scene(scene, cfg.band_baseline)
    warning = resolution_warning(info, allow=args.allow_resolution)
    if warning:
        say(f"tailings predict: warning: {warning}")
    for note in info.product.notes if info.product else ():
        say(f"tailings predict: warning: {note}")
    outputs = [args.out, args.probabilities, args.polygons]
    if not product and scene.resolve() in {o.resolve() for o in outputs if o is not None}:
        raise CliError(f"{scene}: an output would overwrite the input scene")
    for flag, path in zip(("--out", "--probabilities", "--polygons"), outputs, strict=True):
        if path is not None:  # before the model loads and the scene is read
            check_writable(path, flag, is_file=True)
    if not args.server:  # the folder and its saved_model.pb; loading it waits until the end
        find_version_dir(_model_dir(args))
    from serving.predict import predict_scene

    result = predict_scene(
        scene,
        _open_model(args, cfg),
        args.out,
        cfg,
        out_probabilities=args.probabilities,
        out_polygons=args.polygons,
        say=say,
    )
    for line in result.lines():
        say(line)
    return EXIT_OK


def _predict_fleet(args: argparse.Namespace, cfg, beam: bool, beam_args: list[str]) -> int:
    """`tailings predict SCENE... --out-dir DIR`: every scene, one model load, one summary."""
    for flag, value in (("--probabilities", args.probabilities), ("--polygons", args.polygons)):
        if value not in (None, PER_SCENE):
            raise CliError(
                f"{flag} {value}: with --out-dir it takes no FILE (each scene's goes to "
                "DIR/<name>...)"
            )
    check_writable(args.out_dir, "--out-dir")
    if beam:  # Beam's own checks, before any scene is read or the pipeline is built
        from pipeline.beam_args import check_beam_args

        runner = check_beam_args(
            beam_args,
            local="`tailings predict --beam` reads scenes and writes --out-dir as local files, "
            "which its workers cannot reach; use the DirectRunner or a portable runner (Flink, "
            "Spark) whose workers share this file system",
        )
    from data.lock import output_lock
    from serving.fleet import (
        FleetOutputs,
        FleetProgress,
        exit_code,
        find_scenes,
        name_scenes,
        plan_fleet,
        predict_fleet,
        write_summary,
    )
    from serving.predict import find_version_dir

    version_dir = None if args.server else find_version_dir(_model_dir(args))
    paths, missing = find_scenes(args.scenes)
    jobs = name_scenes(paths)
    outputs = FleetOutputs(args.out_dir, args.probabilities is not None, args.polygons is not None)
    with output_lock(args.out_dir, "predict", say):
        plan = plan_fleet(
            jobs,
            cfg,
            args.allow_resolution,
            warn=lambda warning: say(f"tailings predict: warning: {warning}"),
            missing=missing,
        )
        for record in plan.failed:
            say(f"tailings predict: {record.error}")
        say(
            f"{len(plan.ready)} of {len(plan.ready) + len(plan.failed)} scene(s) to predict "
            f"({plan.windows} windows of {cfg.tile}) into {args.out_dir}"
        )
        if not plan.ready:
            records = list(plan.failed)
            write_summary(args.out_dir, records)
        elif beam:
            from apache_beam.options.pipeline_options import PipelineOptions

            from data.beam_options import direct_args
            from serving.fleet_beam import RUNNING_MODE, predict_fleet_beam

            direct = direct_args(args.workers, beam_args, running_mode=RUNNING_MODE)
            options = PipelineOptions([*direct, *beam_args])
            say(f"predicting on Beam ({runner}) ...")
            records = predict_fleet_beam(plan, version_dir, outputs, cfg, options, say=say)
            write_summary(args.out_dir, records)
        else:
            model = _open_model(args, cfg)
            progress = FleetProgress(
                len(plan.ready), plan.windows, say, terminal=stderr_is_terminal()
            )
            records = predict_fleet(plan, model, outputs, cfg, progress)
    done = [r for r in records if r.status == "ok"]
    failed = [r for r in records if r.status != "ok"]
    hectares = sum(r.tailings_ha for r in done)
    say(
        f"{len(done)} of {len(records)} scene(s) predicted, {len(failed)} failed; "
        f"tailings {hectares:.2f} ha in all"
    )
    for record in failed:
        say(f"  failed: {record.error}")
    say(f"wrote {args.out_dir}/summary.csv and summary.geojson")
    return exit_code(records)
