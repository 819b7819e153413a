"""`tailings run` on an output folder another process holds: exit 5 before anything is written.

The pipeline itself is not run here (the lock refuses it first); the own-run-id check, which
needs a real run, is in test_pipeline.py (test_raw_digital_numbers_stop_the_run_before_training).
"""

import os

from data.errors import EXIT_BUSY
from tailings.cli import main
from tests.fixtures.geotiffs import make_pairs
from tests.fixtures.locks import hold, release


def test_run_on_a_held_output_folder_exits_5_before_writing_anything(tmp_path, capsys):
    make_pairs(tmp_path / "data", 2)
    out = tmp_path / "outputs"
    holder = hold(out, "run")
    try:
        code = main(
            [
                "run",
                "--data",
                str(tmp_path / "data"),
                "--output-dir",
                str(out),
                "--serving-dir",
                str(tmp_path / "serving"),
            ]
        )
        err = capsys.readouterr().err
        assert os.listdir(out) == [".tailings.lock"]  # no logs/, no metadata.sqlite, no pipeline/
    finally:
        release(holder)
    assert code == EXIT_BUSY
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tailings run: error: ") and str(out) in lines[0]
    assert f"pid {holder.pid}" in lines[0] and "`tailings run`" in lines[0]
    serving = tmp_path / "serving"  # `tailings run` may create it to check it is writable
    assert not serving.exists() or os.listdir(serving) == []  # but nothing is pushed
