"""Which tiles cover the same ground, and on which side of the splits they fall.

    .venv/bin/python benchmarks/overlap.py [--data DIR] [--folds 4]

Reads only the GeoTIFF headers (rasterio) of the pairs conversion accepts. Two tiles overlap
when their footprints intersect; the share is the intersection over one tile's area (all
tiles are 448 x 448 px of ~10 m). The train/eval split (`ShardPlan` as the pipeline uses it)
and the folds of `benchmarks/quality.py` / `tailings labels review` (`fold_of`) are cut by a
hash of the site id (`data.sites`), so overlapping tiles land on one side: this benchmark
checks that no overlapping pair straddles a split or a fold. (Until December 2026 they were
cut by pair id, and 14 of the 17 eval tiles shared ground with a train tile.) Results:
benchmarks/results/overlap.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from _env import DEFAULT_DATA, RESULTS  # sets the environment first

DEFAULT_OUT = RESULTS / "overlap.json"


def overlap_share(a, b) -> float:  # noqa: ANN001 (rasterio BoundingBox)
    width = min(a.right, b.right) - max(a.left, b.left)
    height = min(a.top, b.top) - max(a.bottom, b.bottom)
    return max(width, 0.0) * max(height, 0.0) / ((a.right - a.left) * (a.top - a.bottom))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    import rasterio

    from components.cross_validation import fold_of
    from data.config import PairingConfig, SplitConfig
    from data.convert import ShardPlan
    from data.pairs import GeoPair, discover_pairs, validate
    from data.sites import plan_sites

    split = SplitConfig()
    specs = discover_pairs(args.data / "img", args.data / "mask", PairingConfig())
    sites = plan_sites(specs)
    plan = ShardPlan(shards=split.shards, splits=split.splits, sites=dict(sites.site_of))
    bounds, crs = {}, set()
    for spec in specs:
        if isinstance(validate(spec), GeoPair):
            with rasterio.open(spec.image) as src:
                bounds[spec.pair_id] = src.bounds
                crs.add(src.crs.to_string())
    if len(crs) != 1:
        print(f"tiles in {len(crs)} CRSs; footprints compared as they are", file=sys.stderr)
    rows = []
    for a, b in itertools.combinations(sorted(bounds), 2):
        share = max(overlap_share(bounds[a], bounds[b]), overlap_share(bounds[b], bounds[a]))
        if share > 0:
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "share": round(share, 3),
                    "split_a": plan.key(a)[0],
                    "split_b": plan.key(b)[0],
                    "fold_a": fold_of(plan.site(a), args.folds),
                    "fold_b": fold_of(plan.site(b), args.folds),
                }
            )
    rows.sort(key=lambda r: -r["share"])
    in_any = {r["a"] for r in rows} | {r["b"] for r in rows}
    cross_split = [r for r in rows if r["split_a"] != r["split_b"]]
    eval_ids = {i for i in bounds if plan.key(i)[0] == "eval"}
    eval_touched = {r[side] for r in cross_split for side in ("a", "b") if r[side] in eval_ids}
    result = {
        "tiles": len(bounds),
        "sites": len({plan.site(i) for i in bounds}),
        "overlapping_pairs": len(rows),
        "tiles_overlapping_another": len(in_any),
        "cross_train_eval_pairs": len(cross_split),
        "eval_tiles": len(eval_ids),
        "eval_tiles_overlapping_a_train_tile": sorted(eval_touched),
        "cross_fold_pairs": sum(1 for r in rows if r["fold_a"] != r["fold_b"]),
        "pairs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Overlapping tiles in the shared data",
        "",
        "Made by `benchmarks/overlap.py` from the GeoTIFF headers of the pairs conversion accepts.",
        "Splits and folds are cut by site (`data.sites`).",
        "",
        f"- {result['tiles']} tiles in {result['sites']} sites; "
        f"{len(rows)} pairs of tiles overlap; "
        f"{len(in_any)} tiles overlap at least one other.",
        f"- {len(cross_split)} overlapping pairs straddle the train/eval split: "
        f"{len(eval_touched)} of the {len(eval_ids)} eval tiles share ground with a train tile"
        + (f" ({', '.join(sorted(eval_touched, key=int))})." if eval_touched else "."),
        f"- {result['cross_fold_pairs']} overlapping pairs straddle the {args.folds} folds.",
        "",
        "| tile | tile | overlap (share of a tile) | splits | folds |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['a']} | {r['b']} | {r['share']:.2f} | {r['split_a']} / {r['split_b']} | "
        f"{r['fold_a']} / {r['fold_b']} |"
        for r in rows
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
