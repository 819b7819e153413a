"""`tailings labels review`: cleanlab finds planted mask errors, folds are cached by what they
depend on, and the outputs (ranking, flagged GeoTIFFs, page, proposed exclusions) are usable.

Everything but the last test runs without TensorFlow: the fold models are replaced by an "ideal
model" (the true mask, softened and a little off) or by a fake trainer.
"""

import csv
import dataclasses
import json
import re

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy.ndimage import gaussian_filter

from components import cross_validation, progress
from components.config import ModelConfig, TrainConfig, TrainerConfig
from components.cross_validation import FoldResult, Split, fold_of, stack
from data.labels import EXCLUDE, KEEP, LabelDecision, labels_path, read_labels, write_labels
from data.pairs import GeoPair, discover_pairs, validate
from pipeline import label_review as lr
from pipeline.config import LabelReviewConfig
from tests.fixtures.geotiffs import make_pair, make_pairs, scene
from tests.fixtures.pipeline import TINY

TILE = 64
IDS = [str(i + 1) for i in range(12)]  # make_pairs' ids; pair "n" is scene seed n - 1
SHIFTED, EXTRA_SQUARE, MISSING = "3", "7", "11"
PLANTED = {SHIFTED, EXTRA_SQUARE, MISSING}
SQUARE = 20


def background_square(mask: np.ndarray) -> tuple[int, int]:
    """Top-left corner of a SQUARE x SQUARE window of background at least 4 px from tailings."""
    for y in range(4, TILE - SQUARE - 4):
        for x in range(4, TILE - SQUARE - 4):
            if not mask[y - 4 : y + SQUARE + 4, x - 4 : x + SQUARE + 4].any():
                return y, x
    raise AssertionError("no background square in this tile")


def planted(pair_id: str, mask: np.ndarray) -> np.ndarray:
    """The mislabelled version of a true [H,W] mask (or the mask itself for clean pairs)."""
    if pair_id == SHIFTED:
        return np.roll(mask, 24, axis=1)
    if pair_id == EXTRA_SQUARE:
        y, x = background_square(mask)
        bad = mask.copy()
        bad[y : y + SQUARE, x : x + SQUARE] = 1
        return bad
    if pair_id == MISSING:
        return np.zeros_like(mask)
    return mask


def ideal_probabilities(truth: np.ndarray, seed: int = 0) -> np.ndarray:
    """An "ideal model": 0.9 on the true tailings, 0.1 elsewhere, with a soft outline 2 px off
    the drawn one and a little noise, so clean tiles have some border disagreement."""
    rng = np.random.default_rng(seed)
    soft = np.stack([gaussian_filter(np.roll(t, 2, axis=0).astype(np.float32), 1.0) for t in truth])
    p = 0.1 + 0.8 * soft + rng.normal(0.0, 0.05, truth.shape)
    return np.clip(p, 0.01, 0.99).astype(np.float32)


def synthetic_tiles() -> tuple[Split, np.ndarray]:
    """12 tiles whose labels carry the planted errors, and their true masks [N,H,W]."""
    images, truth = [], []
    for pair_id in IDS:
        image, mask = scene(TILE, TILE, seed=int(pair_id) - 1)
        images.append(image.transpose(1, 2, 0))
        truth.append(mask[0])
    truth = np.stack(truth)
    labels = np.stack([planted(i, m) for i, m in zip(IDS, truth, strict=True)])
    # `pairs` stands in for the GeoPairs (only write_flagged reads them; `subset` needs one
    # per tile).
    split = Split(list(IDS), np.stack(images), labels[..., None].astype(np.float32), list(IDS))
    return split, truth


