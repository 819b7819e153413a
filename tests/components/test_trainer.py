"""run_fn on a real TFT output: training artefacts, and three signatures that agree."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tfx.components.trainer.fn_args_utils import FnArgs

from components import metrics as M
from components import trainer_lib as TL
from components.config import ModelConfig, TrainConfig, TrainerConfig
from components.transform_lib import IMAGE_XF, MASK_XF
from schemas import features as F
from tests.components import synthetic

EPOCHS = 2
TINY = TrainerConfig(
    model=ModelConfig(encoder="unet", depth=2, base_width=4),
    train=TrainConfig(epochs=EPOCHS, batch_size=4, crop_size=16, max_figures=2),
)
ATOL = 1e-5
NODATA = np.full(3, -9.0, np.float32)  # a normalised no-data value no synthetic pixel has


def _run_fn(out: Path, transform_run, config: TrainerConfig) -> FnArgs:
    fn_args = FnArgs(
        train_files=[transform_run.transformed_files[synthetic.TRAIN]],
        eval_files=[transform_run.transformed_files[synthetic.EVAL]],
        transform_graph_path=transform_run.transform_output,
        transform_output=transform_run.transform_output,
        serving_model_dir=str(out / "serving_model"),
        model_run_dir=str(out / "model_run"),
        custom_config=json.loads(json.dumps(config.to_custom_config())),  # as TFX delivers it
    )
    TL.run_fn(fn_args)
    return fn_args


@pytest.fixture(scope="module")
def trained(tmp_path_factory, transform_run) -> FnArgs:
    return _run_fn(tmp_path_factory.mktemp("trainer"), transform_run, TINY)


@pytest.fixture(scope="module")
def served(trained):
    return tf.saved_model.load(trained.serving_model_dir)


@pytest.fixture(scope="module")
def eval_batch(raw_splits, transform_config) -> tuple[tf.Tensor, np.ndarray, np.ndarray]:
    instances = raw_splits[synthetic.EVAL]
    tile = transform_config.tile_size
    examples = tf.constant([synthetic.serialize(i) for i in instances])
    images = np.stack(
        [np.frombuffer(i[F.IMAGE], F.IMAGE_DTYPE).reshape(tile, tile, 3) for i in instances]
    )
    masks = np.stack(
        [np.frombuffer(i[F.MASK], F.MASK_DTYPE).reshape(tile, tile, 1) for i in instances]
    )
    return examples, images, masks


def test_run_dir_has_history_curves_and_figures(trained) -> None:
    run_dir = Path(trained.model_run_dir)
    history = json.loads((run_dir / TL.HISTORY_FILE).read_text())
    for name in ("loss", M.PIXEL_ACCURACY, M.IOU, M.F1, M.AUC):
        assert len(history[name]) == len(history[f"val_{name}"]) == EPOCHS
    assert (run_dir / TL.CURVES_FILE).stat().st_size > 0
    figures = sorted(os.listdir(run_dir / TL.FIGURES_DIR))
    assert len(figures) == TINY.train.max_figures
    assert all(name.endswith(".png") for name in figures)
    saved_config = json.loads((run_dir / TL.CONFIG_FILE).read_text())
    assert TrainerConfig.from_custom_config(saved_config) == TINY
    assert any(name.startswith("events.out") for _, _, files in os.walk(run_dir) for name in files)


def test_signatures_agree_on_the_same_image(served, eval_batch, transform_config) -> None:
    examples, images, _ = eval_batch
    assert set(served.signatures) == {TL.SERVING_DEFAULT, TL.TRANSFORM_FEATURES, TL.PREDICT_IMAGE}
    from_examples = served.signatures[TL.SERVING_DEFAULT](**{TL.EXAMPLES_INPUT: examples})
    from_pixels = served.signatures[TL.PREDICT_IMAGE](**{TL.IMAGES_INPUT: tf.constant(images)})
    a, b = from_examples[TL.PROBABILITIES].numpy(), from_pixels[TL.PROBABILITIES].numpy()
    tile = transform_config.tile_size
    assert a.shape == b.shape == (len(images), tile, tile, 1)
    assert np.all((a >= 0) & (a <= 1))
    np.testing.assert_allclose(a, b, atol=ATOL)


def test_serving_needs_only_the_image(served, eval_batch, raw_splits) -> None:
    examples, _, _ = eval_batch
    image_only = [{F.IMAGE: i[F.IMAGE]} for i in raw_splits[synthetic.EVAL]]
    minimal = tf.constant([synthetic.serialize(i) for i in image_only])
    serve = served.signatures[TL.SERVING_DEFAULT]
    full = serve(**{TL.EXAMPLES_INPUT: examples})[TL.PROBABILITIES].numpy()
    bare = serve(**{TL.EXAMPLES_INPUT: minimal})[TL.PROBABILITIES].numpy()
    np.testing.assert_allclose(full, bare, atol=ATOL)


def test_transform_features_feeds_tfma_the_label(served, eval_batch) -> None:
    examples, images, masks = eval_batch
    transformed = served.signatures[TL.TRANSFORM_FEATURES](**{TL.EXAMPLES_INPUT: examples})
    np.testing.assert_array_equal(transformed[MASK_XF].numpy(), masks.astype(np.float32))
    assert transformed[IMAGE_XF].shape == images.shape
    from_pixels = served.signatures[TL.PREDICT_IMAGE](**{TL.IMAGES_INPUT: tf.constant(images)})
    probabilities = served.signatures[TL.SERVING_DEFAULT](**{TL.EXAMPLES_INPUT: examples})
    np.testing.assert_allclose(
        from_pixels[TL.PROBABILITIES].numpy(), probabilities[TL.PROBABILITIES].numpy(), atol=ATOL
    )


def test_predict_image_takes_other_sizes(served, eval_batch) -> None:
    _, images, _ = eval_batch
    bigger = np.tile(images[:1], (1, 2, 3, 1))  # 64 x 96, both multiples of 2**depth
    out = served.signatures[TL.PREDICT_IMAGE](**{TL.IMAGES_INPUT: tf.constant(bigger)})
    assert out[TL.PROBABILITIES].shape == (1, 64, 96, 1)


@pytest.mark.parametrize(
    "shape",
    [(1, 50, 64, 3), (64, 3)],
)
def test_predict_image_says_what_is_wrong_with_a_bad_shape(served, shape) -> None:
    expected = r"must be \[N, H, W, 3\] with H and W multiples of 8"
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
        served.signatures[TL.PREDICT_IMAGE](**{TL.IMAGES_INPUT: tf.zeros(shape)})


def test_tfma_matches_keras_metrics(trained, served, eval_batch, tmp_path) -> None:
    """The TFMA wiring the pipeline uses: transform_features for the label, our metrics."""
    import tensorflow_model_analysis as tfma

    examples, _, _ = eval_batch
    data = str(tmp_path / "eval.tfrecord")
    with tf.io.TFRecordWriter(data) as writer:
        for example in examples.numpy():
            writer.write(example)
    eval_config = tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name=TL.SERVING_DEFAULT,
                preprocessing_function_names=[TL.TRANSFORM_FEATURES],
                label_key=MASK_XF,
            )
        ],
        metrics_specs=[tfma.MetricsSpec(metrics=M.tfma_metric_configs())],
        slicing_specs=[tfma.SlicingSpec()],
    )
    model = tfma.default_eval_shared_model(
        eval_saved_model_path=trained.serving_model_dir, eval_config=eval_config
    )
    result = tfma.run_model_analysis(
        eval_shared_model=model,
        eval_config=eval_config,
        data_location=data,
        output_path=str(tmp_path / "tfma"),
    )
    ((_, by_name),) = result.slicing_metrics
    values = {name: v["doubleValue"] for name, v in by_name[""][""].items()}
    assert values["example_count"] == len(examples.numpy())

    probabilities = served.signatures[TL.SERVING_DEFAULT](**{TL.EXAMPLES_INPUT: examples})
    labels = served.signatures[TL.TRANSFORM_FEATURES](**{TL.EXAMPLES_INPUT: examples})[MASK_XF]
    for metric_class, name in M.PIXEL_METRICS:
        metric = metric_class()
        metric.update_state(labels, probabilities[TL.PROBABILITIES])
        assert values[name] == pytest.approx(float(metric.result()), rel=1e-5, abs=1e-6), name


def test_augment_keeps_image_and_mask_aligned() -> None:
    rng = np.random.default_rng(0)
    mask = (rng.random((32, 32, 1)) > 0.5).astype(np.float32)
    image = np.concatenate([mask, 2 * mask, 3 * mask], axis=-1)  # the mask, drawn into pixels
    config = TrainConfig(crop_size=16, augment_color=0.0)  # pixel values stay the mask's
    for seed in range(8):
        out_image, out_mask = TL.augment(
            tf.constant(image), tf.constant(mask), tf.constant([seed, 7]), config
        )
        assert out_image.shape == (16, 16, 3) and out_mask.shape == (16, 16, 1)
        np.testing.assert_array_equal(out_image.numpy()[..., :1], out_mask.numpy())
        np.testing.assert_array_equal(out_image.numpy()[..., 2:] / 3, out_mask.numpy())


def test_augment_off_is_identity() -> None:
    image = np.random.rand(8, 8, 3).astype(np.float32)
    mask = (image[..., :1] > 0.5).astype(np.float32)
    config = TrainConfig(augment_flip=False, augment_rot90=False, crop_size=None, augment_color=0)
    out_image, out_mask = TL.augment(
        tf.constant(image), tf.constant(mask), tf.constant([1, 2]), config
    )
    np.testing.assert_array_equal(out_image.numpy(), image)
    np.testing.assert_array_equal(out_mask.numpy(), mask)


def test_band_jitter_is_one_gain_and_offset_per_band_on_top_of_the_same_geometry() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(16, 16, 3)).astype(np.float32)
    mask = (image[..., :1] > 0).astype(np.float32)
    seed = tf.constant([3, 4])
    plain = TrainConfig(augment_color=0.0)
    plain_image, plain_mask = TL.augment(tf.constant(image), tf.constant(mask), seed, plain)
    config = TrainConfig(augment_color=0.2)
    jittered, jittered_mask = TL.augment(tf.constant(image), tf.constant(mask), seed, config)
    np.testing.assert_array_equal(jittered_mask.numpy(), plain_mask.numpy())
    for band in range(3):  # an exact affine map of the same pixels, different per band
        x, y = plain_image.numpy()[..., band].ravel(), jittered.numpy()[..., band].ravel()
        gain, offset = np.polyfit(x, y, 1)
        np.testing.assert_allclose(gain * x + offset, y, atol=1e-5)
        assert abs(gain - 1) > 1e-3 or abs(offset) > 1e-3
    again, _ = TL.augment(tf.constant(image), tf.constant(mask), seed, config)
    np.testing.assert_array_equal(again.numpy(), jittered.numpy())  # reproducible
    # and inside tf.data's graph, as training runs it
    pairs = tf.data.Dataset.from_tensor_slices((image[None], mask[None]))
    (batch, batch_mask), *_ = list(
        TL.batch_pairs(pairs, config, training=True, nodata_image=NODATA)
    )
    assert batch.shape == (1, 16, 16, 3) and batch_mask.shape == (1, 16, 16, 1)


def test_rescale_zooms_image_and_mask_together_and_keeps_the_tile_size() -> None:
    mask = np.zeros((32, 32, 1), np.float32)
    mask[8:24, 8:24] = 1  # a 16x16 facility: a quarter of the tile
    image = np.concatenate([mask, 1 - mask, np.full_like(mask, 0.5)], axis=-1)
    config = TrainConfig(augment_scale=0.5, augment_flip=False, augment_rot90=False)
    config = dataclasses.replace(config, augment_color=0.0)
    fractions = []
    for seed in range(16):
        out_image, out_mask = TL.augment(
            tf.constant(image), tf.constant(mask), tf.constant([seed, 5]), config
        )
        assert out_image.shape == (32, 32, 3) and out_mask.shape == (32, 32, 1)
        assert set(np.unique(out_mask.numpy())) <= {0.0, 1.0}
        # the same interpolation moved both: the image's mask-band rounds to the mask
        np.testing.assert_array_equal(np.round(out_image.numpy()[..., :1]), out_mask.numpy())
        fractions.append(float(out_mask.numpy().mean()))
    # zoomed in and out: the facility covers more and less than its quarter (or is mirrored)
    assert min(fractions) < 0.2 < 0.3 < max(fractions)
    # and inside tf.data's graph, as training runs it
    pairs = tf.data.Dataset.from_tensor_slices((image[None], mask[None]))
    (batch, batch_mask), *_ = list(
        TL.batch_pairs(pairs, config, training=True, nodata_image=NODATA)
    )
    assert batch.shape == (1, 32, 32, 3) and batch_mask.shape == (1, 32, 32, 1)


def _numbered_tiles(count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Tiles whose pixels say which tile and where they are: band 0 = tile number, bands 1-2 =
    row and column; the mask marks a centred square (a facility, as in the study's tiles)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.stack(
        [np.stack([np.full_like(rows, k), rows, cols], axis=-1) for k in range(count)]
    )
    masks = np.zeros((count, size, size, 1), np.float32)
    for k in range(count):  # tile k: a centred square, a little larger with each tile
        low, high = size // 2 - 1 - k % (size // 2 - 1), size // 2 + 1 + k % (size // 2 - 1)
        masks[k, low:high, low:high] = 1
    return images, masks


def test_mosaic_window_is_a_window_of_the_tiles_laid_on_a_grid() -> None:
    size = 8
    images, masks = _numbered_tiles(4, size)
    config = TrainConfig(mosaic="grid", mosaic_empty=0.0)
    cells = np.concatenate([images, masks], -1)  # image bands then the mask
    grid = np.concatenate(  # the 2 x 2 mosaic, row by row
        [np.concatenate([cells[0], cells[1]], axis=1), np.concatenate([cells[2], cells[3]], axis=1)]
    )
    origins = set()
    for seed in range(24):
        image, mask = TL.mosaic_window(
            tf.constant(images), tf.constant(masks), tf.constant([seed, 3]), config, NODATA
        )
        assert image.shape == (size, size, 3) and mask.shape == (size, size, 1)
        window = np.concatenate([image.numpy(), mask.numpy()], -1)
        # where the window's first pixel came from, read from its own tile/row/column bands
        k, row, col = (int(v) for v in window[0, 0, :3])
        y, x = (k // 2) * size + row, (k % 2) * size + col
        np.testing.assert_array_equal(window, grid[y : y + size, x : x + size])
        origins.add((y, x))
    assert len(origins) > 12  # anywhere in the mosaic, not at the tiles' own positions only
    assert {(0, 0), (0, size), (size, 0), (size, size)} != origins


def test_random_mosaic_is_four_crops_of_four_tiles_around_a_random_centre() -> None:
    size = 16
    images, masks = _numbered_tiles(4, size)
    config = TrainConfig(mosaic="random", mosaic_empty=0.0)
    centres = set()
    for seed in range(24):
        image, mask = TL.mosaic_window(
            tf.constant(images), tf.constant(masks), tf.constant([seed, 5]), config, NODATA
        )
        image, mask = image.numpy(), mask.numpy()
        assert image.shape == (size, size, 3) and mask.shape == (size, size, 1)
        tile = image[..., 0]
        cy = int(np.argmax(tile[:, 0] != tile[0, 0]))  # first row of the bottom parts
        cx = int(np.argmax(tile[0, :] != tile[0, 0]))  # first column of the right parts
        assert size // 4 <= cy <= size - size // 4 and size // 4 <= cx <= size - size // 4
        centres.add((cy, cx))
        parts = (np.s_[:cy, :cx], np.s_[:cy, cx:], np.s_[cy:, :cx], np.s_[cy:, cx:])
        for k, part in enumerate(parts):
            np.testing.assert_array_equal(tile[part], k)  # part k comes from tile k ...
            rows, cols = image[part][..., 1], image[part][..., 2]
            # ... as one contiguous crop of it, the mask cut from the same place
            height, width = rows.shape
            expected_rows = rows[0, 0] + np.arange(height)[:, None] + np.zeros((1, width))
            np.testing.assert_array_equal(rows, expected_rows)
            expected_cols = cols[0, 0] + np.arange(width)[None] + np.zeros((height, 1))
            np.testing.assert_array_equal(cols, expected_cols)
            source = masks[k, int(rows[0, 0]) :, int(cols[0, 0]) :][
                : rows.shape[0], : cols.shape[1]
            ]
            np.testing.assert_array_equal(mask[part], source)
    assert len(centres) > 8


@pytest.mark.parametrize("mode", ["grid", "random"])
def test_mosaic_cells_without_data_are_the_nodata_value_and_background(mode) -> None:
    images, masks = _numbered_tiles(4, 8)
    config = TrainConfig(mosaic=mode, mosaic_empty=0.999)
    image, mask = TL.mosaic_window(
        tf.constant(images), tf.constant(masks), tf.constant([0, 1]), config, NODATA
    )
    np.testing.assert_array_equal(image.numpy(), np.broadcast_to(NODATA, (8, 8, 3)))
    assert not mask.numpy().any()


@pytest.mark.parametrize("mode", ["grid", "random"])
def test_mosaic_windows_one_pass_is_one_window_per_tile_with_facilities_anywhere(mode) -> None:
    size = 16
    images, masks = _numbered_tiles(6, size)
    config = TrainConfig(mosaic=mode, mosaic_empty=0.1, augment_color=0.0, batch_size=3)
    tiles = tf.data.Dataset.from_tensor_slices((images, masks))
    batches = list(TL.batch_pairs(tiles, config, training=True, nodata_image=NODATA))
    assert [int(b[0].shape[0]) for b in batches] == [3, 3]  # 6 tiles -> 6 windows
    shares = []
    for _ in range(8):  # passes are reshuffled
        for batch_images, batch_masks in TL.batch_pairs(
            tiles, config, training=True, nodata_image=NODATA
        ):
            shares.extend(batch_masks.numpy().mean(axis=(1, 2, 3)))
            valid = batch_images.numpy()[..., 0] != NODATA[0]
            assert valid.any(axis=(1, 2)).sum() >= 1
    # whole tiles hold one of 6 facility shares; windows cut facilities at their edge
    whole = {round(float(m.mean()), 4) for m in masks}
    assert len({round(float(s), 4) for s in shares} - whole) >= 3


def test_mosaic_needs_the_nodata_value_when_cells_may_be_empty() -> None:
    images, masks = _numbered_tiles(4, 8)
    tiles = tf.data.Dataset.from_tensor_slices((images, masks))
    with pytest.raises(ValueError, match="no-data value"):
        TL.batch_pairs(tiles, TrainConfig(mosaic="random", mosaic_empty=0.1), training=True)
    # without empty cells it is not needed
    TL.batch_pairs(tiles, TrainConfig(mosaic="random", mosaic_empty=0.0), training=True)


def test_nodata_value_is_zero_reflectance_normalised() -> None:
    mean, std = np.array([0.1, 0.2, 0.3], np.float32), np.array([0.05, 0.1, 0.2], np.float32)
    np.testing.assert_allclose(TL.nodata_value(mean, std), [-2.0, -2.0, -1.5], rtol=1e-6)


def test_rescale_by_one_is_identity() -> None:
    image = np.random.default_rng(1).random((16, 16, 4)).astype(np.float32)
    out = TL.rescale(tf.constant(image), tf.constant([1, 2]), strength=1e-7)
    np.testing.assert_allclose(out.numpy(), image, atol=1e-6)


def test_display_rgb_reverses_band_order() -> None:
    reflectance = np.zeros((4, 4, 3), np.float32)
    reflectance[..., 2] = np.linspace(0, 1, 16).reshape(4, 4)  # B4 (red) varies, rest constant
    rgb = TL.to_display_rgb(reflectance)
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert rgb[..., 0].std() > 0 and rgb[..., 2].std() == 0


@pytest.mark.parametrize("ema_momentum", [None, 0.999999])
def test_weight_averaging_exports_the_average(ema_momentum) -> None:
    """With an (almost) frozen average the trained weights stay at their start; without, not."""
    config = TrainerConfig(
        model=ModelConfig(encoder="unet", depth=1, base_width=2, batch_norm=False, dropout=0.0),
        train=TrainConfig(epochs=3, batch_size=2, learning_rate=0.05, ema_momentum=ema_momentum),
    )
    model = TL.compile_model(config)
    start = [w.copy() for w in model.get_weights()]
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    masks = (images[..., :1] > 0).astype(np.float32)
    model.fit(images, masks, batch_size=2, epochs=3, verbose=0)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(model.get_weights(), start, strict=True))
    if ema_momentum is None:
        assert moved > 1e-2
    else:
        assert moved < 1e-3


def test_pretrained_encoder_trains_and_exports(tmp_path, transform_run, eval_batch) -> None:
    """An ImageNet encoder through run_fn: exported, and its signatures agree. (The default
    encoder, EfficientNet-Lite0, goes through the same checks in the real-data pipeline run,
    tests/pipeline/test_pipeline.py::test_real_data_smoke_run, which exports it anyway.)"""
    config = TrainerConfig(
        model=ModelConfig(
            encoder="mobilenet_v2",
            decoder_widths=(8, 8, 8, 8),
            base_width=4,
            input_downsample=1,
            # flips are tested on their own (test_test_time_augmentation_is_in_every_signature);
            # without them, exports of two encoders took 149 s instead of 188 s (quiet machine)
            test_time_augmentation="none",
        ),
        train=TrainConfig(epochs=1, batch_size=4, max_figures=0),
    )
    served = tf.saved_model.load(_run_fn(tmp_path, transform_run, config).serving_model_dir)
    examples, images, _ = eval_batch
    from_examples = served.signatures[TL.SERVING_DEFAULT](**{TL.EXAMPLES_INPUT: examples})
    from_pixels = served.signatures[TL.PREDICT_IMAGE](**{TL.IMAGES_INPUT: tf.constant(images)})
    # the two paths normalise with float32 ops in a different order; 50 layers amplify it
    np.testing.assert_allclose(
        from_examples[TL.PROBABILITIES].numpy(), from_pixels[TL.PROBABILITIES].numpy(), atol=2e-4
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiples of 32"):
        served.signatures[TL.PREDICT_IMAGE](**{TL.IMAGES_INPUT: tf.zeros((1, 48, 64, 3))})


def test_batch_norm_recalibration_averages_each_batch_and_skips_frozen_layers() -> None:
    x = keras.Input((4, 4, 2))
    frozen = keras.layers.BatchNormalization(momentum=0.9, name="frozen")
    fitted = keras.layers.BatchNormalization(momentum=0.9, name="fitted")
    model = keras.Model(x, fitted(frozen(x)))
    frozen.trainable = False
    fitted.moving_mean.assign([100.0, 100.0])
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc, 2.0, size=(64, 4, 4, 2)).astype(np.float32) for loc in (1.0, 3.0)]
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.concatenate(batches), np.zeros((128, 4, 4, 1), np.float32))
    ).batch(64)
    assert TL.recalibrate_batch_norm(model, dataset) == 1
    # the frozen layer passes inputs through (mean 0, variance 1): the average of batch means
    want = np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0)
    np.testing.assert_allclose(fitted.moving_mean.numpy(), want, rtol=1e-3)
    assert np.all(np.abs(fitted.moving_variance.numpy() - 4.0) < 0.5)
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), [0.0, 0.0])
    assert fitted.momentum == 0.9


def test_cosine_schedule_decays_from_the_learning_rate() -> None:
    config = TrainConfig(epochs=10, learning_rate=1e-3, lr_schedule="cosine")
    rates = [TL.scheduled_learning_rate(config, epoch) for epoch in range(10)]
    assert rates[0] == pytest.approx(1e-3) and rates[5] == pytest.approx(5e-4)
    assert all(a > b for a, b in zip(rates[:-1], rates[1:], strict=True)) and rates[-1] > 0
    constant = TrainConfig(epochs=10, learning_rate=1e-3)
    assert {TL.scheduled_learning_rate(constant, e) for e in range(10)} == {1e-3}
    assert len(TL.fit_callbacks(constant)) == 1


def test_fit_applies_the_schedule() -> None:
    config = TrainerConfig(
        model=ModelConfig(encoder="unet", depth=1, base_width=2),
        train=TrainConfig(epochs=4, batch_size=2, learning_rate=1e-3, lr_schedule="cosine"),
    )
    model = TL.compile_model(config)
    images = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
    history = model.fit(
        images,
        (images[..., :1] > 0).astype(np.float32),
        validation_data=(images, (images[..., :1] > 0).astype(np.float32)),
        batch_size=2,
        epochs=4,
        callbacks=TL.fit_callbacks(config.train),
        verbose=0,
    )
    want = [TL.scheduled_learning_rate(config.train, e) for e in range(4)]
    np.testing.assert_allclose(history.history["lr"], want, rtol=1e-6)


def test_test_time_augmentation_is_in_every_signature(tmp_path, transform_run, eval_batch) -> None:
    """TFMA (serving_default) and clients (predict_image) both get the averaged answer."""
    config = dataclasses.replace(
        TINY, model=dataclasses.replace(TINY.model, test_time_augmentation="d4")
    )
    fn_args = _run_fn(tmp_path, transform_run, config)
    served = tf.saved_model.load(fn_args.serving_model_dir)
    examples, images, _ = eval_batch
    from_examples = served.signatures[TL.SERVING_DEFAULT](**{TL.EXAMPLES_INPUT: examples})
    from_pixels = served.signatures[TL.PREDICT_IMAGE](**{TL.IMAGES_INPUT: tf.constant(images)})
    got = from_pixels[TL.PROBABILITIES].numpy()
    np.testing.assert_allclose(from_examples[TL.PROBABILITIES].numpy(), got, atol=ATOL)
    # d4 averaging: a quarter-turned image gets the quarter-turned answer
    turned = served.signatures[TL.PREDICT_IMAGE](
        **{TL.IMAGES_INPUT: tf.constant(np.rot90(images, axes=(1, 2)).copy())}
    )[TL.PROBABILITIES].numpy()
    np.testing.assert_allclose(turned, np.rot90(got, axes=(1, 2)), atol=ATOL)


def test_finish_training_recalibrates_on_at_most_the_capped_batches() -> None:
    x = keras.Input((2, 2, 1))
    norm = keras.layers.BatchNormalization(momentum=0.9)
    model = keras.Model(x, norm(x))
    images = np.concatenate([np.full((8, 2, 2, 1), 1.0), np.full((8, 2, 2, 1), 5.0)])
    dataset = tf.data.Dataset.from_tensor_slices(
        (images.astype(np.float32), np.zeros_like(images, np.float32))
    ).batch(8)
    TL.finish_training(model, TrainConfig(recalibration_batches=1), dataset)
    np.testing.assert_allclose(norm.moving_mean.numpy(), [1.0])  # the second batch unread
    TL.finish_training(model, TrainConfig(recalibration_batches=2), dataset)
    np.testing.assert_allclose(norm.moving_mean.numpy(), [3.0])
    norm.moving_mean.assign([7.0])
    TL.finish_training(model, TrainConfig(ema_momentum=None), dataset)  # no average: untouched
    np.testing.assert_allclose(norm.moving_mean.numpy(), [7.0])


# --- mosaic="sites": windows drawn over merged sites ----------------------------------------


def _site_tiles(size: int = 16):
    """Two tiles of one site (overlapping, 6 pixels apart) and a tile of another site."""
    from data.pairs import GeoPair
    from data.sites import shifted

    origin = (10.0, 0.0, 500000.0, 0.0, -10.0, 7000000.0)
    wkt = synthetic.UTM_23S_WKT.decode()
    tiles = []
    for pair_id, site, (rows, cols), value in (
        ("a", "site-a", (0, 0), 1.0),
        ("b", "site-a", (6, 6), 2.0),
        ("c", "site-c", (0, 500), 3.0),
    ):
        image = np.full((size, size, 3), value, np.float32)
        mask = np.zeros((size, size), np.uint8)
        mask[2:6, 2:6] = 1
        tiles.append(
            GeoPair(
                pair_id,
                image,
                mask,
                F.BAND_ORDER,
                wkt,
                0,
                shifted(origin, rows=rows, cols=cols),
                site_id=site,
            )
        )
    return tiles


def test_site_windows_come_from_merged_sites_and_mark_no_data() -> None:
    from data.sites import merge_site

    tiles = _site_tiles()
    sites = [merge_site("site-a", tiles[:2]), merge_site("site-c", tiles[2:])]
    assert sites[0].label.shape == (22, 22)  # two 16-px tiles 6 px apart, one grid
    sampler = TL.SiteWindowSampler(sites, size=16, count=50, seed=1, background=0.0, fill=NODATA)
    windows = list(sampler())
    assert len(windows) == 50  # one pass
    reach = int(16 * TL.SITE_OVERHANG)
    for image, label in windows:
        nodata = label[..., 0] == F.MASK_NODATA
        np.testing.assert_array_equal(image[nodata], np.broadcast_to(NODATA, image[nodata].shape))
        assert set(np.unique(image[~nodata][:, 0])) <= {1.0, 2.0, 3.0}
        # within the site but for the overhang: each side keeps at least 16 - 2 * reach pixels
        assert (~nodata).any(axis=1).sum() >= 16 - 2 * reach
    values = set()
    for image, label in windows:
        values |= set(np.unique(image[label[..., 0] != F.MASK_NODATA][:, 0]).tolist())
    assert values == {1.0, 2.0, 3.0}  # both sites drawn, and both tiles of the first
    again = list(TL.SiteWindowSampler(sites, 16, 50, 1, 0.0, NODATA)())
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(windows, again, strict=True))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(windows, sampler(), strict=True))


def test_site_background_windows_hold_no_tailings_where_there_is_room() -> None:
    from data.sites import merge_site

    tiles = _site_tiles(size=32)  # tailings in 4 x 4 of 32 x 32: room for a window without
    sites = [merge_site("site-c", tiles[2:])]
    sampler = TL.SiteWindowSampler(sites, size=16, count=40, seed=3, background=1.0, fill=NODATA)
    assert not any((label == 1).any() for _image, label in sampler())
    anywhere = TL.SiteWindowSampler(sites, 16, 40, 3, 0.0, NODATA)
    assert any((label == 1).any() for _image, label in anywhere())


def test_losses_skip_no_data_pixels() -> None:
    rng = np.random.default_rng(0)
    y_true = (rng.random((2, 8, 8, 1)) > 0.7).astype(np.float32)
    y_pred = rng.uniform(0.05, 0.95, (2, 8, 8, 1)).astype(np.float32)
    marked = y_true.copy()
    marked[:, :, 5:] = F.MASK_NODATA
    for loss in (M.bce, M.bce_dice, M.bce_batch_dice):
        left = loss(tf.constant(y_true[:, :, :5]), tf.constant(y_pred[:, :, :5])).numpy()
        np.testing.assert_allclose(
            loss(tf.constant(marked), tf.constant(y_pred)).numpy(), left, rtol=1e-5
        )
        whole = loss(tf.constant(y_true), tf.constant(y_pred)).numpy()
        assert not np.allclose(whole, left)


def test_site_windows_train_through_run_fn(tmp_path, transform_run) -> None:
    config = dataclasses.replace(
        TINY, train=dataclasses.replace(TINY.train, mosaic="sites", crop_size=None)
    )
    fn_args = _run_fn(tmp_path, transform_run, config)
    history = json.loads(Path(fn_args.model_run_dir, TL.HISTORY_FILE).read_text())
    assert len(history["loss"]) == EPOCHS and all(np.isfinite(history["loss"]))
    assert Path(fn_args.serving_model_dir, "saved_model.pb").is_file()


def test_site_windows_need_site_labels() -> None:
    with pytest.raises(ValueError, match='needs labels="site"'):
        TrainConfig(mosaic="sites", labels="own")
