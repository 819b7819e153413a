"""`--workers N` as DirectRunner options, for convert, predict --beam, run and compile."""

from __future__ import annotations

import pytest

from data.beam_options import direct_args


@pytest.mark.parametrize("mode", ["multi_processing", "multi_threading"])
def test_workers_become_the_direct_runners_options_in_the_mode_given(mode):
    assert direct_args(2, running_mode=mode) == [
        "--direct_num_workers=2",
        f"--direct_running_mode={mode}",
    ]
    # One worker: no mode to choose.
    assert direct_args(1, running_mode=mode) == ["--direct_num_workers=1"]


@pytest.mark.parametrize(
    ("given", "left"),
    [
        (["--direct_num_workers=3"], ["--direct_running_mode=multi_processing"]),
        (["--direct_num_workers", "3"], ["--direct_running_mode=multi_processing"]),
        (["--direct_running_mode=multi_threading"], ["--direct_num_workers=2"]),
    ],
)
def test_options_the_user_gives_are_left_to_the_user(given, left):
    assert direct_args(2, given, running_mode="multi_processing") == left


def test_an_unknown_running_mode_is_refused():
    with pytest.raises(ValueError, match="running mode must be one of"):
        direct_args(2, running_mode="multi_thread")
