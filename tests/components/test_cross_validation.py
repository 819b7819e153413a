"""The in-memory training path (quality benchmark, label review, Tuner): the Trainer's code,
fed from GeoPairs, including windows drawn over merged sites."""

import dataclasses

import numpy as np
import pytest

from components import cross_validation as cv
from components.config import ModelConfig, TrainConfig, TrainerConfig
from data.pairs import GeoPair
from data.sites import shifted
from schemas import features as F
from tests.components.synthetic import UTM_23S_WKT

SIZE = 16
TINY = TrainerConfig(
    model=ModelConfig(encoder="unet", depth=2, base_width=4, test_time_augmentation="none"),
    train=TrainConfig(epochs=1, batch_size=2, max_figures=0, mosaic="sites"),
)


def pairs(count: int) -> list[GeoPair]:
    """`count` tiles, two per site (overlapping by half), tailings in a corner of each."""
    rng = np.random.default_rng(0)
    origin = (10.0, 0.0, 500000.0, 0.0, -10.0, 7000000.0)
    out = []
    for k in range(count):
        site, second = divmod(k, 2)
        image = rng.uniform(0.02, 0.2, (SIZE, SIZE, 3)).astype(np.float32)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[:6, :6] = 1
        image[:6, :6] += 0.3
        transform = shifted(origin, rows=second * SIZE // 2, cols=site * 1000)
        out.append(
            GeoPair(
                str(k), image, mask, F.BAND_ORDER, UTM_23S_WKT.decode(), 32723, transform,
                site_id=f"site-{2 * site}",
            )
        )  # fmt: skip
    return out


def test_site_windows_train_the_fold_models() -> None:
    split = cv.stack(pairs(8))
    keep = np.array([True] * 6 + [False] * 2)
    result = cv.train_and_predict(cv.subset(split, keep), cv.subset(split, ~keep), TINY)
    assert result.epochs == 1
    assert result.held_out["none"].shape == (2, SIZE, SIZE, 1)
    assert np.isfinite(result.held_out["none"]).all()


def test_site_windows_need_the_georeference() -> None:
    split = cv.stack(pairs(4))
    bare = dataclasses.replace(split, pairs=[])
    with pytest.raises(ValueError, match="GeoPairs"):
        cv.train_and_predict(bare, split, TINY)


def test_held_out_sites_are_predicted_whole_and_blended() -> None:
    split = cv.stack(pairs(8))
    keep = np.array([True] * 6 + [False] * 2)
    held = cv.subset(split, ~keep)
    sites = cv.merged_sites(held)
    assert [s.site_id for s in sites] == ["site-6"]
    assert sites[0].image.shape[:2] == (SIZE + SIZE // 2, SIZE)  # two tiles, half overlapping
    result = cv.train_and_predict(cv.subset(split, keep), held, TINY, sites=sites, overlap=4)
    blended = result.sites["site-6"]
    assert blended.shape == sites[0].image.shape[:2]
    # The site's top half is the first tile's pixels, answered by the first window alone: the
    # same model on the same pixels as the tile's own prediction.
    np.testing.assert_allclose(
        blended[: SIZE // 2], result.held_out["none"][0, : SIZE // 2, :, 0], atol=1e-5
    )
    assert np.isfinite(blended).all() and ((blended >= 0) & (blended <= 1)).all()
