"""`tailings compile`: the pipeline of `tailings run`, compiled for Vertex AI or Kubeflow.

Flags are checked, and the Beam options validated, before TFX is imported (about 25 s).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from tailings.common import EXIT_OK, CliError, check_writable, say
from tailings.pipeline_args import add_pipeline_arguments, check_trainer_settings, pipeline_settings

# An image reference: [registry/]path[:tag][@sha256:digest], no spaces.
IMAGE_RE = re.compile(r"[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64})?", re.IGNORECASE)
BEAM_RUNNERS = ("DirectRunner", "DataflowRunner")


def add_compile(sub) -> None:
    p = sub.add_parser(
        "compile",
        help="compile the pipeline for Vertex AI Pipelines or Kubeflow Pipelines (KFP v2 JSON)",
        description=(
            "Compile the pipeline `tailings run` runs (the same create_pipeline) with TFX's "
            "KubeflowV2DagRunner. Every component runs in --image (see the Dockerfile); with "
            "--beam-runner DataflowRunner, ExampleGen, StatisticsGen, Transform and both "
            "Evaluators run their Beam work on Dataflow. Arguments after `--` are added to "
            "the Beam options unchanged (e.g. -- --max_num_workers=20)."
        ),
    )
    p.add_argument("--target", required=True, choices=("vertex", "kubeflow"))
    p.add_argument("--image", required=True, help="container image of every component")
    p.add_argument(
        "--pipeline-root", required=True, metavar="URI", help="gs://... (Kubeflow: any URI)"
    )
    p.add_argument("--out", type=Path, default=Path("pipeline.json"), help="default: %(default)s")
    p.add_argument(
        "--data", default=None, metavar="URI", help="img/ and mask/ (default: <root>/data)"
    )
    p.add_argument(
        "--serving-dir",
        default=None,
        metavar="URI",
        help="where the Pusher writes <model-name>/<version> (default: <root>/serving)",
    )
    p.add_argument(
        "--beam-runner",
        choices=BEAM_RUNNERS,
        default="DirectRunner",
        help="where the Beam-powered components run their Beam work: in their own container "
        "(DirectRunner) or on Dataflow (default: %(default)s)",
    )
    p.add_argument("--project", default=None, help="Dataflow: Google Cloud project")
    p.add_argument("--region", default=None, help="Dataflow: region, e.g. europe-west4")
    p.add_argument(
        "--temp-location",
        default=None,
        metavar="URI",
        help="Dataflow: gs://... for temporary files (default: <root>/beam-tmp)",
    )
    add_pipeline_arguments(p)  # as `tailings run`
    p.set_defaults(func=_compile)


def _uri(value: str, flag: str, gcs_only: bool) -> str:
    value = value.rstrip("/")
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if gcs_only and scheme != "gs":
        raise CliError(f"{flag} must be a gs:// URI (Vertex AI reads and writes Cloud Storage)")
    if not scheme or not value.split("://", 1)[1]:
        raise CliError(f"{flag} must be a URI the pipeline's containers reach (gs://...)")
    return value


def _compile(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipeline.config import PipelineConfig, RemoteLocations

    if not IMAGE_RE.fullmatch(args.image):
        raise CliError(f"--image {args.image!r} is not an image reference (registry/name:tag)")
    settings = pipeline_settings(args)
    vertex = args.target == "vertex"
    root = _uri(args.pipeline_root, "--pipeline-root", vertex)
    data = _uri(args.data or f"{root}/data", "--data", vertex)
    serving = _uri(args.serving_dir or f"{root}/serving", "--serving-dir", vertex)
    dataflow = args.beam_runner == "DataflowRunner"
    if not dataflow and any((args.project, args.region, args.temp_location)):
        raise CliError("--project, --region and --temp-location are for --beam-runner Dataflow")
    if any(a == "--runner" or a.startswith("--runner=") for a in beam_args) and dataflow:
        raise CliError("give the runner once: --beam-runner or `-- --runner=...`, not both")

    from pipeline.beam_args import BeamArgsError, check_beam_args, direct_args
    from pipeline.compile import dataflow_args

    if dataflow:
        if not args.project or not args.region:
            raise CliError("--beam-runner DataflowRunner needs --project and --region")
        temp = _uri(args.temp_location or f"{root}/beam-tmp", "--temp-location", True)
        options = dataflow_args(args.project, args.region, temp, image=args.image)
    else:
        options = direct_args(args.workers, beam_args)
    options += beam_args
    try:
        runner = check_beam_args(options, local=None)  # the runner may be Dataflow
    except BeamArgsError as err:
        raise CliError(str(err)) from None
    cfg = PipelineConfig(
        beam_args=tuple(options),
        remote=RemoteLocations(pipeline_root=root, data=data, serving=serving),
        **settings,
    )
    check_trainer_settings(cfg)
    check_writable(args.out, "--out", is_file=True)

    from pipeline.compile import compile_pipeline  # TFX: only once the input is fine

    document = compile_pipeline(cfg, args.target, args.image, args.out)
    spec = document.get("pipelineSpec", document)
    tasks = len(spec["root"]["dag"]["tasks"])
    say(f"wrote {args.out}: {args.target} pipeline, {tasks} tasks, image {args.image}")
    say(f"Beam steps run on {runner}; pipeline root {root}, data {data}, models {serving}")
    return EXIT_OK
