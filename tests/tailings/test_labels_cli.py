"""`tailings labels review` refusals, and labels.yaml in `tailings run` / `tailings convert`:
bad input fails with one stderr line, before TensorFlow loads or anything runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data.labels import EXCLUDE, LabelDecision, labels_path, write_labels
from data.pairs import EXCLUDED_BY_REVIEW
from tests.fixtures.geotiffs import make_pairs

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1")
# Runs the command in-process and reports whether TensorFlow got imported on the way.
IN_PROCESS = """
import json, sys
from tailings.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "tensorflow": "tensorflow" in sys.modules}))
"""


def in_process(*args: str) -> tuple[int, bool, list[str]]:
    """(exit code, TensorFlow imported, stderr lines) of `tailings ARGS`."""
    out = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=PROJECT_ROOT,
    )
    assert out.stdout.strip(), out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["code"], result["tensorflow"], out.stderr.strip().splitlines()


def tailings(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tailings", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=PROJECT_ROOT,
    )


def _unknown_id_labels(data) -> None:
    write_labels(labels_path(data), [LabelDecision("99", EXCLUDE, "cloud")])


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("missing data", "no img/ folder"),
        ("one fold", "--folds must be at least 2, got 1"),
        ("too few pairs", "3 pairs are too few for 5 folds"),
        ("bad set", "has no field 'widht'"),
        ("unknown id", 'entry 1 (id "99"): unknown pair id'),
    ],
)
def test_labels_review_refuses_bad_input_in_one_line_before_tensorflow(tmp_path, case, says):
    data = tmp_path / "data"
    make_pairs(data, 3, size=(16, 16))
    out = tmp_path / "review"
    args = ["labels", "review", "--data", str(data), "--out", str(out), "--folds", "2"]
    named = str(data)
    if case == "missing data":
        args[3] = named = str(tmp_path / "nope")
    elif case == "one fold":
        args += ["--folds", "1"]
    elif case == "too few pairs":
        args += ["--folds", "5"]
    elif case == "bad set":
        args += ["--set", "model.widht=8"]
    elif case == "unknown id":
        _unknown_id_labels(data)
        named = str(labels_path(data))

    code, tensorflow, stderr = in_process(*args)

    assert code == 1
    assert len(stderr) == 1, stderr
    assert stderr[0].startswith("tailings labels: error: ") and says in stderr[0], stderr
    if case != "one fold" and case != "bad set":
        assert named in stderr[0]
    assert not tensorflow, "TensorFlow was imported before the input was checked"
    assert not out.exists()


def test_labels_review_valid_input_gets_past_the_checks(tmp_path, monkeypatch):
    """The refusals above are not the command refusing everything: good input reaches
    run_review (replaced here, so nothing trains)."""
    from pipeline import label_review
    from tailings.cli import main

    data = tmp_path / "data"
    make_pairs(data, 3, size=(16, 16))
    seen = []

    def fake_run_review(cfg, say):
        seen.append(cfg)
        raise label_review.LabelReviewError("stopped by the test")

    monkeypatch.setattr(label_review, "run_review", fake_run_review)
    args = ["--data", str(data), "--out", str(tmp_path / "r"), "--folds", "3", "--epochs", "2"]
    code = main(["labels", "review", *args])
    assert code == 1
    assert len(seen) == 1 and seen[0].folds == 3 and seen[0].trainer().train.epochs == 2


def test_run_refuses_labels_with_an_unknown_pair_before_running(tmp_path):
    data = tmp_path / "data"
    make_pairs(data, 2, size=(16, 16))
    _unknown_id_labels(data)
    out = tailings("run", "--data", str(data), "--output-dir", str(tmp_path / "out"))
    assert out.returncode == 1
    assert f"tailings run: error: {labels_path(data)}: " in out.stderr
    assert 'id "99"' in out.stderr and "unknown pair id" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.slow
def test_convert_rejects_pairs_excluded_next_to_img(tmp_path):
    data = tmp_path / "data"
    img, msk = make_pairs(data, 3, size=(16, 16))
    write_labels(labels_path(data), [LabelDecision("2", EXCLUDE, "mask covers the forest")])
    output = tmp_path / "out"
    out = tailings("convert", "--images", str(img), "--masks", str(msk), "--output", str(output))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (output / "rejected.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rows] == [("2", EXCLUDED_BY_REVIEW)]
    assert "mask covers the forest" in rows[0]["detail"]
    assert json.loads((output / "summary.json").read_text())["converted"] == 2


def test_convert_refuses_a_missing_labels_file(tmp_path):
    img, msk = make_pairs(tmp_path / "data", 1, size=(16, 16))
    missing = tmp_path / "nope.yaml"
    code, _, stderr = in_process(
        "convert",
        "--images",
        str(img),
        "--masks",
        str(msk),
        "--output",
        str(tmp_path / "o"),
        "--labels",
        str(missing),
    )
    assert code == 1
    assert stderr == [f"tailings convert: error: --labels {missing}: no such file"]
    assert not (tmp_path / "o").exists()


def test_convert_refuses_labels_with_an_unknown_pair_before_converting(tmp_path):
    img, msk = make_pairs(tmp_path / "data", 2, size=(16, 16))
    labels = tmp_path / "elsewhere" / "reviewed.yaml"
    write_labels(labels, [LabelDecision("99", EXCLUDE, "cloud")])
    code, _, stderr = in_process(
        "convert",
        "--images",
        str(img),
        "--masks",
        str(msk),
        "--output",
        str(tmp_path / "o"),
        "--labels",
        str(labels),
    )
    assert code == 1 and len(stderr) == 1, stderr
    assert stderr[0].startswith(f"tailings convert: error: {labels}: ")
    assert "unknown pair id" in stderr[0]
    assert not (tmp_path / "o").exists()
