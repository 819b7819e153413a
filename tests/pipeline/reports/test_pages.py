"""The HTML pages: what they contain, and that a real browser renders them without the network."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from pipeline.reports import drift as drift_lib
from pipeline.reports.run_report import load_report, report_html
from pipeline.reports.stats import DataStats, feature_rows
from pipeline.reports.stats_page import stats_html
from schemas import features as F
from tests.pipeline.reports.chromium import find_chromium, render

# Anything that would make a browser fetch: src/href/url() not pointing into the page itself.
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*['"](?!data:|#)|url\(\s*['"]?(?!data:|#)|@import""")


@pytest.fixture(scope="session")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "no chromium binary on PATH (Debian: `apt-get install chromium`; .ci/run installs "
            "it where apt is available)"
        )
    return binary


@pytest.fixture(scope="module")
def folder_page(same_stats, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pages") / "folder.html"
    path.write_text(stats_html(same_stats))
    return path


@pytest.fixture(scope="module")
def compare_page(bright_stats, run_stats, tmp_path_factory) -> Path:
    found = drift_lib.compare(bright_stats, run_stats, drift_lib.load_schema())
    path = tmp_path_factory.mktemp("pages") / "compare.html"
    path.write_text(stats_html(bright_stats, found, run_stats))
    return path


@pytest.fixture(scope="module")
def red_page(red_stats, same_stats, tmp_path_factory) -> Path:
    """Only the red band drifts: new imagery against the training folder."""
    found = drift_lib.compare(red_stats, same_stats, drift_lib.load_schema())
    path = tmp_path_factory.mktemp("pages") / "red.html"
    path.write_text(stats_html(red_stats, found, same_stats))
    return path


@pytest.fixture(scope="module")
def split_page(same_stats, red_stats, tmp_path_factory) -> Path:
    """A run-like dataset: train, and an eval split skewed in the red band."""
    data = DataStats(
        "run x",
        {"train": same_stats.statistics["folder"], "eval": red_stats.statistics["folder"]},
    )
    path = tmp_path_factory.mktemp("pages") / "splits.html"
    path.write_text(stats_html(data, skew=drift_lib.skew(data, drift_lib.load_schema())))
    return path


@pytest.fixture(scope="module")
def run_page(pipeline_run, tmp_path_factory) -> Path:
    cfg, summary = pipeline_run
    path = tmp_path_factory.mktemp("pages") / "run.html"
    path.write_text(report_html(load_report(cfg, summary.run_id)))
    return path


@pytest.fixture(scope="module")
def review_page(tmp_path_factory) -> Path:
    """`tailings labels review`'s page for the planted-error tiles of its own tests."""
    from components.cross_validation import fold_of
    from pipeline import label_review as lr
    from pipeline.config import LabelReviewConfig
    from tests.pipeline.test_label_review import ideal_probabilities, synthetic_tiles

    split, truth = synthetic_tiles()
    labels = split.masks[..., 0].astype(np.uint8)
    probabilities = ideal_probabilities(truth)
    folds = np.array([fold_of(f"site-{i}", 2) for i in split.ids])
    oof = lr.OutOfFold(probabilities, folds, [3, 4], [10.0, 12.0], [False, True], [], [])
    scores = lr.score_labels(labels, probabilities)
    codes = lr.flag_codes(labels, scores.issues)
    tiles = lr.rank_tiles(split, oof, scores, codes, threshold=0.5)
    review = lr.Review(tiles, split, oof, codes, seconds=22.0)
    path = tmp_path_factory.mktemp("pages") / "review.html"
    path.write_text(lr.review_html(review, LabelReviewConfig(folds=2), 0.5))
    return path


def test_review_page_shows_every_tile_worst_first(review_page):
    page = review_page.read_text()
    assert not EXTERNAL.search(page)
    strips = re.findall(r"<figure><img src='data:image/jpeg;base64,[^']+' alt='tile (\w+)'>", page)
    captions = re.findall(r"<figcaption>#\d+ (\w+): score", page)
    assert len(strips) == 12 and strips == captions
    assert set(captions[:3]) == {"3", "7", "11"}  # the planted errors first


def metric_row(page: str, name: str) -> str:
    found = re.search(rf"<tr[^>]*><td class='text'>{name}</td>.*?</tr>", page)
    assert found, f"no row for {name}"
    return found.group(0)


def images(page: str) -> list[str]:
    return re.findall(r"<img src='([^']*)'", page)


def drawn_features(data) -> list[str]:
    """Numeric features with a histogram on the page: not constant, not pooled over bands."""
    rows = [r for d in data.statistics.values() for r in feature_rows(d) if r.kind == "numeric"]
    return sorted({r.name for r in rows if r.name not in F.BAND_STATISTICS and r.min != r.max})


def test_folder_page_shows_tables_histograms_rejects_and_thumbnails(folder_page, same_stats):
    page = folder_page.read_text()
    assert not EXTERNAL.search(page), EXTERNAL.search(page)
    assert "<b>14</b>folder examples" in page
    assert "band_mean[3]" in page and "band_mean_b4" in page and "tailings_fraction" in page
    assert "<th>p10</th><th>median</th><th>p90</th>" in page
    assert "<td class='text'>broken</td><td class='text'>mask_values</td>" in page
    assert "No anomalies" in page
    shown = images(page)
    assert all(src.startswith("data:image/png;base64,") for src in shown)
    # one histogram per band and summary feature (the pooled vectors are not drawn), 4 thumbnails
    drawn = drawn_features(same_stats)
    assert {F.band_feature(F.BAND_MEAN, b) for b in F.BAND_ORDER} <= set(drawn)
    assert re.findall(r"alt='([\w\[\]]+) histogram'", page) == drawn
    assert len(shown) == len(drawn) + 4
    assert "Not drawn, bands pooled (see the one-band features): band_max[3], band_mean[3]" in page


def test_red_band_page_flags_only_the_red_band(red_page):
    page = red_page.read_text()
    assert not EXTERNAL.search(page)
    drifted = re.findall(
        r"<tr class='bad'><td class='text'>folder</td><td class='text'>folder"
        r"</td><td class='text'>(\w+)</td>",
        page,
    )
    assert drifted and all(name.endswith("_b4") for name in drifted), drifted
    assert (
        f"{len(drifted)} of {len(F.COMPARED_FEATURES)} measurements above their threshold" in page
    )
    # the side-by-side table: the reference folder's row right under the drifted split's row
    assert re.search(
        r"<tr class='bad group'><td class='text'>band_\w+_b4</td>.*?DRIFT</td></tr>"
        r"<tr class='ref'><td class='text'></td><td class='text'>ref folder</td>",
        page,
    )


def test_split_page_shows_skew_between_train_and_eval(split_page):
    page = split_page.read_text()
    assert "Skew between train and the other splits" in page
    assert "skewed features" in page
    assert "<td class='text'>eval</td><td class='text'>train</td>" in page


@pytest.mark.slow
def test_compare_page_highlights_the_drifted_features(compare_page):
    page = compare_page.read_text()
    assert not EXTERNAL.search(page)
    drifted_rows = re.findall(r"<tr class='bad'><td class='text'>folder</td>.*?</tr>", page)
    assert drifted_rows and all("DRIFT" in row for row in drifted_rows)
    total = len(F.COMPARED_FEATURES)
    assert f"{len(drifted_rows)} of {total} measurements above their threshold" in page
    assert "the reference dashed" in page


@pytest.mark.slow
def test_run_page_shows_outcome_metrics_curves_and_figures(run_page, pipeline_run):
    cfg, summary = pipeline_run
    page = run_page.read_text()
    assert not EXTERNAL.search(page)
    assert summary.run_id in page and "BLESSED" in page
    # both splits, named; every metric with its bootstrap interval
    assert "scene split: the eval sites, each merged into one place" in page
    assert (
        "eval split: the eval sites&#x27; tiles" in page
        or "eval split: the eval sites' tiles" in page
    )
    assert re.search(r"<td>\d\.\d{4} \[-?\d\.\d{4}, \d\.\d{4}\]</td>", metric_row(page, "iou"))
    # judged by the run's own min_iou (0.0), not PipelineConfig's default 0.5, and flagged
    gate = r"<tr[^>]*><td class='text'>iou</td><td>[^<]*</td><td>&gt;= 0</td><td>pass</td></tr>"
    assert re.search(gate, page)
    assert "Thresholds overridden by this run" in page and "iou &gt;= 0 (default 0.5)" in page
    # every eval tile and scene window is listed (TFMA slices), worst first
    for row in summary.evaluations["eval"].tiles + summary.evaluations["scene"].tiles:
        assert f"<td class='text'>{row.pair_id}</td>" in page
    assert "pushed as version 1" in page
    # training curves + the Trainer's figures (max_figures=2 in the tiny config) + an error map
    # of every evaluated tile and window
    examples = sum(len(e.tiles) for e in summary.evaluations.values())
    assert len(images(page)) == 1 + cfg.trainer().train.max_figures + examples
    assert "Where the errors are" in page


def assert_offline_and_visible(page: Path, chromium: str) -> None:
    rendered = render(page, chromium)
    assert rendered.requests[0] == page.resolve().as_uri()
    network = [url for url in rendered.requests if not url.startswith(("file:", "data:"))]
    assert network == [], f"the page made network requests: {network}"
    assert rendered.images > 0 and rendered.broken_images == 0
    pixels = mpimg.imread(io.BytesIO(rendered.screenshot), format="png")
    assert pixels.shape[0] > 900  # the whole page, longer than one screen
    assert float(np.std(pixels[..., :3])) > 0.05, "the screenshot is blank"


@pytest.mark.slow
def test_pages_render_in_chromium_without_network(chromium, compare_page, run_page):
    for page in (compare_page, run_page):
        assert_offline_and_visible(page, chromium)


def test_stats_pages_render_in_chromium_without_network(chromium, red_page, split_page):
    for page in (red_page, split_page):
        assert_offline_and_visible(page, chromium)


def test_review_page_renders_in_chromium_without_network(chromium, review_page):
    assert_offline_and_visible(review_page, chromium)


@pytest.mark.slow
def test_the_browser_check_sees_a_network_request(chromium, tmp_path):
    """Control: a page that does fetch something is caught (port 9 refuses; nothing leaves)."""
    page = tmp_path / "leaky.html"
    page.write_text("<html><body><p>leak</p><img src='http://127.0.0.1:9/x.png'></body></html>")
    rendered = render(page, chromium)
    assert "http://127.0.0.1:9/x.png" in rendered.requests
