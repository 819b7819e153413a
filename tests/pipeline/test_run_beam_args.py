"""`tailings run -- <beam options>`: checked before anything runs, then handed to every
Beam-powered component of the local pipeline (as `tailings convert` checks them and hands them
to its job)."""

from __future__ import annotations

import pytest

from pipeline import nodes
from tailings.cli import main

PORTABLE = [
    "--runner=PortableRunner",
    "--job_endpoint=127.0.0.1:8099",
    "--environment_type=EXTERNAL",
    "--environment_config=127.0.0.1:50000",
]
# The components whose executors build a Beam pipeline (TFX's BeamExecutorSpec).
BEAM_NODES = {
    nodes.EXAMPLE_GEN,
    nodes.STATISTICS_GEN,
    nodes.TRANSFORM,
    nodes.SCENE_EVALUATOR,
    nodes.TILE_EVALUATOR,
}


def _run_argv(tmp_path, *beam: str) -> list[str]:
    for sub in ("img", "mask"):
        (tmp_path / "data" / sub).mkdir(parents=True, exist_ok=True)
    argv = ["run", "--data", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")]
    argv += ["--serving-dir", str(tmp_path / "models")]
    return argv + (["--", *beam] if beam else [])


@pytest.mark.parametrize(
    "beam, message",
    [
        (["--runer=PortableRunner"], "Beam does not know --runer=PortableRunner"),
        (["--direct_num_workers=2", "stray"], "Beam does not know stray"),
        (["--runner=NoSuchRunner"], "--runner NoSuchRunner: Unexpected pipeline runner"),
        (["--runner=DataflowRunner"], "tailings compile"),
        (["--runner=PortableRunner"], "needs --job_endpoint"),
    ],
)
def test_bad_beam_options_stop_the_run_before_anything_runs(tmp_path, capsys, beam, message):
    assert main(_run_argv(tmp_path, *beam)) == 1
    err = capsys.readouterr().err
    assert "tailings run: error: -- " in err and message in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "models").exists()


def test_the_options_reach_the_pipeline_config(tmp_path, monkeypatch):
    import pipeline.runner

    seen = {}

    class Done:
        exit_code = 0

        def lines(self):
            return []

    def fake_run(cfg):
        seen["cfg"] = cfg
        return Done()

    monkeypatch.setattr(pipeline.runner, "run_pipeline", fake_run)
    assert main(_run_argv(tmp_path, *PORTABLE)) == 0
    assert seen["cfg"].beam_args == tuple(PORTABLE)


def _beam_args_by_node(cfg) -> dict[str, list[str]]:
    """Node id -> the Beam options LocalDagRunner gives its executor (TFX's compiled IR)."""
    from tfx.dsl.compiler import compiler
    from tfx.proto.orchestration import executable_spec_pb2, pipeline_pb2

    from pipeline.pipeline import create_pipeline

    ir = compiler.Compiler().compile(create_pipeline(cfg))
    deployment = pipeline_pb2.IntermediateDeploymentConfig()
    ir.deployment_config.Unpack(deployment)
    out = {}
    for node, spec in deployment.executor_specs.items():
        beam = executable_spec_pb2.BeamExecutableSpec()
        if spec.Is(beam.DESCRIPTOR):
            spec.Unpack(beam)
            out[node] = list(beam.beam_pipeline_args)
    return out


def test_every_beam_powered_component_gets_the_options(tmp_path):
    from pipeline.config import PipelineConfig

    cfg = PipelineConfig(
        data_dir=tmp_path / "data",
        output_dir=tmp_path / "out",
        workers=2,
        beam_args=tuple(PORTABLE),
    )
    by_node = _beam_args_by_node(cfg)
    assert set(by_node) == BEAM_NODES
    for node, args in by_node.items():
        # `--workers` still sets the DirectRunner's options; the user's come after them.
        assert args == [
            "--direct_num_workers=2",
            "--direct_running_mode=multi_threading",
            *PORTABLE,
        ], node
    # Options the user sets win: `--workers`' own are left out, not overridden by order alone.
    mine = ("--direct_num_workers=3", "--direct_running_mode=multi_processing")
    cfg = PipelineConfig(data_dir=tmp_path / "data", workers=2, beam_args=mine)
    assert set(map(tuple, _beam_args_by_node(cfg).values())) == {mine}


def test_a_service_runner_is_refused_with_the_verbs_own_reason():
    from pipeline.beam_args import BeamArgsError, check_beam_args

    dataflow = ["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/t"]
    with pytest.raises(BeamArgsError) as err:
        check_beam_args(dataflow, local="it reads X as local files; use Y")
    assert str(err.value) == "--runner DataflowRunner: it reads X as local files; use Y"
    assert check_beam_args(dataflow, local=None) == "DataflowRunner"  # where any runner will do
    assert check_beam_args(["--direct_num_workers=2"], local="unused") == "DirectRunner"


def _convert_argv(tmp_path) -> list[str]:
    from tests.fixtures.geotiffs import make_pairs

    img, msk = make_pairs(tmp_path, 1, size=(16, 16))
    return ["convert", "--images", str(img), "--masks", str(msk), "--output", str(tmp_path / "o")]


@pytest.mark.parametrize(
    "beam, message",
    [
        (["--runer=PortableRunner"], "Beam does not know --runer=PortableRunner"),
        (["--runner=NoSuchRunner"], "--runner NoSuchRunner: Unexpected pipeline runner"),
        (["--runner=PortableRunner"], "needs --job_endpoint"),
        # Dataflow is allowed (workers that can read --images and --masks), and checked offline.
        (["--runner=DataflowRunner", "--project=p"], "--region is missing"),
    ],
)
def test_convert_checks_its_beam_options_before_the_job(tmp_path, capsys, beam, message):
    assert main([*_convert_argv(tmp_path), "--", *beam]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("tailings convert: error: -- ") and message in line, line
    assert not (tmp_path / "o").exists()
