"""End-to-end: the real TFX pipeline (LocalDagRunner, SQLite ML Metadata) on tiny synthetic data.

One module-scoped run is shared by the checks; later runs reuse its output folder, so TFX's
cache makes them cheap and exercises caching itself.
"""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components import blending, scene_predictor_lib, trainer_lib
from components.config import ModelConfig, TrainConfig, TrainerConfig
from components.example_gen import SCENE_LAYOUT_FILE
from components.metrics import THRESHOLD
from data.errors import EXIT_ANOMALIES
from data.examples import decode_pair, to_example
from data.pairs import PairSpec, load_pair
from pipeline import metadata, nodes
from pipeline.config import PipelineConfig, Thresholds
from pipeline.reports import overlays
from pipeline.runner import run_pipeline
from pipeline.runs import list_runs
from pipeline.summary import EXIT_BLESSED, EXIT_NOT_BLESSED
from schemas.features import MASK_NODATA
from tests.fixtures.geotiffs import make_pair, scene
from tests.fixtures.pipeline import TILE, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def first_run(pipeline_run):
    return pipeline_run


def test_blessed_model_is_pushed_as_version_1(first_run):
    cfg, summary = first_run
    assert summary.error is None, summary.error
    assert summary.exit_code == EXIT_BLESSED and summary.blessed
    assert summary.converted == 14 and summary.rejected == []
    assert summary.anomalies == []
    assert summary.pushed_version == "1"
    version_dir = cfg.push_dir / "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert not [p for p in cfg.push_dir.iterdir() if p.name.startswith(".tmp")]


def test_the_runs_log_holds_one_progress_line_per_trainer_epoch(first_run):
    """The Trainer's epoch lines went through the runner (which shows them on the terminal and
    logs them as `pipeline.runner`): one per epoch, in order, in the first run's log."""
    cfg, _ = first_run
    first_log = sorted((cfg.output_dir / "logs").glob("run-*.log"))[0]
    epochs = cfg.trainer().train.epochs
    lines = [line for line in first_log.read_text().splitlines() if " Trainer epoch " in line]
    assert len(lines) == epochs, lines
    for k, line in enumerate(lines, start=1):
        assert f" INFO pipeline.runner Trainer epoch {k}/{epochs}: loss " in line, line
        assert ", val IoU " in line and " s/epoch, ETA " in line, line
    assert not list((cfg.output_dir / "logs").glob("*.progress"))  # removed once relayed


def test_tfma_reports_every_metric_on_both_splits_with_intervals(first_run):
    _, summary = first_run
    assert list(summary.evaluations) == ["scene", "eval"]
    for split, evaluation in summary.evaluations.items():
        for name in (
            "pixel_accuracy",
            "iou",
            "precision",
            "recall",
            "f1",
            "auc",
            "all_background_accuracy",
            "accuracy_gain",
            "mean_tile_iou",
            "facility_recall",
            "labelled_share",
            "predicted_share",
        ):
            assert name in evaluation.metrics, (split, sorted(evaluation.metrics))
            estimate = evaluation.metrics[name]
            if not np.isnan(estimate.value):
                assert -1.0 <= estimate.value <= 1.0, (split, name, estimate)
        iou = evaluation.metrics["iou"]
        assert iou.low is not None and iou.low <= iou.high, (split, iou)
    # The gate is judged on the scene split only; the eval tiles are reported.
    assert {g.metric for g in summary.evaluations["scene"].gates} >= {"iou", "pixel_accuracy"}
    assert summary.evaluations["eval"].gates == []
    lines = "\n".join(summary.lines())
    assert "scene split:" in lines and "eval split:" in lines and "gate iou >= 0" in lines


def test_scene_split_is_cut_from_the_eval_sites(first_run):
    cfg, summary = first_run
    run = metadata.load_run(metadata.open_store(str(cfg.metadata_path)), summary.run_id)
    examples = run.artifact(nodes.EXAMPLE_GEN, nodes.EXAMPLES)
    report = run.artifact(nodes.EXAMPLE_GEN, nodes.CONVERSION_REPORT)
    layout_file = Path(report.uri) / SCENE_LAYOUT_FILE
    layout = json.loads(layout_file.read_text())
    tiled = sorted(t for site in layout["sites"] for t in site["tiles"])
    eval_ids = sorted(row.pair_id for row in summary.evaluations["eval"].tiles)
    assert tiled == eval_ids and eval_ids  # every eval tile, and nothing else
    windows = sorted(row.pair_id for row in summary.evaluations["scene"].tiles)
    assert len(windows) == summary.scene_windows > len(eval_ids)
    assert all(w.startswith("site-") and "_y" in w for w in windows)
    files = sorted((Path(examples.uri) / "Split-scene").glob("*.gz"))
    assert len(files) == len(layout["sites"])
    # TFMA slices by site too: one slice per eval site, on both splits.
    sites = {s["site"] for s in layout["sites"]}
    assert set(summary.evaluations["scene"].sites) == sites
    assert set(summary.evaluations["eval"].sites) == sites
    lines = summary.lines()
    assert sum(1 for line in lines if line.startswith("  by site (")) == 2
    shown = {line.split()[0] for line in lines if line.split()[1:2] == ["IoU"]}
    assert shown == sites
    # Per-example rows are TFMA slices: shares of the wrong pixels add up to the whole split.
    for evaluation in summary.evaluations.values():
        total = sum(row.wrong_share for row in evaluation.tiles)
        assert total == pytest.approx(1.0) or total == 0.0


