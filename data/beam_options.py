"""The DirectRunner settings that a verb's `--workers` stands for, shared by every Beam job.

`tailings convert`, `tailings predict --beam` and the pipeline's Beam-powered components
(`tailings run`, `tailings compile`) all turn `--workers N` into the DirectRunner's options
here; each names its running mode. Plain strings, no Beam import: TFX takes the pipeline's
options as a list, and `tailings compile` builds them before TFX loads.
"""

from __future__ import annotations

from collections.abc import Sequence

# `--name` of the DirectRunner options `--workers` sets; one the user passes wins.
DIRECT_NUM_WORKERS = "--direct_num_workers"
DIRECT_RUNNING_MODE = "--direct_running_mode"
RUNNING_MODES = ("multi_processing", "multi_threading")


def given(beam_args: Sequence[str], flag: str) -> bool:
    """Whether `beam_args` set `flag` (`--flag=value` or `--flag value`)."""
    return any(a == flag or a.startswith(flag + "=") for a in beam_args)


def direct_args(workers: int, beam_args: Sequence[str] = (), *, running_mode: str) -> list[str]:
    """The DirectRunner options for `workers` that `beam_args` does not set itself: the number
    of workers, and with more than one, how they run (`running_mode`: multi_processing or
    multi_threading). They go before `beam_args`; other runners ignore them."""
    if running_mode not in RUNNING_MODES:
        raise ValueError(f"running mode must be one of {', '.join(RUNNING_MODES)}: {running_mode}")
    out = []
    if not given(beam_args, DIRECT_NUM_WORKERS):
        out.append(f"{DIRECT_NUM_WORKERS}={workers}")
    if workers > 1 and not given(beam_args, DIRECT_RUNNING_MODE):
        out.append(f"{DIRECT_RUNNING_MODE}={running_mode}")
    return out