# --------------------------------------------------------------------------- cleanlab scoring
def test_planted_label_errors_rank_worst_with_the_right_flag_direction():
    split, truth = synthetic_tiles()
    labels = split.masks[..., 0].astype(np.uint8)
    probabilities = ideal_probabilities(truth)
    folds = np.array([fold_of(f"site-{i}", 2) for i in IDS])
    oof = lr.OutOfFold(probabilities, folds, [], [], [], [], [])

    scores = lr.score_labels(labels, probabilities)
    codes = lr.flag_codes(labels, scores.issues)
    tiles = lr.rank_tiles(split, oof, scores, codes, threshold=0.5)

    assert [t.score for t in tiles] == sorted(t.score for t in tiles)
    assert {t.pair_id for t in tiles[:3]} == PLANTED, [(t.pair_id, t.score) for t in tiles]
    by_id = {t.pair_id: t for t in tiles}
    clean = [by_id[i] for i in IDS if i not in PLANTED]
    # The clean tiles are not trivially clean: their outlines disagree with the model a little.
    assert max(t.flagged_share for t in clean) > 0
    assert min(by_id[i].flagged_share for i in PLANTED) > 2 * max(t.flagged_share for t in clean)
    for i, pair_id in enumerate(IDS):
        tile = by_id[pair_id]
        assert tile.fold == fold_of(f"site-{pair_id}", 2)
        assert tile.labelled_share == pytest.approx(labels[i].mean())
        assert tile.predicted_share == pytest.approx(np.mean(probabilities[i] >= 0.5))
        assert tile.flagged_share == pytest.approx(np.mean(scores.issues[i]))

    # Extra square on background: labelled tailings that the model calls background.
    k = IDS.index(EXTRA_SQUARE)
    y, x = background_square(truth[k])
    square = codes[k, y : y + SQUARE, x : x + SQUARE]
    assert np.mean(square == lr.FLAGGED_LABELLED_TAILINGS) > 0.8
    assert not np.any(square == lr.FLAGGED_LABELLED_BACKGROUND)
    # Missing blob: labelled background that the model calls tailings, on the blob.
    k = IDS.index(MISSING)
    blob = truth[k] == 1
    assert np.mean(codes[k][blob] == lr.FLAGGED_LABELLED_BACKGROUND) > 0.5
    assert np.sum(codes[k][~blob] != lr.AGREES) < 0.2 * np.sum(codes[k][blob] != lr.AGREES)
    assert by_id[MISSING].flagged_labelled_background_share > 0
    # Shifted mask: both directions, each where it belongs.
    k = IDS.index(SHIFTED)
    wrongly_on = (labels[k] == 1) & (truth[k] == 0)
    wrongly_off = (labels[k] == 0) & (truth[k] == 1)
    assert np.mean(codes[k][wrongly_on] == lr.FLAGGED_LABELLED_TAILINGS) > 0.5
    assert np.mean(codes[k][wrongly_off] == lr.FLAGGED_LABELLED_BACKGROUND) > 0.5


def test_flag_codes_follow_the_label_of_each_flagged_pixel():
    masks = np.array([[[1, 1, 0, 0]]], np.uint8)
    issues = np.array([[[True, False, True, False]]])
    codes = lr.flag_codes(masks, issues)
    assert codes.dtype == np.uint8
    assert codes.tolist() == [
        [[lr.FLAGGED_LABELLED_TAILINGS, lr.AGREES, lr.FLAGGED_LABELLED_BACKGROUND, lr.AGREES]]
    ]


# --------------------------------------------------------------------------- fold cache
def test_fold_key_is_stable_and_changes_with_everything_it_depends_on():
    split, _ = synthetic_tiles()
    digests = lr.tile_digests(split)
    held, trained = IDS[:5], IDS[5:]

    def key(digests=digests, held=held, trained=trained, config=TINY, folds=2, k=0, scene=""):
        return lr.fold_key(digests, held, trained, config, folds, k, scene)

    base = key()
    same = Split(list(split.ids), split.images.copy(), split.masks.copy())
    assert key(digests=lr.tile_digests(same), config=dataclasses.replace(TINY)) == base
    assert key(held=held[::-1], trained=trained[::-1]) == base  # order does not matter

    changed_config = dataclasses.replace(
        TINY, train=dataclasses.replace(TINY.train, epochs=TINY.train.epochs + 1)
    )
    assert key(config=changed_config) != base
    pixels = split.images.copy()
    pixels[7, 10, 10, 0] += 0.01  # one pixel of one tile
    assert key(digests=lr.tile_digests(Split(list(split.ids), pixels, split.masks))) != base
    masks = split.masks.copy()
    masks[0, 0, 0, 0] = 1 - masks[0, 0, 0, 0]  # one mask pixel of a held tile
    assert key(digests=lr.tile_digests(Split(list(split.ids), split.images, masks))) != base
    assert key(folds=3) != base
    assert key(k=1) != base
    assert key(trained=trained[1:]) != base  # a pair left out of training
    assert key(held=held[:-1], trained=[*trained, held[-1]]) != base  # moved to the other part
    assert key(scene="windows") != base


