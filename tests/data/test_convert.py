"""The Beam conversion: every bad pair reported with its own reason, every good pair kept."""

import gzip
import json

import numpy as np
import pytest
from rasterio.transform import from_origin

from data import pairs
from data.config import ConversionConfig
from data.convert import ShardPlan, run_conversion
from data.reader import read_dataset, shard_files
from tests.fixtures.geotiffs import PIXEL_DEGREES, make_pair, read_pixels, scene

GOOD = ["g1", "g2", "g3", "g4"]


def _bad_inputs(img, msk) -> dict[str, str]:
    """Write one pair per kind of bad input; return id -> expected reason."""
    image, mask = scene(64, 64, seed=9)

    truncated, _ = make_pair(img, msk, "truncated", image=image + 0.001 * np.arange(64))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    text, _ = make_pair(img, msk, "text")
    text.write_text("this is not a GeoTIFF\n")
    make_pair(img, msk, "no_mask")
    (msk / "mask_no_mask.tif").unlink()
    make_pair(img, msk, "no_image")
    (img / "img_no_image.tif").unlink()
    make_pair(img, msk, "shape", image=image[:, :, :48])
    nan = image.copy()
    nan[0, 3, 4] = np.nan
    make_pair(img, msk, "nan", image=nan)
    inf = image.copy()
    inf[2, 10, 10] = np.inf
    make_pair(img, msk, "inf", image=inf)
    make_pair(img, msk, "four_bands", image=np.concatenate([image, image[:1]]))
    make_pair(img, msk, "mask_255", mask=mask * 255)
    make_pair(img, msk, "crs", mask_crs="EPSG:32723")
    shifted = from_origin(-43.9 + 2 * PIXEL_DEGREES, -19.9, PIXEL_DEGREES, PIXEL_DEGREES)
    make_pair(img, msk, "transform", mask_transform=shifted)
    return {
        "truncated": pairs.UNREADABLE_IMAGE,
        "text": pairs.UNREADABLE_IMAGE,
        "no_mask": pairs.MISSING_MASK,
        "no_image": pairs.MISSING_IMAGE,
        "shape": pairs.SHAPE_MISMATCH,
        "nan": pairs.NON_FINITE_PIXELS,
        "inf": pairs.NON_FINITE_PIXELS,
        "four_bands": pairs.IMAGE_BAND_COUNT,
        "mask_255": pairs.MASK_VALUES,
        "crs": pairs.CRS_MISMATCH,
        "transform": pairs.TRANSFORM_MISMATCH,
    }


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    img, msk = root / "img", root / "mask"
    for i, pair_id in enumerate(GOOD):
        make_pair(img, msk, pair_id, seed=i)
    expected = _bad_inputs(img, msk)
    summary = run_conversion(str(img), str(msk), str(root / "out"), ConversionConfig(shards=2))
    return root, expected, summary


def test_every_bad_pair_is_rejected_with_its_reason(bad_run):
    root, expected, summary = bad_run
    rows = [json.loads(line) for line in (root / "out" / "rejected.jsonl").read_text().splitlines()]
    assert {r["id"]: r["reason"] for r in rows} == expected
    for row in rows:
        assert row["detail"] and row["id"] in row["detail"] + str(row["image"]) + str(row["mask"])
    details = {r["id"]: r["detail"] for r in rows}
    assert "1 NaN and 0 infinite" in details["nan"] and "0 NaN and 1 infinite" in details["inf"]
    assert "255" in details["mask_255"]


