"""`tailings compile`: the pipeline of `tailings run`, compiled offline for Vertex AI and Kubeflow.

The JSON is parsed strictly (unknown fields refused) into KFP's own `PipelineJob` / `PipelineSpec`
protos (kfp-pipeline-spec, as the services read it). Whether Vertex AI or a Kubeflow cluster
then runs it is not testable here.
"""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline import nodes
from pipeline.compile import ENTRYPOINT_MODULE
from tailings.cli import main

IMAGE = "europe-west4-docker.pkg.dev/proj/repo/tailings:1.0"
ROOT = "gs://bucket/tailings"
DATAFLOW = [
    "--runner=DataflowRunner",
    "--project=proj",
    "--region=europe-west4",
    f"--temp_location={ROOT}/beam-tmp",
    f"--sdk_container_image={IMAGE}",
]
EXTRA = "--max_num_workers=20"  # after `--`: reaches the Beam steps unchanged
# The pipeline's eleven components, in the order create_pipeline lists them; the baseline
# resolver (no container) compiles into two resolver tasks.
COMPONENTS = [
    nodes.EXAMPLE_GEN,
    nodes.SCHEMA_GEN,
    nodes.STATISTICS_GEN,
    nodes.EXAMPLE_VALIDATOR,
    nodes.VALIDATION_GATE,
    nodes.TRANSFORM,
    nodes.TRAINER,
    nodes.SCENE_PREDICTOR,
    nodes.SCENE_EVALUATOR,
    nodes.TILE_EVALUATOR,
    nodes.PUSHER,
]
BEAM_STEPS = [
    nodes.EXAMPLE_GEN,
    nodes.STATISTICS_GEN,
    nodes.TRANSFORM,
    nodes.SCENE_EVALUATOR,
    nodes.TILE_EVALUATOR,
]
# What must run before what (each edge is an artifact or an explicit upstream node).
EDGES = [
    (nodes.EXAMPLE_GEN, nodes.STATISTICS_GEN),
    (nodes.SCHEMA_GEN, nodes.STATISTICS_GEN),
    (nodes.STATISTICS_GEN, nodes.EXAMPLE_VALIDATOR),
    (nodes.EXAMPLE_VALIDATOR, nodes.VALIDATION_GATE),
    (nodes.VALIDATION_GATE, nodes.TRANSFORM),
    (nodes.TRANSFORM, nodes.TRAINER),
    (nodes.TRAINER, nodes.SCENE_PREDICTOR),
    (nodes.SCENE_PREDICTOR, nodes.SCENE_EVALUATOR),
    (nodes.TRAINER, nodes.TILE_EVALUATOR),
    (nodes.SCENE_EVALUATOR, nodes.PUSHER),
]


def _compile(tmp_path, target: str, *extra: str) -> tuple[int, dict, str]:
    out = tmp_path / f"{target}.json"
    argv = ["compile", "--target", target, "--image", IMAGE, "--pipeline-root", ROOT]
    argv += ["--out", str(out), *extra]
    code = main(argv)
    return code, (json.loads(out.read_text()) if out.exists() else {}), str(out)


