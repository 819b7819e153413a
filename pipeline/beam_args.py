"""Beam options for the pipeline's Beam-powered components, checked before anything runs.

`tailings run -- <beam options>` and `tailings compile` hand a list of Beam options to every
Beam-powered component (ExampleGen, StatisticsGen, Transform, both Evaluators): TFX passes the
pipeline's `beam_pipeline_args` to each of their executors. Beam itself would only find a bad
option once a component builds its Beam pipeline, minutes into a run, and it silently drops an
option it does not know (`--runer=...` would run on the DirectRunner); here both are refused
before ExampleGen starts.
"""

from __future__ import annotations

from collections.abc import Sequence

from data import beam_options
from data.errors import TailingsError


class BeamArgsError(TailingsError, ValueError):
    """Beam options that Beam does not know, or that their runner refuses."""


# The pipeline's DirectRunner mode with more than one worker: threads, not processes. The
# heavy work (GDAL, zlib, TF) releases the GIL, and worker processes would each pay Beam's and
# TensorFlow's import time.
PIPELINE_RUNNING_MODE = "multi_threading"


def direct_args(workers: int, beam_args: Sequence[str] = ()) -> list[str]:
    """`data.beam_options.direct_args` in the pipeline's running mode (`tailings run` and
    `tailings compile`)."""
    return beam_options.direct_args(workers, beam_args, running_mode=PIPELINE_RUNNING_MODE)


def unknown_options(beam_args: Sequence[str]) -> list[str]:
    """The arguments no Beam options class parses (Beam itself drops them with a warning)."""
    from apache_beam.options import pipeline_options as po

    parser = po._BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in po.PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(beam_args))
    return unknown


def runner_name(beam_args: Sequence[str]) -> str:
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    return PipelineOptions(list(beam_args)).view_as(StandardOptions).runner or "DirectRunner"


def check_beam_args(beam_args: Sequence[str], *, local: str | None) -> str:
    """Raise `BeamArgsError` unless Beam knows every option, the runner exists, and Beam's own
    validator (what DataflowRunner runs on submission) finds nothing missing. Returns the
    runner's name.

    `local`: for a verb whose Beam workers must reach this machine's files (`tailings run`'s
    pipeline root and metadata store, `tailings predict --beam`'s scenes and outputs), the
    reason to print, with what to do instead, when a service runner (Dataflow, as Beam's
    `is_service_runner` tells) is given: `--runner NAME: <local>`. None where any runner
    will do (`tailings compile`, `tailings convert`)."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.runner import create_runner

    beam_args = list(beam_args)
    unknown = unknown_options(beam_args)
    if unknown:
        raise BeamArgsError(
            f"Beam does not know {' '.join(unknown)} (options are --name=value, as defined "
            "in apache_beam/options/pipeline_options.py)"
        )
    name = runner_name(beam_args)
    try:
        runner = create_runner(name)
    except (ValueError, ImportError) as err:
        raise BeamArgsError(f"--runner {name}: {str(err).splitlines()[0]}") from None
    options = PipelineOptions(beam_args)
    validator = PipelineOptionsValidator(options, runner)
    if local and validator.is_service_runner():
        raise BeamArgsError(f"--runner {name}: {local}")
    if type(runner).__name__ == "PortableRunner":
        from apache_beam.options.pipeline_options import PortableOptions

        if not options.view_as(PortableOptions).job_endpoint:
            # Beam itself says so only once a component builds its pipeline.
            raise BeamArgsError(f"--runner {name} needs --job_endpoint=HOST:PORT (a job server)")
    if validator.is_service_runner():
        # Beam's validator would look for (and create) a default GCS bucket over the network.
        errors = dataflow_errors(options)
    else:
        errors = [e.strip() for e in validator.validate() if e.strip()]
    if errors:
        raise BeamArgsError(f"Beam options for {name}: {'; '.join(errors)}")
    return name


def dataflow_errors(options) -> list[str]:
    """What a Dataflow job needs, checked offline: a project, a region, a gs:// temp location."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    gcp = options.view_as(GoogleCloudOptions)
    errors = [f"--{name} is missing" for name in ("project", "region") if not getattr(gcp, name)]
    for name in ("temp_location", "staging_location"):
        value = getattr(gcp, name)
        if value is not None and not str(value).startswith("gs://"):
            errors.append(f"--{name} must be a gs:// path, got {value}")
    if not gcp.temp_location:
        errors.append("--temp_location is missing (a gs:// path)")
    return errors