def test_every_good_pair_is_still_converted_exactly(bad_run):
    root, expected, summary = bad_run
    assert summary.converted == len(GOOD)
    assert summary.rejected == len(expected)
    assert summary.pairs_found == len(GOOD) + len(expected)
    written = {}
    for pair_id, image, mask in read_dataset(root / "out", with_ids=True).as_numpy_iterator():
        written[pair_id.decode()] = (image, mask)
    assert sorted(written) == sorted(GOOD)
    for pair_id, (image, mask) in written.items():
        source = read_pixels(root / "img" / f"img_{pair_id}.tif")
        np.testing.assert_array_equal(image, np.transpose(source, (1, 2, 0)))
        np.testing.assert_array_equal(mask, read_pixels(root / "mask" / f"mask_{pair_id}.tif")[0])


def test_each_band_has_its_own_summary_features(bad_run):
    """TFDV pools a vector's values, so every band's statistics are also written one band each:
    the same numbers as the vectors', which numpy computes from the source pixels."""
    import tensorflow as tf

    from schemas import features as F

    root, _, _ = bad_run
    spec = F.feature_spec()
    records = tf.data.TFRecordDataset(shard_files(root / "out"), compression_type="GZIP")
    for record in records:
        example = tf.io.parse_single_example(record, spec)  # every band feature is present
        pair_id = example[F.PAIR_ID].numpy().decode()
        pixels = read_pixels(root / "img" / f"img_{pair_id}.tif").reshape(3, -1).astype(np.float64)
        expected = {
            F.BAND_MEAN: pixels.mean(axis=1),
            F.BAND_STD: pixels.std(axis=1),
            F.BAND_MIN: pixels.min(axis=1),
            F.BAND_MAX: pixels.max(axis=1),
        }
        for statistic, values in expected.items():
            np.testing.assert_allclose(example[statistic].numpy(), values, rtol=1e-6)
            for band, value in zip(F.BAND_ORDER, values, strict=True):
                one = example[F.band_feature(statistic, band)].numpy()
                assert one == example[statistic].numpy()[F.BAND_ORDER.index(band)]
                assert one == pytest.approx(value, rel=1e-6)


def test_summary_json_counts_reasons_and_bytes(bad_run):
    root, expected, _ = bad_run
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["converted"] == len(GOOD)
    assert sum(summary["rejected_by_reason"].values()) == len(expected)
    assert summary["rejected_by_reason"][pairs.NON_FINITE_PIXELS] == 2
    files = shard_files(root / "out")
    assert len(files) == 2 == len(summary["shards"])
    assert summary["bytes_written"] == sum(
        (root / "out" / f).stat().st_size for f in summary["shards"]
    )


def _records(folder) -> dict[str, list[bytes]]:
    """Shard name -> its records, from the raw GZIP TFRecord framing."""
    out = {}
    for path in shard_files(folder):
        data, records, i = gzip.open(path).read(), [], 0
        while i < len(data):
            length = int.from_bytes(data[i : i + 8], "little")
            records.append(data[i + 12 : i + 12 + length])
            i += 12 + length + 4
        out[path.rsplit("/", 1)[-1]] = records
    return out


@pytest.mark.slow
def test_two_workers_write_exactly_what_one_worker_writes(tmp_path):
    img, msk = tmp_path / "img", tmp_path / "mask"
    for i in range(10):
        make_pair(img, msk, str(i), size=(32, 32), seed=i)
    one = run_conversion(str(img), str(msk), str(tmp_path / "w1"), ConversionConfig(workers=1))
    two = run_conversion(str(img), str(msk), str(tmp_path / "w2"), ConversionConfig(workers=2))
    assert one.converted == two.converted == 10
    first, second = _records(tmp_path / "w1"), _records(tmp_path / "w2")
    assert first == second
    assert sum(len(r) for r in first.values()) == 10


def test_shard_plan_is_stable_and_respects_split_sizes():
    plan = ShardPlan(shards=3, splits=(("train", 4), ("eval", 1)))
    keys = [plan.key(f"pair-{i}") for i in range(2000)]
    assert keys == [plan.key(f"pair-{i}") for i in range(2000)]
    eval_share = sum(split == "eval" for split, _ in keys) / len(keys)
    assert 0.17 < eval_share < 0.23
    assert {shard for _, shard in keys} == {0, 1, 2}