@pytest.fixture(scope="module")
def vertex(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vertex")
    code, document, out = _compile(
        tmp,
        "vertex",
        "--beam-runner",
        "DataflowRunner",
        "--project",
        "proj",
        "--region",
        "europe-west4",
        "--",
        EXTRA,
    )
    assert code == 0
    return document, out


def test_vertex_json_is_a_strict_kfp_pipeline_job(vertex):
    document, out = vertex
    job = json_format.Parse(open(out).read(), pipeline_spec_pb2.PipelineJob())
    assert job.runtime_config.gcs_output_directory == ROOT
    assert job.pipeline_spec["pipelineInfo"]["name"] == "tailings-seg"


def test_every_component_is_a_task_in_the_pipelines_order(vertex):
    document, _ = vertex
    tasks = document["pipelineSpec"]["root"]["dag"]["tasks"]
    containers = {t for t in tasks if "resolver" not in t}
    assert containers == set(COMPONENTS)
    assert {t for t in tasks if "resolver" in t} == {
        f"{nodes.BASELINE_RESOLVER}-model-resolver",
        f"{nodes.BASELINE_RESOLVER}-model-blessing-resolver",
    }
    for before, after in EDGES:
        assert before in tasks[after].get("dependentTasks", []), (before, after)
    # A topological order of the compiled DAG is create_pipeline's order.
    done: list[str] = []
    while len(done) < len(containers):
        ready = sorted(
            (
                t
                for t in containers - set(done)
                if set(tasks[t].get("dependentTasks", [])) & containers <= set(done)
            ),
            key=COMPONENTS.index,
        )
        assert ready, "cycle"
        done.append(ready[0])
    assert done == COMPONENTS


def test_every_component_runs_the_image_and_the_tfx_entrypoint(vertex):
    document, _ = vertex
    executors = document["pipelineSpec"]["deploymentSpec"]["executors"]
    containers = {k: v["container"] for k, v in executors.items() if "container" in v}
    assert {k.removesuffix("_executor") for k in containers} == set(COMPONENTS)
    for label, container in containers.items():
        assert container["image"] == IMAGE, label
        assert container["command"] == ["python", "-m", ENTRYPOINT_MODULE], label


def test_every_type_and_executor_the_spec_names_imports_as_the_entrypoint_imports_it(vertex):
    """In each container TFX's entrypoint imports the executor by `--executor_class_path` and
    each artifact's class from its type's schema title; `tailings.ConversionReport` once
    failed there ("Could not import tailings.ConversionReport")."""
    import yaml
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as entry
    from tfx.types.artifact import Artifact
    from tfx.utils import import_utils

    document, _ = vertex
    spec = document["pipelineSpec"]
    schemas = {
        artifact["artifactType"]["instanceSchema"]
        for component in spec["components"].values()
        for side in ("inputDefinitions", "outputDefinitions")
        for artifact in component.get(side, {}).get("artifacts", {}).values()
    }
    titles = set()
    for schema in schemas:
        type_schema = pipeline_spec_pb2.ArtifactTypeSchema(instance_schema=schema)
        cls = import_utils.import_class_by_path(entry._retrieve_class_path(type_schema))
        assert issubclass(cls, Artifact)
        titles.add(yaml.safe_load(schema)["title"])
    assert "components.ConversionReport" in titles
    for label, executor in spec["deploymentSpec"]["executors"].items():
        if "container" in executor:
            args = executor["container"]["args"]
            path = args[args.index("--executor_class_path") + 1]
            assert import_utils.import_class_by_path(path), label


def test_the_beam_steps_get_the_dataflow_options(vertex):
    document, _ = vertex
    executors = document["pipelineSpec"]["deploymentSpec"]["executors"]
    for node in BEAM_STEPS:
        args = executors[f"{node}_executor"]["container"]["args"]
        assert args[args.index(DATAFLOW[0]) :] == [*DATAFLOW, EXTRA], node


def test_the_compiled_pipeline_reads_and_writes_the_remote_locations(vertex):
    document, _ = vertex
    tasks = document["pipelineSpec"]["root"]["dag"]["tasks"]

    def parameter(task, name):
        return tasks[task]["inputs"]["parameters"][name]["runtimeValue"]["constantValue"]

    assert parameter(nodes.EXAMPLE_GEN, "input_base")["stringValue"] == f"{ROOT}/data"
    push = json.loads(parameter(nodes.PUSHER, "push_destination")["stringValue"])
    assert push["filesystem"]["base_directory"] == f"{ROOT}/serving/tailings"
    # The image's installed modules, by import path: nothing packaged under the root.
    assert "preprocessing_fn" in tasks[nodes.TRANSFORM]["inputs"]["parameters"]
    assert "run_fn" in tasks[nodes.TRAINER]["inputs"]["parameters"]
    assert "/work/" not in json.dumps(document)  # no local path of this machine


def test_kubeflow_json_is_a_strict_kfp_pipeline_spec(tmp_path, vertex):
    code, document, out = _compile(tmp_path, "kubeflow")
    assert code == 0
    spec = json_format.Parse(open(out).read(), pipeline_spec_pb2.PipelineSpec())
    assert spec.default_pipeline_root == ROOT
    assert set(spec.root.dag.tasks) == set(vertex[0]["pipelineSpec"]["root"]["dag"]["tasks"])
    # Without Dataflow, the Beam steps run the DirectRunner in their own container.
    args = document["deploymentSpec"]["executors"]["Transform_executor"]["container"]["args"]
    assert "--direct_num_workers=1" in args and not any("DataflowRunner" in a for a in args)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target", "vertex", "--pipeline-root", "/tmp/x"], "must be a gs:// URI"),
        (["--target", "kubeflow", "--pipeline-root", "root"], "must be a URI"),
        (["--beam-runner", "DataflowRunner"], "needs --project and --region"),
        (["--project", "p"], "are for --beam-runner Dataflow"),
        (["--image", "bad image"], "is not an image reference"),
        (["--", "--runer=DataflowRunner"], "Beam does not know --runer=DataflowRunner"),
        (
            ["--beam-runner", "DataflowRunner", "--project", "p", "--region", "r"]
            + ["--temp-location", "/tmp/t"],
            "--temp-location must be a gs:// URI",
        ),
    ],
)
def test_bad_flags_are_refused_before_anything_is_written(tmp_path, capsys, extra, message):
    """Checked before TFX loads; nothing is written."""
    out = tmp_path / "p.json"
    argv = ["compile", "--target", "vertex", "--image", IMAGE, "--pipeline-root", ROOT]
    argv += ["--out", str(out)]
    assert main(argv + extra) == 1  # a repeated flag: argparse keeps the last
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_vertex_ais_sdk_builds_its_pipeline_job_from_the_file(vertex):
    """google-cloud-aiplatform (locked with TFX) reads the file as `PipelineJob` does before it
    submits; offline, anonymous credentials, nothing submitted."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    _, out = vertex
    job = aiplatform.PipelineJob(
        display_name="tailings",
        template_path=out,
        project="proj",
        location="europe-west4",
        credentials=AnonymousCredentials(),
    )
    resource = job._gca_resource
    assert resource.runtime_config.gcs_output_directory == ROOT
    assert set(resource.pipeline_spec["root"]["dag"]["tasks"]) >= set(COMPONENTS)
