"""`tailings schema infer`: an inferred draft next to the curated schema, which stays untouched."""

import pytest
import tensorflow_data_validation as tfdv

from data.convert import run_conversion
from pipeline.schema_draft import (
    infer_draft,
    statistics_from_examples,
    statistics_from_run,
    write_draft,
)
from schemas import SCHEMA_DIR
from schemas import features as F
from tests.fixtures.geotiffs import make_pairs


def _features(schema) -> dict:
    return {f.name: f for f in schema.feature}


def test_draft_from_converted_examples_marks_pixels_as_images(tmp_path):
    img, msk = make_pairs(tmp_path, 3, size=(32, 32))
    run_conversion(str(img), str(msk), str(tmp_path / "out"))
    draft = _features(infer_draft(statistics_from_examples(tmp_path / "out")))
    assert set(draft) == set(F.feature_spec())
    for name in F.BYTES_FEATURES:
        assert draft[name].HasField("image_domain")
    assert list(d.size for d in draft[F.BAND_MEAN].shape.dim) == [3]


def test_examples_folder_without_shards_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.tfrecord.gz shards"):
        statistics_from_examples(tmp_path)


@pytest.mark.slow
def test_draft_from_a_run_is_written_beside_and_not_over_the_curated_schema(pipeline_run, tmp_path):
    cfg, _ = pipeline_run
    curated = (SCHEMA_DIR / "schema.pbtxt").read_text()
    out = write_draft(statistics_from_run(cfg), tmp_path / "schema.draft.pbtxt")
    assert (SCHEMA_DIR / "schema.pbtxt").read_text() == curated
    draft = _features(tfdv.load_schema_text(str(out)))
    assert draft[F.BANDS].type == draft[F.HEIGHT].type  # INT features inferred as INT


def test_a_truncated_shard_is_one_line_naming_it(tmp_path, capfd):
    """TFDV's Beam job fails with a long traceback that names no file; the CLI names the shard."""
    from data.config import ConversionConfig
    from tailings.cli import main

    img, msk = make_pairs(tmp_path, 4, size=(16, 16))
    run_conversion(str(img), str(msk), str(tmp_path / "out"), ConversionConfig(shards=2))
    shard = sorted((tmp_path / "out").glob("*.tfrecord.gz"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    capfd.readouterr()
    argv = ["schema", "infer", "--examples", str(tmp_path / "out")]
    assert main([*argv, "--out", str(tmp_path / "draft.pbtxt")]) == 1
    err = capfd.readouterr().err
    (line,) = err.splitlines()  # nothing else: no traceback, no Beam log
    expected = f"tailings schema: error: cannot read shard {shard}: truncated: the gzip "
    assert line.startswith(expected + "stream ends early, after ") and line.endswith(" records")
    assert not (tmp_path / "draft.pbtxt").exists()