def test_rerun_replaces_old_shards(tmp_path):
    img, msk = tmp_path / "img", tmp_path / "mask"
    make_pair(img, msk, "1", size=(16, 16))
    run_conversion(str(img), str(msk), str(tmp_path / "out"), ConversionConfig(shards=3))
    run_conversion(str(img), str(msk), str(tmp_path / "out"), ConversionConfig(shards=1))
    assert [p.rsplit("/", 1)[-1] for p in shard_files(tmp_path / "out")] == [
        "examples-00000-of-00001.tfrecord.gz"
    ]


def test_pairs_excluded_by_review_are_rejected_unread(tmp_path):
    img, msk = tmp_path / "img", tmp_path / "mask"
    for i, pair_id in enumerate(GOOD):
        make_pair(img, msk, pair_id, size=(16, 16), seed=i)
    summary = run_conversion(
        str(img),
        str(msk),
        str(tmp_path / "out"),
        ConversionConfig(shards=2),
        excluded={"g2": "bad polygon"},
    )
    rows = [
        json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()
    ]
    assert rows == [
        {
            "id": "g2",
            "image": str(img / "img_g2.tif"),
            "mask": str(msk / "mask_g2.tif"),
            "reason": pairs.EXCLUDED_BY_REVIEW,
            "detail": "excluded by review in labels.yaml: bad polygon",
        }
    ]
    ids = {
        i.decode() for i, _, _ in read_dataset(tmp_path / "out", with_ids=True).as_numpy_iterator()
    }
    assert ids == {"g1", "g3", "g4"}
    assert (summary.converted, summary.rejected, summary.pairs_found) == (3, 1, 4)
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["rejected_by_reason"] == {pairs.EXCLUDED_BY_REVIEW: 1}
    assert written["converted"] == 3


def test_an_excluded_pair_is_not_read_even_if_it_is_broken(tmp_path):
    img, msk = tmp_path / "img", tmp_path / "mask"
    make_pair(img, msk, "ok", size=(16, 16))
    broken, _ = make_pair(img, msk, "broken", size=(16, 16))
    broken.write_text("not a GeoTIFF\n")
    summary = run_conversion(
        str(img), str(msk), str(tmp_path / "out"), excluded={"broken": "tile is corrupt"}
    )
    assert summary.converted == 1
    assert summary.rejected_by_reason == {pairs.EXCLUDED_BY_REVIEW: 1}


def test_a_pair_that_raises_inside_the_dofn_is_rejected_and_the_rest_written(tmp_path, monkeypatch):
    """Anything one pair raises (here the encoder) rejects that pair, never the job."""
    from data import convert

    img, msk = tmp_path / "img", tmp_path / "mask"
    for i, pair_id in enumerate(GOOD):
        make_pair(img, msk, pair_id, size=(16, 16), seed=i)
    real = convert.to_example

    def explode_on_g3(pair):
        if pair.pair_id == "g3":
            raise MemoryError("Unable to allocate 447. GiB for an array")
        return real(pair)

    monkeypatch.setattr(convert, "to_example", explode_on_g3)
    summary = run_conversion(str(img), str(msk), str(tmp_path / "out"), ConversionConfig(shards=1))
    rows = [
        json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()
    ]
    assert [(r["id"], r["reason"]) for r in rows] == [("g3", pairs.CONVERSION_FAILED)]
    assert rows[0]["detail"] == "MemoryError: Unable to allocate 447. GiB for an array"
    ids = {
        i.decode() for i, _, _ in read_dataset(tmp_path / "out", with_ids=True).as_numpy_iterator()
    }
    assert ids == {"g1", "g2", "g4"}  # the shard that held g3 was still written
    assert (summary.converted, summary.rejected) == (3, 1)
    assert not list((tmp_path / "out").glob("*.tmp-*"))
