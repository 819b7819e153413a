"""Issue 20, item 6: an output the OS will not let a verb write (a folder under a file, a
read-only folder, a full disk) ends the verb with one line naming the flag, the path and the OS
error, exit 1: no traceback, no "--- Logging error ---", no half-written `.tmp` shard.

Every case fails before a pipeline starts (outputs are probed before TensorFlow even loads), or
is a `tailings convert` of three small pairs. The read-only and full folders come from
`tests/fixtures/filesystems.py` (tmpfs mounts as root, chmod / RLIMIT_FSIZE otherwise).
"""

import errno
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures import filesystems
from tests.fixtures.filesystems import Folder
from tests.fixtures.geotiffs import make_pairs, scene, write_geotiff

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1")
NOT_A_DIRECTORY = os.strerror(errno.ENOTDIR)
PIPELINE_STARTED = "PIPELINE STARTED"

# `tailings ARGS` in a fresh interpreter: the exit code, and whether TensorFlow got imported.
# `run` reaches a stand-in for pipeline.runner: any case that gets that far has failed (and
# fails fast, without training anything).
IN_PROCESS = f"""
import json, sys, types
stub = types.ModuleType("pipeline.runner")
def run_pipeline(cfg, say=None):
    print({PIPELINE_STARTED!r}, file=sys.stderr)
    return types.SimpleNamespace(lines=lambda: [], exit_code=0)
stub.run_pipeline = run_pipeline
sys.modules["pipeline.runner"] = stub
from tailings.cli import main
code = main(sys.argv[1:])
print(json.dumps({{"code": code, "tensorflow": "tensorflow" in sys.modules}}))
"""


def in_process(*args, folder: Folder | None = None) -> tuple[int, bool, list[str]]:
    """(exit code, TensorFlow imported, stderr lines) of `tailings ARGS`."""
    out = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=PROJECT_ROOT,
        preexec_fn=folder.preexec if folder else None,
    )
    assert out.stdout.strip(), out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["code"], result["tensorflow"], out.stderr.strip().splitlines()


@pytest.fixture
def read_only_folder(tmp_path):
    with filesystems.read_only_folder(tmp_path / "read-only") as folder:
        yield folder


@pytest.fixture
def full_disk_folder(tmp_path):
    with filesystems.full_disk_folder(tmp_path / "full-disk") as folder:
        yield folder


def _pairs(root: Path, size: int = 16) -> Path:
    make_pairs(root, 3, size=(size, size))
    return root


def _scene(path: Path) -> Path:
    image, _ = scene(32, 32)
    return write_geotiff(path, image, descriptions=("B2", "B3", "B4"))


def command(verb: str, flag: str, target: Path, tmp_path: Path) -> list:
    """`tailings VERB` with valid input everywhere except `flag`, which is `target`."""
    if verb == "run":
        args = ["run", "--data", _pairs(tmp_path / "data"), "--epochs", "1"]
        args += ["--output-dir", tmp_path / "outputs", "--serving-dir", tmp_path / "serving"]
    elif verb == "convert":
        data = _pairs(tmp_path / "data")
        args = ["convert", "--images", data / "img", "--masks", data / "mask"]
        args += ["--output", tmp_path / "converted"]
    elif verb == "stats":
        (tmp_path / "examples").mkdir()
        args = ["stats", "--examples", tmp_path / "examples", "--html", tmp_path / "s.html"]
    elif verb == "report":
        args = ["report", "--output-dir", tmp_path, "--html", tmp_path / "r.html"]
    else:
        args = ["predict", _scene(tmp_path / "scene.tif"), "--out", tmp_path / "mask.tif"]
        if flag != "--out":
            args += [flag, tmp_path / "extra"]
    i = args.index(flag)
    args[i + 1] = target
    return args


VERB_FLAGS = [
    ("run", "--output-dir"),
    ("run", "--serving-dir"),
    ("convert", "--output"),
    ("stats", "--html"),
    ("report", "--html"),
    ("predict", "--out"),
    ("predict", "--probabilities"),
    ("predict", "--polygons"),
]
FILE_FLAGS = {"--html", "--out", "--probabilities", "--polygons"}


def _target(flag: str, folder: Path) -> Path:
    """A path for `flag` inside `folder`: a file for file flags, else a folder."""
    if flag not in FILE_FLAGS:
        return folder / "out"
    return folder / ("page.html" if flag == "--html" else "out.tif")


def assert_one_line(verb: str, stderr: list[str], expected: str) -> None:
    assert stderr == [f"tailings {verb}: error: {expected}"], stderr


@pytest.mark.parametrize(("verb", "flag"), VERB_FLAGS)
def test_an_output_under_a_file_is_one_line_before_any_work(tmp_path, verb, flag):
    blocker = tmp_path / "a-file.txt"
    blocker.write_text("not a folder")
    target = _target(flag, blocker)

    code, tensorflow, stderr = in_process(*command(verb, flag, target, tmp_path))

    assert code == 1
    assert_one_line(
        verb, stderr, f"cannot write {flag} {target}: {NOT_A_DIRECTORY} ({blocker} is a file)"
    )
    assert not tensorflow, "TensorFlow was imported before the output was checked"


