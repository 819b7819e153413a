"""Score trained models on a run's eval tiles and scene windows with the Evaluator's own config.

The pipeline's Evaluators score one model per run. To compare models of one recipe (the
run-to-run spread that the no-regression tolerances come from) or of several recipes on the
same splits, this runs TFMA with exactly the pipeline's `eval_config` (metrics, per-tile
slices, bootstrap intervals) on each model and split, and writes one table.

    .venv/bin/python benchmarks/evaluate.py --examples outputs/pipeline/ExampleGen/examples/7 \
        --model run_a=/tmp/a/serving/tailings/1 --model run_b=/tmp/b/serving/tailings/1 \
        --out benchmarks/results/scene_eval

Models: any SavedModel the pipeline's Trainer exports (pushed version folders included).
Examples: an ExampleGen `examples` artifact folder (`Split-eval/`, `Split-scene/`).
Labels (`--labels site,own`): each split is scored against the site labels (`site`, the
pipeline's default) and/or each tile's own mask (`own`, shown as `<split>-own`; scene windows
hold their site's union in both masks, so `scene-own` equals `scene`).
Framing of the scene split: `scene` scores each window alone (the model run on it by TFMA);
`scene-blended` predicts each eval site whole, as `tailings predict` does and the pipeline's
ScenePredictor does for the scene Evaluator, and scores the same windows of the blended
prediction (site labels: the scene windows hold no other).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import _env  # noqa: F401  (environment before TensorFlow)

SPLITS = ("scene", "eval")
BLENDED = "scene-blended"  # the scene split predicted whole per site, then blended
SHOWN = (
    "iou",
    "pixel_accuracy",
    "all_background_accuracy",
    "accuracy_gain",
    "f1",
    "facility_recall",
    "facility_precision",
    "median_area_error_ha",
    "mean_tile_iou",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=Path, required=True, help="ExampleGen examples folder")
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="repeatable")
    p.add_argument("--splits", default=",".join(SPLITS), help="default: %(default)s")
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    p.add_argument("--labels", default="site", help="site, own or site,own (default: %(default)s)")
    args = p.parse_args(argv)
    models = {}
    for item in args.model:
        name, sep, folder = item.partition("=")
        if not sep or not Path(folder, "saved_model.pb").is_file():
            p.error(f"--model {item}: give NAME=DIR, DIR a SavedModel folder")
        models[name] = Path(folder)
    args.models = models
    args.splits = [s for s in args.splits.split(",") if s]
    args.labels = [x for x in args.labels.split(",") if x]
    if not args.labels or set(args.labels) - {"site", "own"}:
        p.error(f"--labels: site, own or both, got {args.labels}")
    for split in args.splits:
        if split == BLENDED:
            split = "scene"
        if not list((args.examples / f"Split-{split}").glob("*")):
            p.error(f"{args.examples}/Split-{split}: no example files")
    return args


def evaluate(model_dir: Path, files: str, split: str, labels: str = "site"):
    """TFMA with the pipeline's eval config (no gate: nothing to bless here), scoring the
    `labels` masks (`TrainConfig.labels`)."""
    import tensorflow_model_analysis as tfma

    from pipeline.config import PipelineConfig
    from pipeline.evaluation import load_evaluation
    from pipeline.pipeline import eval_config

    config = eval_config(PipelineConfig(overrides=(f"train.labels={labels}",)), gate=False)
    model = tfma.default_eval_shared_model(eval_saved_model_path=str(model_dir), eval_config=config)
    with tempfile.TemporaryDirectory() as out:
        tfma.run_model_analysis(
            eval_shared_model=model,
            eval_config=config,
            data_location=files,
            file_format="tfrecords",
            output_path=out,
        )
        return load_evaluation(out, split)


def evaluate_blended(model_dir: Path, files: str):
    """The scene split as the pipeline's scene Evaluator scores it: each eval site predicted
    whole and blended (`components.scene_predictor_lib`), then TFMA on the predictions."""
    import tensorflow as tf
    import tensorflow_model_analysis as tfma
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    from components.scene_predictor_lib import PREDICTION, SCHEMA_FILE, predict_split
    from pipeline.config import PipelineConfig
    from pipeline.evaluation import load_evaluation
    from pipeline.pipeline import eval_config

    config = eval_config(PipelineConfig(), gate=False, blended=True)
    with tempfile.TemporaryDirectory() as out:
        predict_split(tf.io.gfile.glob(files), {PREDICTION: str(model_dir)}, out, out)
        schema = text_format.Parse(Path(out, SCHEMA_FILE).read_text(), schema_pb2.Schema())
        model = tfma.default_eval_shared_model(
            eval_saved_model_path=str(model_dir), eval_config=config
        )
        tfma.run_model_analysis(
            eval_shared_model=model,
            eval_config=config,
            data_location=str(Path(out, "*.gz")),
            file_format="tfrecords",
            output_path=str(Path(out, "tfma")),
            schema=schema,
        )
        return load_evaluation(str(Path(out, "tfma")), "scene")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    results: dict = {"models": {}, "examples": str(args.examples)}
    for name, folder in args.models.items():
        results["models"][name] = {"path": str(folder)}
        for split, labels in ((s, x) for s in args.splits for x in args.labels):
            start = time.monotonic()
            if split == BLENDED:
                if labels != "site":
                    continue
                e = evaluate_blended(folder, str(args.examples / "Split-scene" / "*"))
            else:
                e = evaluate(folder, str(args.examples / f"Split-{split}" / "*"), split, labels)
            seconds = time.monotonic() - start
            shown = split if labels == "site" else f"{split}-own"
            results["models"][name][shown] = {
                "seconds": round(seconds, 1),
                "examples": len(e.tiles),
                "metrics": {
                    k: {"value": v.value, "low": v.low, "high": v.high}
                    for k, v in e.metrics.items()
                },
                "worst": [row.__dict__ for row in e.tiles[:5]],
            }
            print(f"{name} {shown}: iou {e.metrics['iou']} ({seconds:.0f} s)", file=sys.stderr)
    shown_splits = [
        s if x == "site" else f"{s}-own"
        for s in args.splits
        for x in args.labels
        if s != BLENDED or x == "site"
    ]
    results["spread"] = spread(results["models"], shown_splits)
    results["machine"] = {"python": platform.python_version(), "node": platform.node()}
    table = markdown(results, shown_splits)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(table + "\n")
    return 0


def spread(models: dict, splits: list[str]) -> dict:
    """Per split and metric: max - min over the models (the run-to-run spread)."""
    out: dict = {}
    for split in splits:
        for metric in SHOWN:
            values = [
                m[split]["metrics"][metric]["value"]
                for m in models.values()
                if metric in m[split]["metrics"]
            ]
            if len(values) > 1:
                out.setdefault(split, {})[metric] = max(values) - min(values)
    return out


def markdown(results: dict, splits: list[str]) -> str:
    lines = [f"Examples: `{results['examples']}`", ""]
    for split in splits:
        lines += [f"### {split} split", ""]
        lines.append("| model | examples | " + " | ".join(SHOWN) + " |")
        lines.append("|---" * (len(SHOWN) + 2) + "|")
        for name, m in results["models"].items():
            cells = []
            for metric in SHOWN:
                v = m[split]["metrics"].get(metric)
                if v is None:
                    cells.append("-")
                elif v["low"] is None:
                    cells.append(f"{v['value']:.3f}")
                else:
                    cells.append(f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]")
            lines.append(f"| {name} | {m[split]['examples']} | " + " | ".join(cells) + " |")
        if split in results["spread"]:
            cells = [f"{results['spread'][split].get(k, float('nan')):.3f}" for k in SHOWN]
            lines.append("| spread (max - min) | | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
