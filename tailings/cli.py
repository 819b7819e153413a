"""`tailings`: one verb per job. Heavy libraries are imported inside each verb, so `--help` is fast.

Exit codes: 0 success; 1 the job ran into bad input or produced nothing; 2 usage errors (argparse).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

# TFX/TFMA 1.16 need Keras-2 SavedModels; must be set before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Google client libraries warn about Python 3.10 on import; TFX 1.16 cannot run on newer Python.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")

EXIT_OK = 0
EXIT_FAILED = 1

DEFAULT_DATA = Path("data/brazil-tailings")


class CliError(Exception):
    """A user-facing failure: printed as one line to stderr, exit code EXIT_FAILED."""


def say(message: str) -> None:
    """Progress and results go to stderr, so stdout stays clean for piping."""
    print(message, file=sys.stderr, flush=True)


def _split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Arguments after a bare `--` go to Beam unchanged."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


# --------------------------------------------------------------------------- convert
def _add_convert(sub) -> None:
    from data.config import ConversionConfig

    d = ConversionConfig()
    p = sub.add_parser(
        "convert",
        help="convert GeoTIFF image/mask pairs into sharded GZIP TFRecords (Apache Beam)",
        description=(
            "Pair img_<id>.tif with mask_<id>.tif (or equal names), validate each pair and "
            "write tf.Example shards, rejected.jsonl and summary.json. Arguments after `--` "
            "are passed to Beam unchanged (e.g. -- --runner=DataflowRunner --project=...)."
        ),
    )
    p.add_argument("--images", required=True, type=Path, help="folder of image GeoTIFFs")
    p.add_argument("--masks", required=True, type=Path, help="folder of mask GeoTIFFs")
    p.add_argument("--output", required=True, help="output folder (local path or gs://...)")
    p.add_argument(
        "--workers", type=int, default=d.workers, help="DirectRunner workers (default: %(default)s)"
    )
    p.add_argument(
        "--shards", type=int, default=d.shards, help="TFRecord shards (default: %(default)s)"
    )
    p.add_argument(
        "--running-mode",
        choices=("multi_processing", "multi_threading"),
        default=d.running_mode,
        help="how the DirectRunner runs more than one worker (default: %(default)s)",
    )
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace, beam_args: list[str]) -> int:
    from data.config import ConversionConfig
    from data.convert import ConversionError, run_conversion

    for label, folder in (("--images", args.images), ("--masks", args.masks)):
        if not folder.is_dir():
            raise CliError(f"{label} folder does not exist: {folder}")
    if args.workers < 1 or args.shards < 1:
        raise CliError("--workers and --shards must be at least 1")
    cfg = ConversionConfig(workers=args.workers, shards=args.shards, running_mode=args.running_mode)
    try:
        summary = run_conversion(
            str(args.images), str(args.masks), args.output, cfg, beam_args, say=say
        )
    except ConversionError as err:
        raise CliError(str(err)) from None
    say(summary.one_line())
    say(f"wrote {args.output}/ ({cfg.rejected_file}, {cfg.summary_file}, shards)")
    if summary.converted == 0:
        raise CliError(
            f"nothing converted: all {summary.pairs_found} pairs were rejected; "
            f"see {args.output}/{cfg.rejected_file}"
        )
    return EXIT_OK


# --------------------------------------------------------------------------- fetch-data
def _add_fetch(sub) -> None:
    p = sub.add_parser(
        "fetch-data",
        help="fetch the study's image/mask pairs into data/brazil-tailings",
        description=(
            "Fetch the study's 114 Sentinel-2 image/mask pairs "
            "(github.com/IsasGithub/tailings_seg) "
            "or copy them from a local folder, skipping files already present and valid."
        ),
    )
    p.add_argument("--source", default=None, help="URL or local folder (default: the study's repo)")
    p.add_argument("--dest", type=Path, default=DEFAULT_DATA, help="default: %(default)s")
    p.set_defaults(func=_fetch)


def _fetch(args: argparse.Namespace, beam_args: list[str]) -> int:
    from data.fetch import FetchError, fetch_data

    try:
        result = fetch_data(args.source, args.dest, say=say)
    except FetchError as err:
        raise CliError(str(err)) from None
    for name, reason in result.failed:
        say(f"  failed: {name}: {reason}")
    say(
        f"fetched {result.fetched}, already present {result.skipped}, failed {len(result.failed)}"
        f" -> {args.dest}"
    )
    return EXIT_OK if not result.failed else EXIT_FAILED


# --------------------------------------------------------------------------- main
VERBS: tuple[Callable, ...] = (_add_convert, _add_fetch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailings",
        description="Find mining tailings in Sentinel-2 imagery: convert, train, serve, predict.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for add in VERBS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    own, beam_args = _split_passthrough(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    if beam_args and args.verb != "convert":
        build_parser().error(f"`--` pass-through options are only for convert, not {args.verb}")
    start = time.monotonic()
    try:
        code = args.func(args, beam_args)
    except CliError as err:
        print(f"tailings {args.verb}: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"tailings {args.verb}: interrupted", file=sys.stderr)
        return 130
    say(f"tailings {args.verb}: done in {time.monotonic() - start:.1f} s")
    return code