def _fake_trainer(calls: list):
    """Stands in for `cross_validation.train_and_predict`: a deterministic probability per
    pixel from the held-out images (with more precision than float16 keeps)."""

    def train_and_predict(train, held_out, config, scene=None, callbacks=()):
        calls.append((list(train.ids), list(held_out.ids)))
        p = 1.0 / (1.0 + np.exp(-(held_out.images.mean(axis=-1, keepdims=True) - 0.1) * 37.0))
        mode = config.model.test_time_augmentation
        return FoldResult(held_out={mode: p.astype(np.float32)}, seconds=0.25, epochs=3)

    return train_and_predict


def _expected_fake(images: np.ndarray) -> np.ndarray:
    """What the fake model predicts, as out_of_fold keeps it (float16, the cache's precision)."""
    p = 1.0 / (1.0 + np.exp(-(images.mean(axis=-1) - 0.1) * 37.0))
    return p.astype(np.float16).astype(np.float32)


def test_out_of_fold_caches_each_fold_and_reuses_it_only_for_the_same_inputs(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(cross_validation, "train_and_predict", _fake_trainer(calls))
    monkeypatch.setattr(progress, "epoch_progress", lambda *a, **k: None)
    split, _ = synthetic_tiles()
    cache = tmp_path / "folds"
    messages: list[str] = []

    first = lr.out_of_fold(split, TINY, 2, cache, messages.append)
    assert len(calls) == 2 and first.reused == [False, False]
    assert sorted(p.name for p in cache.iterdir()) == ["fold-1-of-2.npz", "fold-2-of-2.npz"]
    folds = np.array([fold_of(f"site-{i}", 2) for i in IDS])
    np.testing.assert_array_equal(first.folds, folds)
    for k, (trained, held) in enumerate(calls):
        assert held == [i for i, f in zip(IDS, folds, strict=True) if f == k]
        assert trained == [i for i, f in zip(IDS, folds, strict=True) if f != k]
    np.testing.assert_array_equal(first.probabilities, _expected_fake(split.images))
    assert not any("reusing" in m for m in messages)

    messages.clear()
    again = lr.out_of_fold(split, TINY, 2, cache, messages.append)
    assert len(calls) == 2, "an unchanged fold was trained again"
    assert again.reused == [True, True] and again.epochs == [3, 3]
    assert sum("reusing" in m for m in messages) == 2
    # A resumed review must see what the first one saw.
    np.testing.assert_allclose(again.probabilities, first.probabilities, atol=1e-3)

    # A changed Trainer config, or one changed pixel, retrains every fold it reaches.
    changed = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, epochs=5))
    assert lr.out_of_fold(split, changed, 2, cache).reused == [False, False]
    assert len(calls) == 4
    images = split.images.copy()
    images[0, 0, 0, 0] += 0.01
    edited = Split(list(split.ids), images, split.masks, split.pairs)
    assert lr.out_of_fold(edited, changed, 2, cache).reused == [False, False]
    assert len(calls) == 6

    # Pairs excluded from training are still predicted, but train no fold model.
    excluded = frozenset({"1", "2"})
    result = lr.out_of_fold(split, TINY, 2, None, train_excluded=excluded)
    assert result.reused == [False, False]
    for trained, _held in calls[-2:]:
        assert not excluded & set(trained)
    assert excluded <= {i for _, held in calls[-2:] for i in held}
    np.testing.assert_allclose(result.probabilities[:2], _expected_fake(split.images[:2]))


def test_resumed_out_of_fold_sees_exactly_what_the_first_run_saw(tmp_path, monkeypatch):
    monkeypatch.setattr(cross_validation, "train_and_predict", _fake_trainer([]))
    monkeypatch.setattr(progress, "epoch_progress", lambda *a, **k: None)
    split, _ = synthetic_tiles()
    first = lr.out_of_fold(split, TINY, 2, tmp_path)
    again = lr.out_of_fold(split, TINY, 2, tmp_path)
    assert again.reused == [True, True]
    np.testing.assert_array_equal(again.probabilities, first.probabilities)


def test_out_of_fold_refuses_an_empty_fold(monkeypatch):
    monkeypatch.setattr(cross_validation, "train_and_predict", _fake_trainer([]))
    monkeypatch.setattr(progress, "epoch_progress", lambda *a, **k: None)
    split, _ = synthetic_tiles()
    two = cross_validation.subset(split, np.isin(split.ids, ["1", "2"]))
    with pytest.raises(lr.LabelReviewError, match="is empty: use fewer --folds"):
        lr.out_of_fold(two, TINY, 3, None)  # two pairs cannot fill three folds


