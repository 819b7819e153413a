"""Benchmark GeoTIFF -> GZIP TFRecord conversion: a plain loop against Beam with 1 and 2 workers.

    .venv/bin/python benchmarks/convert.py [--data DIR] [--repeats 3] [--scales 1,4]

Everything runs in this one process, after a warm-up that imports rasterio, TensorFlow and Beam
and converts a few pairs through every code path, so no variant pays for first imports. The
variants do the same work (`data.pairs.discover_pairs` + `validate` + `data.examples.to_example`
into 4 GZIP shards assigned by `data.convert.ShardPlan`), and the benchmark checks that every
variant wrote the same records as the plain loop. Each variant runs `--repeats` times,
interleaved with the others so a burst of load from another job hits all of them alike; the
best and the median wall time are reported, and the ratios against the plain loop use the
median. See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from _env import DEFAULT_DATA, RESULTS  # sets the environment first

DEFAULT_OUT = RESULTS / "convert.json"
TARGETS = {"beam_1": 0.8, "beam_2_mp": 1.6, "beam_2_mt": 1.6}  # x the plain loop (issue)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    run: Callable[[Path, Path, Path], tuple[int, int]]  # (images, masks, out) -> (conv, rej)


@dataclass
class Measurement:
    variant: str
    label: str
    scale: int
    pairs_found: int
    converted: int
    rejected: int
    input_bytes: int
    output_bytes: int = 0
    seconds: list[float] = field(default_factory=list)
    others_cores: list[float] = field(default_factory=list)  # other jobs, mean cores busy
    cpu_seconds: list[float] = field(default_factory=list)  # this process + Beam workers
    discarded: list[dict] = field(default_factory=list)  # disturbed runs, run again
    same_records_as_plain: bool | None = None

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


# --- the variants ---------------------------------------------------------------------------


def plain_loop(images: Path, masks: Path, out: Path) -> tuple[int, int]:
    """What the Beam job does per pair, in one process and one thread, without Beam."""
    import tensorflow as tf

    from data.config import ConversionConfig
    from data.convert import ShardPlan
    from data.examples import to_example
    from data.pairs import Rejection, discover_pairs, validate

    cfg = ConversionConfig()
    plan = ShardPlan(shards=cfg.shards, file_pattern=cfg.examples_pattern)
    specs = discover_pairs(images, masks, cfg.pairing)
    out.mkdir(parents=True, exist_ok=True)
    by_shard: dict[tuple[str, int], list] = {key: [] for key in plan.all_keys()}
    for spec in specs:
        by_shard[plan.key(spec.pair_id)].append(spec)
    converted = rejected = 0
    for key, shard_specs in by_shard.items():
        with tf.io.TFRecordWriter(plan.path(str(out), key), options="GZIP") as writer:
            for spec in sorted(shard_specs, key=lambda s: s.pair_id):  # as WriteShardFn does
                result = validate(spec, cfg.validation)
                if isinstance(result, Rejection):
                    rejected += 1
                    continue
                writer.write(to_example(result).SerializeToString())
                converted += 1
    return converted, rejected


def beam_variant(workers: int, running_mode: str) -> Callable[[Path, Path, Path], tuple[int, int]]:
    def run(images: Path, masks: Path, out: Path) -> tuple[int, int]:
        from data.config import ConversionConfig
        from data.convert import run_conversion

        cfg = ConversionConfig(workers=workers, running_mode=running_mode)
        summary = run_conversion(str(images), str(masks), str(out), cfg)
        return summary.converted, summary.rejected

    return run


VARIANTS = (
    Variant("plain", "plain loop (1 process, 1 thread)", plain_loop),
    Variant("beam_1", "Beam DirectRunner, workers=1", beam_variant(1, "multi_processing")),
    Variant("beam_2_mp", "Beam workers=2, multi_processing", beam_variant(2, "multi_processing")),
    Variant("beam_2_mt", "Beam workers=2, multi_threading", beam_variant(2, "multi_threading")),
)


# --- data -----------------------------------------------------------------------------------


def find_folders(data: Path) -> tuple[Path, Path]:
    for images, masks in (("img", "mask"), ("data/img_tiff", "data/mask_tiff")):
        if (data / images).is_dir() and (data / masks).is_dir():
            return data / images, data / masks
    raise SystemExit(f"no img/ + mask/ folders under {data}; pass --data or run fetch-data")


def replicate(images: Path, masks: Path, scale: int, work: Path) -> tuple[Path, Path]:
    """`scale` x the pairs as symlinks under new ids `<N>_<k>`; scale 1 is the real folders."""
    if scale == 1:
        return images, masks
    root = work / f"x{scale}"
    for src, prefix, name in ((images, "img_", "img"), (masks, "mask_", "mask")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for path in sorted(src.iterdir()):
            if path.suffix.lower() not in (".tif", ".tiff") or not path.stem.startswith(prefix):
                continue
            for k in range(1, scale + 1):
                link = root / name / f"{path.stem}_{k}{path.suffix}"
                link.symlink_to(path.resolve())
    return root / "img", root / "mask"


def input_bytes(images: Path, masks: Path) -> int:
    return sum(p.stat().st_size for folder in (images, masks) for p in folder.iterdir())


def read_all(images: Path, masks: Path) -> None:
    """Pull every source file into the page cache, so the first variant reads no colder."""
    for folder in (images, masks):
        for path in folder.iterdir():
            path.read_bytes()


def shard_digests(out: Path) -> dict[str, str]:
    """Per shard, a SHA-256 over its records in order, each re-serialized deterministically.

    Raw bytes cannot be compared: `SerializeToString()` writes the Example's feature map in an
    unspecified order, so two builds of the same Example can differ byte-wise.
    """
    import tensorflow as tf

    digests = {}
    for path in sorted(out.glob("*.tfrecord.gz")):
        digest = hashlib.sha256()
        with gzip.open(path, "rb") as fh:
            while header := fh.read(12):
                (length,) = struct.unpack("<Q", header[:8])
                record = tf.train.Example.FromString(fh.read(length))
                digest.update(record.SerializeToString(deterministic=True))
                fh.read(4)  # data CRC
        digests[path.name] = digest.hexdigest()
    return digests


def output_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.glob("*.tfrecord.gz"))


# --- load from other jobs -------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat, every process)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


def own_seconds() -> float:
    """CPU seconds of this process, its threads and its finished children (Beam workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def wait_for_quiet(say: Callable[[str], None], busy_cores: float, max_wait: float) -> float:
    """Wait until other jobs use under `busy_cores` cores over 2 s; return that share."""
    deadline = time.monotonic() + max_wait
    while True:
        before, own = busy_seconds(), own_seconds()
        time.sleep(2.0)
        others = max(0.0, busy_seconds() - before - (own_seconds() - own)) / 2.0
        if others < busy_cores or time.monotonic() > deadline:
            if others >= busy_cores:
                say(f"  (still {others:.2f} cores busy with other jobs; measuring anyway)")
            return others
        say(f"  waiting: other jobs keep {others:.2f} cores busy ...")
        time.sleep(8.0)


# --- machine --------------------------------------------------------------------------------


def machine() -> dict:
    import apache_beam
    import numpy
    import rasterio
    import tensorflow as tf

    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gb": round(mem_kb / 1024**2, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "apache_beam": apache_beam.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "numpy": numpy.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# --- running --------------------------------------------------------------------------------


def warm_up(images: Path, masks: Path, work: Path, say: Callable[[str], None]) -> None:
    """Import everything and push a few pairs through each in-process code path."""
    import apache_beam  # noqa: F401
    import rasterio  # noqa: F401
    import tensorflow  # noqa: F401

    few = work / "warmup"
    for src, name in ((images, "img"), (masks, "mask")):
        (few / name).mkdir(parents=True)
        for path in sorted(src.iterdir())[:4]:
            (few / name / path.name).symlink_to(path.resolve())
    for variant in VARIANTS:
        if variant.key == "beam_2_mp":
            continue  # its workers are new processes on every run: nothing to warm here
        start = time.perf_counter()
        variant.run(few / "img", few / "mask", work / f"warmup-{variant.key}")
        say(f"  warm-up {variant.key}: {time.perf_counter() - start:.1f} s")


def measure(
    scale: int,
    images: Path,
    masks: Path,
    work: Path,
    repeats: int,
    variants: list[Variant],
    say: Callable[[str], None],
    quiet_cores: float = 0.0,
    max_wait: float = 0.0,
    disturbed_cores: float = 0.15,
    redo_disturbed: int = 3,
) -> list[Measurement]:
    from data.pairs import discover_pairs

    pairs_found = len(discover_pairs(images, masks))
    in_bytes = input_bytes(images, masks)
    read_all(images, masks)
    results = {
        v.key: Measurement(v.key, v.label, scale, pairs_found, 0, 0, in_bytes) for v in variants
    }
    reference: dict[str, str] | None = None
    for r in range(repeats):
        for variant in variants:
            out = work / f"out-x{scale}-{variant.key}-{r}"
            m = results[variant.key]
            for attempt in range(1 + redo_disturbed):
                if quiet_cores > 0:
                    wait_for_quiet(say, quiet_cores, max_wait)
                shutil.rmtree(out, ignore_errors=True)
                busy0, own0 = busy_seconds(), own_seconds()
                start = time.perf_counter()
                converted, rejected = variant.run(images, masks, out)
                seconds = time.perf_counter() - start
                cpu = own_seconds() - own0
                others = max(0.0, busy_seconds() - busy0 - cpu) / seconds
                say(
                    f"  x{scale} {variant.key:<10} run {r + 1}/{repeats}: {seconds:6.2f} s"
                    f"  ({converted} converted, {rejected} rejected;"
                    f" other jobs used {others:.2f} cores meanwhile)"
                )
                if others <= disturbed_cores or attempt == redo_disturbed:
                    break
                m.discarded.append(
                    {"seconds": round(seconds, 3), "other_jobs_cores": round(others, 2)}
                )
                say("    disturbed by other jobs: discarded, running it again")
            m.others_cores.append(round(others, 2))
            m.cpu_seconds.append(round(cpu, 2))
            m.seconds.append(round(seconds, 3))
            m.converted, m.rejected, m.output_bytes = converted, rejected, output_bytes(out)
            if r == 0:
                digests = shard_digests(out)
                if variant.key == "plain":
                    reference = digests
                elif reference is not None:
                    m.same_records_as_plain = digests == reference
                    if not m.same_records_as_plain:
                        say(f"  WARNING: {variant.key} wrote other records than the plain loop")
            shutil.rmtree(out, ignore_errors=True)
    if "plain" in results:
        results["plain"].same_records_as_plain = True
    return list(results.values())


def row(m: Measurement, plain: Measurement | None) -> dict:
    median, best = m.median, m.best
    out = {
        "variant": m.variant,
        "label": m.label,
        "scale": m.scale,
        "pairs_found": m.pairs_found,
        "converted": m.converted,
        "rejected": m.rejected,
        "input_bytes": m.input_bytes,
        "output_bytes": m.output_bytes,
        "seconds": m.seconds,
        "best_s": round(best, 3),
        "median_s": round(median, 3),
        "pairs_per_s_median": round(m.converted / median, 2),
        "pairs_per_s_best": round(m.converted / best, 2),
        "input_mb_per_s_median": round(m.input_bytes / 1e6 / median, 2),
        "output_mb_per_s_median": round(m.output_bytes / 1e6 / median, 2),
        "cpu_seconds": m.cpu_seconds,
        "cpu_seconds_median": round(statistics.median(m.cpu_seconds), 2),
        "other_jobs_cores": m.others_cores,
        "discarded_disturbed_runs": m.discarded,
        "same_records_as_plain": m.same_records_as_plain,
    }
    if plain is not None:
        out["x_plain_median"] = round(plain.median / median, 3)
        out["x_plain_best"] = round(plain.best / best, 3)
    return out


def table(rows: list[dict]) -> str:
    head = (
        "| data | variant | converted | best s | median s | CPU s | pairs/s | in MB/s | out MB/s "
        "| x plain (median) | x plain (best) | same records | other jobs (cores) |"
    )
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        lines.append(
            f"| x{r['scale']} | {r['label']} | {r['converted']} | {r['best_s']:.2f} "
            f"| {r['median_s']:.2f} | {r['cpu_seconds_median']:.1f} "
            f"| {r['pairs_per_s_median']:.1f} "
            f"| {r['input_mb_per_s_median']:.1f} | {r['output_mb_per_s_median']:.1f} "
            f"| {r.get('x_plain_median', float('nan')):.2f} "
            f"| {r.get('x_plain_best', float('nan')):.2f} "
            f"| {'yes' if r['same_records_as_plain'] else 'NO'} "
            f"| {max(r['other_jobs_cores']):.2f} |"
        )
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[dict]:
    checks = []
    for r in rows:
        goal = TARGETS.get(r["variant"])
        if goal is None or "x_plain_median" not in r:
            continue
        checks.append(
            {
                "scale": r["scale"],
                "variant": r["variant"],
                "target_x_plain": goal,
                "measured_x_plain_median": r["x_plain_median"],
                "met": r["x_plain_median"] >= goal,
                "margin": round(r["x_plain_median"] - goal, 3),
            }
        )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with img/, mask/")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant and scale")
    parser.add_argument("--scales", default="1,4", help="data multiples to run, e.g. 1,4")
    parser.add_argument(
        "--variants", default=",".join(v.key for v in VARIANTS), help="subset, comma-separated"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.25,
        help="before each run wait until other jobs use fewer cores than this (0: never wait)",
    )
    parser.add_argument("--max-wait", type=float, default=300.0, help="seconds, per run")
    parser.add_argument(
        "--disturbed-cores",
        type=float,
        default=0.15,
        help="a run during which other jobs used more cores than this is discarded and re-run",
    )
    parser.add_argument("--redo", type=int, default=3, help="re-runs of one disturbed run, max")
    parser.add_argument("--no-write", action="store_true", help="print only, keep the JSON")
    args = parser.parse_args(argv)

    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # `kill` cleans up like Ctrl-C: the temporary folder of symlinks and outputs goes away.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    warnings.filterwarnings("ignore", category=FutureWarning)  # google-* on Python 3.10

    def say(msg: str) -> None:
        print(msg, flush=True)

    images, masks = find_folders(args.data)
    wanted = args.variants.split(",")
    variants = [v for v in VARIANTS if v.key in wanted]
    if not variants or variants[0].key != "plain":
        variants = [VARIANTS[0], *variants]  # every ratio needs the plain loop
    scales = [int(s) for s in args.scales.split(",")]

    started = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tailings-bench-") as tmp:
        work = Path(tmp)
        say(f"data: {args.data}; warming up imports and code paths ...")
        warm_up(images, masks, work, say)
        info = machine()
        for scale in scales:
            imgs, msks = replicate(images, masks, scale, work)
            say(f"x{scale}: {len(list(imgs.iterdir()))} images, {args.repeats} runs per variant")
            found = measure(
                scale,
                imgs,
                msks,
                work,
                args.repeats,
                variants,
                say,
                args.quiet_cores,
                args.max_wait,
            )
            plain = next(m for m in found if m.variant == "plain")
            rows.extend(row(m, plain) for m in found)

    result = {
        "benchmark": "GeoTIFF pairs -> GZIP TFRecord shards (benchmarks/convert.py)",
        "data": str(args.data),
        "repeats": args.repeats,
        "settings": {
            "scales": scales,
            "variants": [v.key for v in variants],
            "quiet_cores": args.quiet_cores,
            "max_wait_s": args.max_wait,
            "disturbed_cores": args.disturbed_cores,
            "redo": args.redo,
        },
        "units": {
            "seconds": "wall clock of one whole conversion: discover, validate, encode, write",
            "pairs_per_s": "converted pairs (examples written) per second of the median run",
            "input_mb_per_s": "source GeoTIFF file bytes on disk (img + mask, LZW) per second,"
            " 1 MB = 1e6 bytes",
            "output_mb_per_s": "GZIP TFRecord shard bytes written per second, 1 MB = 1e6 bytes",
            "x_plain": "plain-loop seconds / variant seconds (above 1 = faster than the loop)",
            "cpu_seconds": "CPU time of this process, its threads and its Beam worker"
            " processes during the run (user + system)",
            "other_jobs_cores": "mean cores other processes kept busy during each run"
            " (/proc/stat minus this process and its children); 0 = undisturbed",
        },
        "machine": info,
        "total_seconds": round(time.perf_counter() - started, 1),
        "results": rows,
        "targets": targets(rows),
    }
    say("")
    say(table(rows))
    say("")
    for check in result["targets"]:
        say(
            f"x{check['scale']} {check['variant']}: {check['measured_x_plain_median']:.2f}x plain"
            f" (target {check['target_x_plain']}x): {'met' if check['met'] else 'NOT met'}"
            f" ({check['margin']:+.2f})"
        )
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(result))
        say(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Conversion benchmark (generated by benchmarks/convert.py)",
        "",
        f"{m['date']}: {m['cpu_model']}, {m['cores']} cores, {m['memory_gb']} GB; "
        f"Python {m['python']}, TensorFlow {m['tensorflow']}, Beam {m['apache_beam']}, "
        f"rasterio {m['rasterio']} (GDAL {m['gdal']}). Data: {result['data']}, "
        f"{result['repeats']} runs per variant; ratios use the median.",
        "",
        table(result["results"]),
        "",
        "| data | variant | target | measured | met |",
        "|---|---|---|---|---|",
    ]
    for c in result["targets"]:
        lines.append(
            f"| x{c['scale']} | {c['variant']} | {c['target_x_plain']}x "
            f"| {c['measured_x_plain_median']:.2f}x | {'yes' if c['met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
