"""The `tailings` command as a user runs it: a real subprocess, exit codes, stderr messages."""

import json
import os
import subprocess
import sys

import pytest

from tests.fixtures.geotiffs import make_pair, make_pairs


def tailings(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell: tailings chooses the level
    return subprocess.run(
        [sys.executable, "-m", "tailings", *args], capture_output=True, text=True, env=env
    )


def convert(images, masks, output, *extra: str) -> subprocess.CompletedProcess:
    return tailings(
        "convert", "--images", str(images), "--masks", str(masks), "--output", str(output), *extra
    )


def test_help_lists_every_verb_with_one_line():
    out = tailings("--help")
    assert out.returncode == 0
    for verb in ("convert", "fetch-data", "run", "runs", "schema"):
        assert verb in out.stdout
        assert tailings(verb, "--help").returncode == 0


def test_convert_missing_folder_is_one_clear_line(tmp_path):
    out = convert(tmp_path / "nope", tmp_path, tmp_path / "out")
    assert out.returncode == 1
    assert "--images folder does not exist" in out.stderr and str(tmp_path / "nope") in out.stderr
    assert "Traceback" not in out.stderr


def test_convert_empty_folders_fail(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    out = convert(tmp_path / "img", tmp_path / "mask", tmp_path / "out")
    assert out.returncode == 1 and "no .tif/.tiff files" in out.stderr


def test_convert_nothing_converted_fails_and_reports(tmp_path):
    img, msk = tmp_path / "img", tmp_path / "mask"
    make_pair(img, msk, "1")
    (msk / "mask_1.tif").unlink()
    out = convert(img, msk, tmp_path / "out")
    assert out.returncode == 1
    assert "nothing converted" in out.stderr and "rejected.jsonl" in out.stderr
    row = json.loads((tmp_path / "out" / "rejected.jsonl").read_text())
    assert row["reason"] == "missing_mask"


@pytest.mark.slow
def test_convert_passes_beam_options_through_and_summarises(tmp_path):
    """`--workers 2` picks worker processes; `--direct_num_workers=1` wins over its count: one
    worker process, whose start-up lines (Beam's WARNINGs) the user does not see."""
    img, msk = make_pairs(tmp_path, 3, size=(16, 16))
    out = convert(
        img,
        msk,
        tmp_path / "out",
        "--shards",
        "2",
        "--workers",
        "2",
        "--",
        "--direct_num_workers=1",
        "--job_name=tailings-test",
    )
    assert out.returncode == 0, out.stderr
    assert "found 3 candidate pairs in 3 sites" in out.stderr
    assert "converted 3 of 3 pairs of 3 sites, rejected 0" in out.stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["converted"] == 3
    ours = ("found ", "  ... ", "converted ", "wrote ", "tailings convert: done in ")
    assert [line for line in out.stderr.splitlines() if not line.startswith(ours)] == []


def test_unknown_beam_option_is_refused_before_the_job(tmp_path):
    """Beam itself would drop `--runer=...` with a warning and convert on the DirectRunner."""
    img, msk = make_pairs(tmp_path, 1, size=(16, 16))
    out = convert(img, msk, tmp_path / "o", "--", "--runer=PortableRunner")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "tailings convert: error: -- Beam does not know --runer=PortableRunner (options are "
        "--name=value, as defined in apache_beam/options/pipeline_options.py)"
    ]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("model.test_time_augmentation=d8", "test_time_augmentation must be one of"),
        ("model.widht=8", "has no field 'widht'"),
        ("optimizer.lr=1", "expected model.FIELD=VALUE"),
        ("model.input_downsample=4", "multiples of 128 (2**levels x model.input_downsample)"),
    ],
)
def test_run_refuses_a_bad_set_before_running(tmp_path, change, says):
    out = tailings(
        "run", "--data", str(tmp_path), "--output-dir", str(tmp_path / "out"), "--set", change
    )
    assert out.returncode == 1
    assert says in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--min-iou", "2"], "--min-iou must be a number in [0, 1], got 2.0"),
        (["--min-iou", "nan"], "--min-iou must be a number in [0, 1], got nan"),
        (["--min-pixel-accuracy", "-5"], "--min-pixel-accuracy must be a number in [0, 1]"),
        (["--min-accuracy-gain", "1.5"], "--min-accuracy-gain must be a number in [-1, 1]"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--workers", "-1"], "--workers must be at least 1, got -1"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--set", "model.batch_norm=False"], "batch_norm must be true or false, got 'False'"),
        (["--tune-trials", "4"], "--tune-trials needs --tune"),
        (["--tune", "--tune-workers", "0"], "--tune-workers must be at least 1, got 0"),
        (["--tune", "--tune-epochs", "-2"], "--tune-epochs must be at least 1, got -2"),
    ],
)
def test_run_refuses_bad_flags_naming_the_flag(tmp_path, flags, says):
    """Issue 20, item 5: each refused with one line naming what the user typed."""
    out = tailings("run", "--data", str(tmp_path), "--output-dir", str(tmp_path / "out"), *flags)
    assert out.returncode == 1, out.stderr
    lines = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and says in lines[0], out.stderr
    assert not (tmp_path / "out").exists()  # nothing ran