# --------------------------------------------------------------------------- outputs
def _geo_pairs(tmp_path) -> list[GeoPair]:
    """Two pairs on different grids: EPSG:4326 degrees and UTM 23S metres."""
    img, msk = tmp_path / "img", tmp_path / "mask"
    make_pair(img, msk, "a", seed=1)
    make_pair(
        img, msk, "b", seed=2, crs="EPSG:32723", transform=from_origin(612340, 7801230, 10, 10)
    )
    pairs = [validate(spec) for spec in discover_pairs(img, msk)]
    assert all(isinstance(p, GeoPair) for p in pairs), pairs
    return pairs


def test_write_flagged_puts_uint8_codes_on_each_tiles_own_grid_with_colours(tmp_path):
    pairs = _geo_pairs(tmp_path)
    split = stack(pairs)
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 3, size=(2, TILE, TILE)).astype(np.uint8)

    written = lr.write_flagged(tmp_path / "flagged", split, codes)

    assert [p.name for p in written] == ["flagged_a.tif", "flagged_b.tif"]
    for path, pair, expected in zip(written, pairs, codes, strict=True):
        with rasterio.open(tmp_path / "img" / f"img_{pair.pair_id}.tif") as image:
            crs, transform = image.crs, image.transform
        with rasterio.open(path) as src:
            assert src.count == 1 and src.dtypes == ("uint8",)
            assert src.crs == crs and src.crs == CRS.from_wkt(pair.crs_wkt)
            assert src.transform.almost_equals(transform, precision=1e-12)
            np.testing.assert_array_equal(src.read(1), expected)
            colours = src.colormap(1)
        for code, rgba in lr.FLAG_COLOURS.items():
            assert colours[code][:3] == rgba[:3]
    assert CRS.from_wkt(pairs[1].crs_wkt).to_epsg() == 32723  # the two grids really differ


def test_flagged_geotiff_shows_agreeing_pixels_transparent(tmp_path):
    pairs = _geo_pairs(tmp_path)
    codes = np.zeros((2, TILE, TILE), np.uint8)
    (path, _) = lr.write_flagged(tmp_path / "flagged", stack(pairs), codes)
    with rasterio.open(path) as src:
        assert src.colormap(1)[lr.AGREES][3] == 0 or src.nodata == lr.AGREES


def _tiles(ids: list[str]) -> list[lr.TileReview]:
    return [
        lr.TileReview(pair_id, 0.5 + 0.05 * n, 0.1, 0.2, 0.15, 0.3, 0.06, 0.04, n % 2)
        for n, pair_id in enumerate(ids)
    ]


def test_propose_exclusions_keeps_a_persons_decisions_and_adds_the_rest(tmp_path):
    data = tmp_path / "data"
    make_pairs(data, 6, size=(16, 16))
    existing = [
        LabelDecision("4", KEEP, "checked by eye, mask fine"),
        LabelDecision("6", EXCLUDE, "cloud"),
    ]
    write_labels(labels_path(data), existing)
    before = labels_path(data).read_bytes()
    tiles = _tiles(["4", "2", "5", "1"])  # worst first; "4" was kept by a person

    out, added = lr.propose_exclusions(data, tiles, 3, tmp_path / "out" / lr.PROPOSED_FILE)

    assert out == tmp_path / "out" / lr.PROPOSED_FILE
    assert added == 2
    decisions = read_labels(out, known_ids=set(IDS[:6]))
    assert list(decisions) == ["4", "6", "2", "5"]  # existing first, in order, then proposals
    assert decisions["4"] == existing[0] and decisions["6"] == existing[1]
    for pair_id in ("2", "5"):
        assert decisions[pair_id].decision == EXCLUDE
        assert "proposed by label review" in decisions[pair_id].reason
    assert "1" not in decisions  # only the 3 worst
    assert labels_path(data).read_bytes() == before  # the person's file is not touched


