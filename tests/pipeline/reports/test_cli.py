"""`tailings stats` and `tailings report` as the CLI runs them (in-process: TF loads once)."""

from __future__ import annotations

import pytest

from data.errors import EXIT_ANOMALIES
from schemas import features as F
from tailings.cli import build_parser, main
from tests.pipeline.reports.conftest import PAIRS


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if ": error: " in line]


def test_help_lists_stats_and_report():
    text = build_parser().format_help()
    assert "stats" in text and "report" in text


def test_stats_of_a_folder_prints_tables_and_writes_html(capsys, same_folder, tmp_path):
    page = tmp_path / "sub" / "stats.html"
    code, out, err = run(capsys, "stats", "--examples", str(same_folder), "--html", str(page))
    assert code == 0, err
    assert f"examples folder {PAIRS}" in out and "rejected pairs: 1" in out
    assert page.read_text().startswith("<!DOCTYPE html>") and f"wrote {page}" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("stats", "--examples", "{tmp}/nope"), "--examples folder does not exist: {tmp}/nope"),
        (("stats", "--examples", "{tmp}"), "no *.tfrecord.gz shards in {tmp}"),
        (("stats", "--output-dir", "{tmp}"), "no metadata store at {tmp}/metadata.sqlite"),
        (("stats", "--examples", "{tmp}", "--split", "eval"), "--split applies to runs"),
        (("report", "--output-dir", "{tmp}", "--html", "{tmp}/r.html"), "no metadata store at"),
        (
            ("stats", "--examples", "{tmp}", "--compare", "{tmp}/train/FeatureStats.pb"),
            "--compare {tmp}/train/FeatureStats.pb: no such folder or statistics file",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_1(capsys, tmp_path, args, message):
    code, _, err = run(capsys, *(a.format(tmp=tmp_path) for a in args))
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1 and message.format(tmp=tmp_path) in lines[0], err
    assert "Traceback" not in err


def test_drift_in_one_band_exits_4_naming_the_band(capsys, red_folder, same_folder, tmp_path):
    """New imagery checked against the training data's folder before anything runs."""
    page = tmp_path / "drift.html"
    code, out, err = run(
        capsys,
        "stats",
        "--examples",
        str(red_folder),
        "--compare",
        str(same_folder),
        "--html",
        str(page),
    )
    assert code == EXIT_ANOMALIES == 4, err
    assert f"drift against folder {same_folder}" in out
    drifted = [line.split()[2] for line in out.splitlines() if line.endswith("  DRIFT")]
    assert drifted and all(name.endswith("_b4") for name in drifted), out
    assert f"drift against folder {same_folder}: {', '.join(sorted(drifted))} (exit 4)" in err
    assert "Traceback" not in err and page.exists()


def test_no_drift_exits_0(capsys, same_folder):
    code, out, err = run(
        capsys, "stats", "--examples", str(same_folder), "--compare", str(same_folder)
    )
    assert code == 0, err
    assert f"0 of {len(F.COMPARED_FEATURES)} measurements above threshold" in out


def test_a_corrupt_shard_is_one_line_naming_it(capsys, same_folder, tmp_path):
    from tests.pipeline.reports.test_stats import corrupt_copy, truncated

    folder, shard = corrupt_copy(same_folder, tmp_path, truncated)
    code, _, err = run(capsys, "stats", "--examples", str(folder))
    assert code == 1
    (line,) = error_lines(err)
    expected = f"tailings stats: error: cannot read shard {shard}: truncated: the gzip stream "
    assert line.startswith(expected + "ends early, after ") and line.endswith(" whole records")
    assert "Traceback" not in err


@pytest.mark.slow
def test_unknown_run_is_named(capsys, pipeline_run, tmp_path):
    cfg, _ = pipeline_run
    for verb in (("stats",), ("report", "--html", str(tmp_path / "r.html"))):
        code, _, err = run(capsys, *verb, "--output-dir", str(cfg.output_dir), "--run", "nope")
        assert code == 1 and "no run 'nope'" in error_lines(err)[0], err


@pytest.mark.slow
def test_stats_compare_and_report_on_a_real_run(capsys, pipeline_run, bright_folder, tmp_path):
    cfg, summary = pipeline_run
    out_dir = str(cfg.output_dir)
    code, out, err = run(
        capsys,
        "stats",
        "--examples",
        str(bright_folder),
        "--compare",
        summary.run_id,
        "--output-dir",
        out_dir,
        "--html",
        str(tmp_path / "drift.html"),
    )
    assert code == EXIT_ANOMALIES, err  # 1.6 x brighter: every band drifts
    assert f"drift against run {summary.run_id}" in out
    assert f"of {len(F.COMPARED_FEATURES)} measurements above threshold" in out
    assert "skew between train and the other splits" not in out  # a folder has one split
    code, out, err = run(
        capsys, "stats", "--run", summary.run_id, "--split", "eval", "--output-dir", out_dir
    )
    assert code == 0, err
    assert "examples eval " in out and "train " not in out.splitlines()[0]
    assert "skew between train and the other splits" in out  # eval against the run's train
    page = tmp_path / "run.html"
    code, out, err = run(
        capsys, "report", "--run", summary.run_id, "--output-dir", out_dir, "--html", str(page)
    )
    assert code == 0, err
    assert f"run {summary.run_id}" in out and "BLESSED" in out
    assert summary.run_id in page.read_text()