@pytest.mark.parametrize(("verb", "flag"), VERB_FLAGS)
def test_a_read_only_folder_is_one_line_before_any_work(tmp_path, read_only_folder, verb, flag):
    target = _target(flag, read_only_folder.path)
    if flag in ("--output-dir", "--output"):
        target = read_only_folder.path  # an existing folder: created fine, yet not writable

    started = time.monotonic()
    code, tensorflow, stderr = in_process(*command(verb, flag, target, tmp_path))

    assert code == 1
    assert_one_line(verb, stderr, f"cannot write {flag} {target}: {read_only_folder.error}")
    assert not tensorflow, "TensorFlow was imported before the output was checked"
    if verb == "run":  # refused before any component: nothing trained, no metadata store
        assert time.monotonic() - started < 30
        assert not list(tmp_path.rglob("metadata.sqlite"))


@pytest.mark.parametrize(("verb", "flag"), [vf for vf in VERB_FLAGS if vf[0] != "convert"])
def test_a_full_disk_is_one_line_before_any_work(tmp_path, full_disk_folder, verb, flag):
    full_disk_folder.fill()
    target = _target(flag, full_disk_folder.path)

    code, tensorflow, stderr = in_process(
        *command(verb, flag, target, tmp_path), folder=full_disk_folder
    )

    assert code == 1
    assert_one_line(verb, stderr, f"cannot write {flag} {target}: {full_disk_folder.error}")
    assert not tensorflow


def test_convert_on_a_disk_that_fills_up_leaves_no_partial_shard(tmp_path, full_disk_folder):
    """The disk has room for one shard of three 64x64 pairs, not for all of them: the shard
    that does not fit is removed, and the job ends with one line naming --output."""
    data = _pairs(tmp_path / "data", size=64)
    out = full_disk_folder.path / "converted"
    args = ["convert", "--images", data / "img", "--masks", data / "mask", "--output", out]

    done = subprocess.run(
        [sys.executable, "-m", "tailings", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=PROJECT_ROOT,
        preexec_fn=full_disk_folder.preexec,
    )

    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    expected = (
        f"tailings convert: error: cannot write --output {re.escape(str(out))}: "
        f"{full_disk_folder.error} \\(examples-\\d{{5}}-of-00004.tfrecord.gz not written; "
        "no partial shard left\\)"
    )
    assert len(errors) == 1 and re.fullmatch(expected, errors[0]), done.stderr
    assert "Traceback" not in done.stderr and "Logging error" not in done.stderr
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]


# The log routing of `tailings run` (pipeline/runner.py) on a disk that fills up mid-run:
# components log more than fits, something print()s into the full log, a component fails, and
# the runner logs that failure before it restores logging (as run_pipeline does).
RUN_LOG = """
import logging, sys
from pathlib import Path
from pipeline.config import PipelineConfig
from pipeline.runner import _fds_to, _restore_logs, _route_logs

log_file, saved = _route_logs(PipelineConfig(output_dir=Path(sys.argv[1])))
try:
    with _fds_to(log_file):
        for i in range(200):  # 200 kB of log on a disk with less room
            logging.getLogger("tfx").info("component says %d %s", i, "x" * 1000)
        print("LEFTOVER", end="")  # stays in stdout's buffer: the log's disk is full
        raise RuntimeError("a component failed")
except RuntimeError:
    logging.getLogger("pipeline.runner").exception("pipeline failed")
finally:
    _restore_logs(saved)
print("the terminal is back")
"""


def test_run_logs_on_a_full_disk_give_one_line_not_logging_errors(tmp_path, full_disk_folder):
    out = full_disk_folder.path / "outputs"
    buffered = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}  # as users run it
    done = subprocess.run(
        [sys.executable, "-c", RUN_LOG, str(out)],
        capture_output=True,
        text=True,
        env=buffered,
        cwd=PROJECT_ROOT,
        preexec_fn=full_disk_folder.preexec,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == "the terminal is back\n"  # fds restored; nothing stale leaked out
    assert "Logging error" not in done.stderr and "Traceback" not in done.stderr
    (log,) = (out / "logs").glob("run-*.log")
    said = [line for line in done.stderr.splitlines() if "cannot write" in line]
    assert said == [
        f"cannot write the log {log}: {full_disk_folder.error} "
        "(the records after that were dropped)"
    ], done.stderr


def test_an_unexpected_os_error_is_one_line_naming_the_path(monkeypatch, capsys):
    """The last resort in `main`: an OSError no verb converted still names its path."""
    from tailings import cli

    def fails(args, beam_args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/summary.json")

    monkeypatch.setattr(cli, "_fetch", fails)  # the verb `fetch-data`, failing as a disk would

    assert cli.main(["fetch-data"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"tailings fetch-data: error: /data/out/summary.json: {os.strerror(errno.ENOSPC)}"
    ]