def _scored(cfg, run, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(label, probabilities) of each example of a split, as its Evaluator scored them: the
    eval tiles through the pushed model one by one; the scene windows from the ScenePredictor's
    examples, which must hold the served model's blended prediction of each site."""
    push = str(cfg.push_dir / "1")
    if split == nodes.SCENE_SPLIT:
        uri = run.artifact(nodes.SCENE_PREDICTOR, nodes.PREDICTIONS).uri
        files = sorted(Path(uri, f"Split-{split}").glob("*"))
        scored = {}
        for record in tf.data.TFRecordDataset([str(f) for f in files], compression_type="GZIP"):
            f = tf.train.Example.FromString(record.numpy()).features.feature
            label = np.array(f[scene_predictor_lib.LABEL].float_list.value).reshape(TILE, TILE)
            prob = np.array(f[scene_predictor_lib.PREDICTION].float_list.value).reshape(TILE, TILE)
            scored[f["pair_id"].bytes_list.value[0].decode()] = (label, prob)
        # One code path: the served model blended over each site gives the same numbers.
        raw = overlays.read_examples(run.artifact(nodes.EXAMPLE_GEN, nodes.EXAMPLES).uri, split)
        model, tile = scene_predictor_lib.load_window_model(push)
        canvases = scene_predictor_lib.assemble_sites(raw.values())
        for canvas in canvases:
            blended = blending.blend_scene(canvas.image, model, tile, cfg.scene_overlap)
            for window in canvas.windows:
                pair_id = window.example["pair_id"].bytes_list.value[0].decode()
                np.testing.assert_allclose(
                    scored[pair_id][1], canvas.cut(blended, window), atol=1e-5
                )
        return scored
    signature = tf.saved_model.load(push).signatures[trainer_lib.SERVING_DEFAULT]
    examples = run.artifact(nodes.EXAMPLE_GEN, nodes.EXAMPLES)
    scored = {}
    for pair_id, raw in overlays.read_examples(examples.uri, split).items():
        mask = decode_pair(raw).site_label  # what the Evaluators score (TrainConfig.labels)
        outputs = signature(**{trainer_lib.EXAMPLES_INPUT: tf.constant([raw])})
        scored[pair_id] = (mask, outputs[trainer_lib.PROBABILITIES].numpy()[0, ..., 0])
    return scored


def test_per_tile_rows_match_numpy_on_the_models_predictions(first_run):
    """TFMA's per-pair_id slices against numpy on the served model's own predictions (blended
    over each site for the scene split, as `tailings predict` predicts a scene)."""
    cfg, summary = first_run
    run = metadata.load_run(metadata.open_store(str(cfg.metadata_path)), summary.run_id)
    for split, evaluation in summary.evaluations.items():
        expected, wrong = {}, {}
        for pair_id, (mask, prob) in _scored(cfg, run, split).items():
            valid = mask != MASK_NODATA
            truth, predicted = valid & (mask == 1), valid & (prob > THRESHOLD)
            union = (truth | predicted).sum()
            iou = (truth & predicted).sum() / union if union else 0.0
            wrong[pair_id] = (truth != predicted).sum()
            expected[pair_id] = (truth.sum() / valid.sum(), predicted.sum() / valid.sum(), iou)
        assert sorted(expected) == sorted(row.pair_id for row in evaluation.tiles), split
        total = sum(wrong.values())
        for row in evaluation.tiles:
            labelled, predicted_share, iou = expected[row.pair_id]
            assert row.labelled_share == pytest.approx(labelled, abs=1e-6), row
            assert row.predicted_share == pytest.approx(predicted_share, abs=2e-3), row
            assert row.iou == pytest.approx(iou, abs=0.02), row
            if total:
                assert row.wrong_share == pytest.approx(wrong[row.pair_id] / total, abs=0.01)
        shares = [row.wrong_share for row in evaluation.tiles]
        assert shares == sorted(shares, reverse=True)  # worst first


def test_three_signatures_give_the_same_probabilities(first_run, tmp_path):
    cfg, _ = first_run
    model = tf.saved_model.load(str(cfg.push_dir / "1"))
    image_path, mask_path = make_pair(tmp_path / "i", tmp_path / "m", "x", (TILE, TILE), seed=99)
    pair = load_pair(PairSpec("x", str(image_path), str(mask_path)))
    serialized = tf.constant([to_example(pair).SerializeToString()])

    by_example = model.signatures[trainer_lib.SERVING_DEFAULT](examples=serialized)
    by_image = model.signatures[trainer_lib.PREDICT_IMAGE](images=tf.constant(pair.image[None]))
    transformed = model.signatures[trainer_lib.TRANSFORM_FEATURES](examples=serialized)
    p1 = next(iter(by_example.values())).numpy()
    p2 = next(iter(by_image.values())).numpy()
    assert p1.shape == (1, TILE, TILE, 1)
    np.testing.assert_allclose(p1, p2, atol=1e-5)
    assert "mask_xf" in transformed


def test_second_run_is_cached_and_pushes_nothing_new(first_run):
    cfg, first = first_run
    second = run_pipeline(cfg, say=lambda _m: None)
    assert second.exit_code == EXIT_BLESSED
    assert second.pushed_version == "1" and second.reused_version
    assert sorted(p.name for p in cfg.push_dir.iterdir()) == ["1"]
    store = metadata.open_store(str(cfg.metadata_path))
    run = metadata.load_run(store, second.run_id)
    for node in ("ExampleGen", "StatisticsGen", "Transform", "Trainer", "TileEvaluator"):
        assert run.nodes[node].state == "CACHED", (node, run.nodes[node].state)
    # What docs/pipeline.md says: the first run after a blessing evaluates the scene split once
    # more, now with the blessed model (here: the same model) as the no-regression baseline, whose
    # blended predictions the ScenePredictor adds ...
    assert run.nodes[nodes.SCENE_PREDICTOR].state == "COMPLETE"
    assert run.nodes[nodes.SCENE_EVALUATOR].state == "COMPLETE"
    # ... and the run after that reuses every component.
    third = run_pipeline(cfg, say=lambda _m: None)
    assert third.exit_code == EXIT_BLESSED and third.reused_version
    run = metadata.load_run(store, third.run_id)
    ran = {n: r.state for n, r in run.nodes.items() if r.state != "CACHED"}
    assert ran == {nodes.BASELINE_RESOLVER: "COMPLETE"}, ran  # a resolver always runs
    lines = "\n".join(list_runs(cfg))
    assert all(s.run_id in lines for s in (first, second, third))


def test_unreachable_threshold_pushes_nothing(first_run):
    cfg, _ = first_run
    strict = tiny_config(cfg.output_dir.parent, cfg.data_dir, min_iou=0.999)
    summary = run_pipeline(strict, say=lambda _m: None)
    assert summary.exit_code == EXIT_NOT_BLESSED and summary.blessed is False
    assert summary.pushed_version is None
    assert any(f.startswith("iou") for f in summary.failures), summary.failures
    assert summary.thresholds["iou"] == pytest.approx(0.999)  # what this run applied
    assert sorted(p.name for p in cfg.push_dir.iterdir()) == ["1"]
    assert any("NOT BLESSED" in line for line in summary.lines())


def _record_another_run(cfg: PipelineConfig, said: list[str]):
    """A `say` that, once the run's first component shows, records another pipeline run in the
    store, as a second `tailings run` on the same folder did before folders were locked."""

    def say(message: str) -> None:
        said.append(message)
        if not message.startswith("> ") or ANOTHER_RUN in said:
            return
        said.append(ANOTHER_RUN)
        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = str(cfg.metadata_path)
        config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
        for _ in range(100):  # TFX may be writing the store this very moment: try again
            try:
                store = metadata_store.MetadataStore(config)
                run_type = store.get_context_type(metadata.RUN_CONTEXT).id
                store.put_contexts([metadata_store_pb2.Context(type_id=run_type, name=ANOTHER_RUN)])
                return
            except Exception:  # noqa: BLE001 - "database is locked"
                time.sleep(0.1)

    return say


ANOTHER_RUN = "another-run"


def test_raw_digital_numbers_stop_the_run_before_training(tmp_path):
    """... and the summary is of this run, though another run was recorded after it started."""
    data = tmp_path / "data"
    for i in range(6):
        image, mask = scene(TILE, TILE, seed=i)
        make_pair(data / "img", data / "mask", str(i), image=image * 10000, mask=mask)
    cfg = tiny_config(tmp_path, data)
    said: list[str] = []
    summary = run_pipeline(cfg, say=_record_another_run(cfg, said))
    ids = metadata.run_ids(metadata.open_store(str(cfg.metadata_path)))
    assert ids[-1] == ANOTHER_RUN  # the newest run in the store is not this one
    assert said[0] == f"run {summary.run_id}" and summary.run_id in ids[:-1]
    assert summary.exit_code == EXIT_ANOMALIES
    assert any("band_mean" in a or "band_max" in a for a in summary.anomalies), summary.anomalies
    run = metadata.load_run(metadata.open_store(str(cfg.metadata_path)), summary.run_id)
    assert "Trainer" not in run.nodes and "Transform" not in run.nodes
    assert not cfg.push_dir.exists()


@pytest.mark.realdata
def test_real_data_smoke_run(real_data, tmp_path):
    """A few real pairs through the whole pipeline at 448 x 448, ImageNet encoder included."""
    data = tmp_path / "data"
    ids = sorted(p.stem[len("img_") :] for p in (real_data / "img").glob("img_*.tif"))[:12]
    for sub, prefix in (("img", "img_"), ("mask", "mask_")):
        (data / sub).mkdir(parents=True)
        for pair_id in ids:
            shutil.copy(real_data / sub / f"{prefix}{pair_id}.tif", data / sub)
    cfg = PipelineConfig(
        data_dir=data,
        output_dir=tmp_path / "outputs",
        serving_dir=tmp_path / "serving",
        trainer_override=TrainerConfig(
            # the default (pretrained EfficientNet-Lite0) encoder with a narrow decoder
            model=ModelConfig(decoder_widths=(8, 8, 8, 8), base_width=4),
            train=TrainConfig(epochs=1, batch_size=4),
        ),
        overrides=("train.batch_size=2",),  # as `tailings run --set` passes it
        thresholds=Thresholds(min_pixel_accuracy=0.0, min_iou=0.0),
    )
    said: list[str] = []
    summary = run_pipeline(cfg, say=said.append)
    assert summary.error is None, summary.error
    assert summary.anomalies == []
    assert {"pixel_accuracy", "iou", "f1"} <= set(summary.metrics)
    line = "Trainer: preset cpu (efficientnet_lite0"
    assert any(m.startswith(line) and "changed: train.batch_size=2" in m for m in said), said
    # The terminal: the Trainer's one epoch between its start and end lines, and each
    # Evaluator's start line saying what it does.
    trainer = [m for m in said if m.startswith(("> Trainer ", "  Trainer epoch", "< Trainer "))]
    assert len(trainer) == 3 and trainer[0] == "> Trainer ...", said
    assert trainer[1].startswith("  Trainer epoch 1/1: loss "), said
    assert trainer[2].startswith("< Trainer done in "), said
    for node, activity in nodes.ACTIVITIES.items():
        assert f"> {node} ... ({activity})" in said, said
    trained_with = json.loads(
        next(
            (cfg.pipeline_root / "Trainer" / "model_run").glob(f"*/{trainer_lib.CONFIG_FILE}")
        ).read_text()
    )
    assert trained_with["train"]["batch_size"] == 2
    # The pretrained encoder's export (the default encoder, with the default test-time
    # augmentation): both prediction signatures agree on real tiles, and `predict_image`
    # refuses sides that are not multiples of the network's size multiple.
    served = tf.saved_model.load(
        str(next((cfg.pipeline_root / "Trainer" / "model").glob("*/Format-Serving")))
    )
    pairs = [
        load_pair(
            PairSpec(i, str(data / "img" / f"img_{i}.tif"), str(data / "mask" / f"mask_{i}.tif"))
        )
        for i in ids[:3]
        if i != "23"  # the study's broken pair
    ][:2]
    examples = tf.constant([to_example(p).SerializeToString() for p in pairs])
    images = tf.constant(np.stack([p.image for p in pairs]))
    signatures = served.signatures
    by_example = signatures[trainer_lib.SERVING_DEFAULT](**{trainer_lib.EXAMPLES_INPUT: examples})
    by_image = signatures[trainer_lib.PREDICT_IMAGE](**{trainer_lib.IMAGES_INPUT: images})
    # the two paths normalise with float32 ops in a different order; 50 layers amplify it
    np.testing.assert_allclose(
        by_example[trainer_lib.PROBABILITIES].numpy(),
        by_image[trainer_lib.PROBABILITIES].numpy(),
        atol=2e-4,
    )
    multiple = ModelConfig.from_dict(trained_with["model"]).size_multiple
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"multiples of {multiple}"):
        served.signatures[trainer_lib.PREDICT_IMAGE](
            **{trainer_lib.IMAGES_INPUT: tf.zeros((1, 448 + multiple // 2, 448, 3))}
        )
    report = json.loads(
        next(
            (cfg.pipeline_root / "ExampleGen" / "conversion_report").glob("*/summary.json")
        ).read_text()
    )
    assert report["converted"] == len(ids) - ("23" in ids)
