"""Start-up of `tailings`: what each verb imports before it answers, and what TensorFlow's
start-up prints. Times are measured by benchmarks/startup.py, not asserted here; these tests
check the causes: which modules load, and which lines reach stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
from ml_metadata.proto import metadata_store_pb2 as mlmd

from pipeline import metadata, nodes
from pipeline.config import PipelineConfig
from tests.conftest import PROJECT_ROOT
from tests.fixtures.geotiffs import make_pairs, scene, write_geotiff
from tests.pipeline.test_metadata import StoreBuilder
from tests.pipeline.test_runs import FULL_RUN

HEAVY = ("tensorflow", "tfx", "apache_beam", "tensorflow_model_analysis", "tensorflow_transform")
CUDA_NOISE = ("Unable to register cuFFT", "Unable to register cuDNN", "Unable to register cuBLAS")


def _env(**changes: str | None) -> dict[str, str]:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell: tailings chooses the level
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _tailings(*args: str, **env: str | None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tailings", *args],
        cwd=PROJECT_ROOT,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
    )


@dataclass
class Verb:
    """What `tailings.cli.main(argv)` did in a fresh interpreter."""

    rc: int
    heavy: list[str]  # the heavy libraries it imported
    stdout: list[str]
    errors: list[str]  # its stderr lines of the form "tailings <verb>: error: ..."


def _main_in_fresh_interpreter(argv: list[str]) -> Verb:
    code = (
        "import json, sys\n"
        "from tailings.cli import main\n"
        f"rc = main({argv!r})\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print(json.dumps([rc, heavy]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    *stdout, last = done.stdout.strip().splitlines()
    rc, heavy = json.loads(last)
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    return Verb(rc, heavy, stdout, errors)


def _heavy_modules_after(argv: list[str]) -> tuple[int, list[str]]:
    """Run `tailings.cli.main(argv)` in a fresh interpreter; its exit code and the heavy
    libraries it imported."""
    verb = _main_in_fresh_interpreter(argv)
    return verb.rc, verb.heavy


def test_tailings_runs_imports_no_tensorflow_tfx_or_beam(tmp_path):
    cfg = PipelineConfig(output_dir=tmp_path / "outputs")
    cfg.output_dir.mkdir()
    builder = StoreBuilder(cfg.metadata_path)
    builder.run("complete", {node: "COMPLETE" for node in FULL_RUN})
    del builder

    rc, heavy = _heavy_modules_after(["runs", "--output-dir", str(cfg.output_dir)])

    assert rc == 0
    assert heavy == []


@pytest.mark.slow
def test_tailings_runs_reads_a_real_runs_digest_without_tensorflow(pipeline_run):
    cfg, summary = pipeline_run
    run = metadata.load_run(metadata.open_store(str(cfg.metadata_path)), summary.run_id)
    assert nodes.RUN_SUMMARY_PROPERTY in run.properties  # what the run recorded when it ended

    verb = _main_in_fresh_interpreter(["runs", "--output-dir", str(cfg.output_dir)])

    assert (verb.rc, verb.heavy) == (0, [])
    [row] = [line for line in verb.stdout if line.startswith(summary.run_id)]
    scene = summary.evaluations[nodes.SCENE_SPLIT]
    assert str(scene.metrics[nodes.IOU]) in row and " yes " in row and row.endswith("complete")


def test_a_run_killed_before_its_evaluators_is_listed_without_tensorflow_or_tfx(tmp_path):
    # No digest (its process died before it could record one): its outputs are read, and with
    # no Evaluator finished there is no TFMA output, so nothing heavy is needed for its row.
    cfg = PipelineConfig(output_dir=tmp_path / "outputs")
    cfg.output_dir.mkdir()
    report = mlmd.Artifact(uri=str(tmp_path / "report"))
    report.custom_properties["converted"].int_value = 14
    anomalies = mlmd.Artifact(uri=str(tmp_path / "anomalies"))  # no SchemaDiff.pb: none found
    anomalies.custom_properties["split_names"].string_value = '["train", "eval"]'
    builder = StoreBuilder(cfg.metadata_path)
    states = {node: "COMPLETE" for node in FULL_RUN[: FULL_RUN.index(nodes.TRANSFORM)]}
    outputs = {
        nodes.EXAMPLE_GEN: {nodes.CONVERSION_REPORT: report},
        nodes.EXAMPLE_VALIDATOR: {nodes.ANOMALIES: anomalies},
    }
    builder.run("killed", {**states, nodes.TRANSFORM: "RUNNING"}, outputs)
    del builder

    verb = _main_in_fresh_interpreter(["runs", "--output-dir", str(cfg.output_dir)])

    assert (verb.rc, verb.heavy) == (0, [])
    [row] = [line for line in verb.stdout if line.startswith("killed")]
    assert row.split()[3:] == ["14", "-", "-", "-", "-", "-", "-", "killed", "at", "Transform"]


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["stats", "--run", "nope"], "tailings stats: error: no run 'nope'; known runs: complete"),
        (
            ["stats", "--compare", "nope"],
            "tailings stats: error: --compare nope: not a folder or statistics file, and as a "
            "run id: no run 'nope'; known runs: complete",
        ),
        (
            ["stats", "--run", "complete"],
            "tailings stats: error: run complete has no StatisticsGen output (it stopped earlier)",
        ),
        (
            ["report", "--run", "nope", "--html", "{tmp}/r.html"],
            "tailings report: error: no run 'nope'; known runs: complete",
        ),
    ],
    ids=["stats unknown run", "stats --compare unknown run", "stats no statistics", "report"],
)
def test_a_run_the_store_does_not_have_is_one_line_before_heavy_imports(tmp_path, argv, error):
    cfg = PipelineConfig(output_dir=tmp_path / "outputs")
    cfg.output_dir.mkdir()
    builder = StoreBuilder(cfg.metadata_path)
    builder.run("complete", {node: "COMPLETE" for node in FULL_RUN})  # no artifacts recorded
    del builder
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--output-dir", str(cfg.output_dir)]

    verb = _main_in_fresh_interpreter(argv)

    assert (verb.rc, verb.heavy, verb.errors) == (1, [], [error])
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["convert", "--images", "{missing}", "--masks", "{missing}", "--output", "{tmp}/out"],
        ["fetch-data", "--source", "{missing}", "--dest", "{tmp}/data"],
        ["run", "--data", "{missing}", "--output-dir", "{tmp}/out"],
        ["runs", "--output-dir", "{missing}"],
        ["schema", "infer", "--examples", "{missing}", "--out", "{tmp}/draft.pbtxt"],
        ["schema", "infer", "--output-dir", "{missing}", "--out", "{tmp}/draft.pbtxt"],
        ["stats", "--output-dir", "{missing}"],
        ["report", "--output-dir", "{missing}", "--html", "{tmp}/r.html"],
        ["predict", "{missing}/scene.tif", "--out", "{tmp}/mask.tif"],
        ["labels", "review", "--data", "{missing}", "--out", "{tmp}/review"],
    ],
    ids=lambda argv: " ".join(a for a in argv if "{" not in a),
)
def test_a_bad_input_path_is_refused_before_heavy_imports(tmp_path, argv):
    missing = tmp_path / "missing"
    argv = [a.format(missing=missing, tmp=tmp_path) for a in argv]

    rc, heavy = _heavy_modules_after(argv)

    assert rc == 1
    assert heavy == []
    assert not (tmp_path / "out").exists()  # nothing written for a job that cannot start


def test_convert_refuses_an_unknown_beam_option_with_beams_import_only(tmp_path):
    img, msk = make_pairs(tmp_path, 1, size=(16, 16))
    argv = ["convert", "--images", str(img), "--masks", str(msk), "--output", str(tmp_path / "o")]

    rc, heavy = _heavy_modules_after([*argv, "--", "--runer=PortableRunner"])

    assert rc == 1
    assert heavy == ["apache_beam"]  # its options classes; TensorFlow and the job never start
    assert not (tmp_path / "o").exists()


def test_tensorflow_start_up_noise_does_not_reach_the_user(tmp_path):
    # `tailings predict` loads TensorFlow to open the model; this one is not a SavedModel, so
    # the verb stops right after TensorFlow loaded, with its own one-line error.
    image, _ = scene(64, 64)
    write_geotiff(tmp_path / "scene.tif", image, descriptions=("B2", "B3", "B4"))
    (tmp_path / "model" / "1").mkdir(parents=True)
    (tmp_path / "model" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    argv = ("predict", str(tmp_path / "scene.tif"), "--out", str(tmp_path / "mask.tif"))
    argv += ("--model", str(tmp_path / "model"))

    done = _tailings(*argv)
    # The same command with TF_CPP_MIN_LOG_LEVEL chosen by the user: nothing is filtered, so
    # the lines are there to filter (were they not, the first check would prove nothing).
    unfiltered = _tailings(*argv, TF_CPP_MIN_LOG_LEVEL="2")

    assert done.returncode == unfiltered.returncode == 1
    assert all(noise in unfiltered.stderr for noise in CUDA_NOISE), unfiltered.stderr
    assert not any(noise in done.stderr for noise in CUDA_NOISE), done.stderr
    assert "cpu_feature_guard" not in done.stderr and "TF-TRT" not in done.stderr
    # The verb's real error still shows, as the only line.
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("tailings predict: error: ") and "saved_model.pb" in line, line


def test_the_stderr_filter_drops_only_the_noise_and_keeps_the_order(tmp_path):
    # Written at the file-descriptor level, as C++ and child processes (Beam's workers) write:
    # noise lines between real ones, the last without a newline.
    code = (
        "import os, sys, subprocess\n"
        "from tailings.common import TF_STARTUP_NOISE, stderr_filtered\n"
        "with stderr_filtered(TF_STARTUP_NOISE):\n"
        "    os.write(2, b'E real error one\\n')\n"
        "    os.write(2, b'2026-01-01 E external/local_xla/xla/stream_executor/cuda/"
        "cuda_fft.cc:479] Unable to register cuFFT factory: Attempting to register factory "
        "for plugin cuFFT when one has already been registered\\n')\n"
        "    print('from python', file=sys.stderr)\n"
        "    subprocess.run(['sh', '-c', 'echo from a child >&2; echo "
        '"I tensorflow/core/platform/cpu_feature_guard.cc:210] optimized" >&2\'])\n'
        "    os.write(2, b'last')\n"
        "print(' after', file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=_env(), capture_output=True
    )

    assert done.returncode == 0
    assert done.stderr == b"E real error one\nfrom python\nfrom a child\nlast after\n"


# What Beam's worker processes print as they start (`convert` and `predict --beam` with
# --workers 2), as the DirectRunner's job service logs it, and a real error between them.
WORKER_LINES = (
    b"WARNING:apache_beam.runners.portability.local_job_service:Worker: severity: WARN "
    b'timestamp {   seconds: 1796000843   nanos: 208346366 } message: "No '
    b"semi_persistent_directory found: Functions defined in __main__ (interactive session) may "
    b'fail." log_location: "sdk_worker_main.py:361" thread: "MainThread" \n'
    b"ERROR:apache_beam.runners.worker.sdk_worker:a real worker error\n"
    b"WARNING:apache_beam.runners.portability.local_job_service:Worker: severity: WARN "
    b'timestamp {   seconds: 1796000843   nanos: 210995435 } message: "Discarding unparseable '
    b'args: [--pipeline_type_check, --direct_runner_use_stacked_bundle]" '
    b'log_location: "pipeline_options.py:394" thread: "MainThread" \n'
    b"/venv/lib/python3.10/site-packages/google/protobuf/runtime_version.py:98: FutureWarning: "
    b"grpcio 1.2 is older than protobuf expects\n"
    b"  warnings.warn(\n"
)


@pytest.mark.parametrize("tf_log_level", [None, "2"])
def test_every_verb_keeps_beam_workers_start_up_lines_from_the_user(tf_log_level):
    """`tailings.cli.main` runs every verb in `verb_noise_filtered`: the workers' lines go, also
    for a user who chose TensorFlow's log level (that choice is about TensorFlow's lines)."""
    code = (
        "import os, subprocess, sys\n"
        "from tailings.common import verb_noise_filtered\n"
        "with verb_noise_filtered():\n"
        f"    subprocess.run(['sh', '-c', 'cat >&2'], input={WORKER_LINES!r}, check=True)\n"
        "    os.write(2, b'I tensorflow/core/platform/cpu_feature_guard.cc:210] optimized\\n')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=_env(TF_CPP_MIN_LOG_LEVEL=tf_log_level),
        capture_output=True,
    )

    assert done.returncode == 0, done.stderr
    kept = [b"ERROR:apache_beam.runners.worker.sdk_worker:a real worker error"]
    if tf_log_level is not None:  # the user's level: TensorFlow's lines are not filtered
        kept.append(b"I tensorflow/core/platform/cpu_feature_guard.cc:210] optimized")
    assert done.stderr.splitlines() == kept


def test_child_processes_do_not_warn_about_python_310_or_pkg_resources(tmp_path):
    # Beam's worker processes inherit the environment, not the parent's warning filters; the
    # google client libraries they import warn about Python 3.10 (a FutureWarning each), and
    # tensorflow_hub (Beam's TensorFlow model handler, `predict --beam`) imports pkg_resources,
    # which warns that it is deprecated.
    child = "import google.api_core.client_options, google.auth.transport.grpc, pkg_resources"
    code = (
        "import subprocess, sys\n"
        "import tailings.common\n"
        f"subprocess.run([sys.executable, '-c', {child!r}], check=True)\n"
    )
    bare = subprocess.run(
        [sys.executable, "-c", child], env=_env(PYTHONWARNINGS=None), capture_output=True
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=_env(PYTHONWARNINGS=None),
        capture_output=True,
        text=True,
    )

    # Else there is nothing to keep from the user.
    assert b"FutureWarning" in bare.stderr and b"pkg_resources is deprecated" in bare.stderr
    assert done.returncode == 0
    assert done.stderr == "", done.stderr
