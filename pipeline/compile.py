"""Compile the pipeline for Vertex AI Pipelines or Kubeflow Pipelines (`tailings compile`).

The pipeline is `pipeline.pipeline.create_pipeline`, the one `tailings run` runs, given
`RemoteLocations` (gs://... URIs for its root, data and pushed models); TFX's
`KubeflowV2DagRunner` compiles it into KFP's pipeline IR. Every component runs in one container
image (see the Dockerfile), which calls TFX's Kubeflow V2 entrypoint. The Beam-powered
components get the Beam options (for Dataflow: `dataflow_args`).

Targets: `vertex` writes a `PipelineJob` (what Vertex AI's `PipelineJob(template_path=...)`
submits; the pipeline root is its `runtimeConfig.gcsOutputDirectory`); `kubeflow` writes the
`PipelineSpec` inside it with the root as `defaultPipelineRoot` (what KFP v2's upload and
`create_run_from_pipeline_package` read).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pipeline.config import PipelineConfig

TARGETS = ("vertex", "kubeflow")
# The module the compiled spec runs in each container (TFX's Kubeflow V2 executor entrypoint).
ENTRYPOINT_MODULE = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"


def dataflow_args(
    project: str, region: str, temp_location: str, image: str | None = None
) -> list[str]:
    """Beam options that run a Beam-powered component on Dataflow. With `image`, Dataflow's
    workers use it too (`--sdk_container_image`): the conversion and the TFX libraries run
    there, so the workers need the project installed, as in the pipeline's own containers."""
    args = [
        "--runner=DataflowRunner",
        f"--project={project}",
        f"--region={region}",
        f"--temp_location={temp_location}",
    ]
    if image:
        args.append(f"--sdk_container_image={image}")
    return args


def compile_pipeline(cfg: PipelineConfig, target: str, image: str, out: Path | str) -> dict:
    """Compile `create_pipeline(cfg)` (`cfg.remote` set) for `target`; write it as JSON to
    `out` and return what was written."""
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as v2

    from pipeline.pipeline import create_pipeline

    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if cfg.remote is None:
        raise ValueError("a compiled pipeline needs cfg.remote (its gs://... locations)")
    runner = v2.KubeflowV2DagRunner(
        config=v2.KubeflowV2DagRunnerConfig(default_image=image),
        # Not written by TFX (write_out=False); only a place it may check.
        output_dir=tempfile.gettempdir(),
    )
    job = runner.run(create_pipeline(cfg), write_out=False)
    if target == "kubeflow":
        document = dict(job["pipelineSpec"])
        document["defaultPipelineRoot"] = cfg.remote.pipeline_root
    else:
        document = job
    text = json.dumps(document, indent=1, sort_keys=True) + "\n"
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return document