def test_propose_exclusions_without_a_labels_file_excludes_the_worst(tmp_path):
    data = tmp_path / "data"
    make_pairs(data, 4, size=(16, 16))
    out, added = lr.propose_exclusions(data, _tiles(["3", "1", "2", "4"]), 2, tmp_path / "p.yaml")
    decisions = read_labels(out)
    assert added == 2 and list(decisions) == ["3", "1"]
    assert {d.decision for d in decisions.values()} == {EXCLUDE}
    assert not labels_path(data).exists()


# --------------------------------------------------------------------------- real training
REVIEW_TRAINER = TrainerConfig(
    model=ModelConfig(encoder="unet", depth=2, base_width=8, test_time_augmentation="none"),
    train=TrainConfig(epochs=15, batch_size=4, max_figures=0, learning_rate=0.003, mosaic="none"),
)
EXTERNAL = re.compile(
    r"""(src|href)\s*=\s*["']?\s*(https?:)?//|<link\b|@import|url\(\s*["']?http"""
)


def _ranking(path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _numbers(rows: list[list[str]]) -> np.ndarray:
    return np.array([[float(v) for v in r[1:]] for r in rows[1:]])


@pytest.mark.slow
def test_review_ranks_planted_errors_worst_and_reuses_folds(tmp_path):
    data = tmp_path / "data"
    imgs, masks = make_pairs(data, 12)
    for pair_id in PLANTED:
        image, mask = scene(TILE, TILE, seed=int(pair_id) - 1)
        bad = planted(pair_id, mask[0])[None].astype(np.uint8)
        make_pair(imgs, masks, pair_id, image=image, mask=bad, seed=int(pair_id) - 1)
    cfg = LabelReviewConfig(
        data_dir=data,
        out_dir=tmp_path / "out",
        folds=2,
        trainer_override=REVIEW_TRAINER,
        write_exclusions=3,
    )
    messages: list[str] = []

    review = lr.run_review(cfg, messages.append)

    worst = {t.pair_id for t in review.tiles[:3]}
    assert worst == PLANTED, [(t.pair_id, round(t.score, 4)) for t in review.tiles]
    assert not any("reusing" in m for m in messages)
    rows = _ranking(cfg.out_dir / lr.RANKING_FILE)
    assert rows[0] == list(lr.RANKING_COLUMNS)
    scores = [float(r[1]) for r in rows[1:]]
    assert scores == sorted(scores)
    assert [r[0] for r in rows[1:]] == [t.pair_id for t in review.tiles]
    assert sorted(r[0] for r in rows[1:]) == sorted(IDS)
    assert sorted(p.name for p in (cfg.out_dir / lr.FLAGGED_DIR).iterdir()) == sorted(
        f"flagged_{i}.tif" for i in IDS
    )
    page = cfg.html_path.read_text()
    assert not EXTERNAL.search(page), EXTERNAL.search(page)
    for pair_id in IDS:
        assert re.search(rf"#\d+ {pair_id}: score", page), pair_id
    proposed = read_labels(cfg.out_dir / lr.PROPOSED_FILE, known_ids=set(IDS))
    assert set(proposed) == PLANTED
    assert {d.decision for d in proposed.values()} == {EXCLUDE}
    summary = json.loads((cfg.out_dir / lr.SUMMARY_FILE).read_text())
    assert summary["pairs"] == 12 and summary["folds_reused"] == [False, False]
    assert summary["proposed_exclusions"]["new_entries"] == 3

    # The same review again: both folds come from the cache, with the same ranking.
    messages.clear()
    again = lr.run_review(cfg, messages.append)
    assert sum("reusing" in m for m in messages) == 2, messages
    assert [t.pair_id for t in again.tiles] == [t.pair_id for t in review.tiles]
    rows_again = _ranking(cfg.out_dir / lr.RANKING_FILE)
    assert [r[0] for r in rows_again] == [r[0] for r in rows]
    assert rows_again == rows  # the cache holds what the first run scored
    assert json.loads((cfg.out_dir / lr.SUMMARY_FILE).read_text())["folds_reused"] == [True, True]

    # A changed Trainer config retrains every fold (1 epoch keeps this part short).
    changed = dataclasses.replace(
        cfg,
        trainer_override=dataclasses.replace(
            REVIEW_TRAINER, train=dataclasses.replace(REVIEW_TRAINER.train, epochs=1)
        ),
    )
    messages.clear()
    retrained = lr.run_review(changed, messages.append)
    assert not any("reusing" in m for m in messages), messages
    assert retrained.out_of_fold.reused == [False, False]
    assert retrained.out_of_fold.epochs == [1, 1]
