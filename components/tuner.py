"""TFX's Tuner with an executor that runs `TuneArgs.num_parallel_trials` trials at once here.

TFX's stock Tuner executor refuses `TuneArgs` (only its Cloud AI Platform executor spreads
trials, over a training job's machines). This one spreads them over processes with KerasTuner's
own distributed mode, the mechanism that spreads trials over a cluster:

- a **chief** process holds the oracle (KERASTUNER_TUNER_ID=chief) and serves it over gRPC on
  KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT (127.0.0.1 and a free port);
- `num_parallel_trials` **worker** processes (KERASTUNER_TUNER_ID=tuner0, tuner1, ...) each
  run TFX's own `search()` loop: ask the chief for values, train, report the score;
- each is `python -m components.tuner SPEC` with TFX's inputs and properties in SPEC, so a
  worker on another machine is the same command with the environment pointing at the chief
  (docs/pipeline.md: "Trials on other machines"). Each process logs to `<tuner_results>/<id>.log`.

TensorFlow in each worker gets `cores / workers` threads (TF_NUM_INTRAOP_THREADS), unless
the environment sets them. When a worker or the chief fails, the others are stopped and the
Tuner fails with the process's last log line. Once all are done, the chief's oracle is reloaded
from its folder and TFX's own writer writes the best hyperparameters and tuner_results.json;
`TRIALS_FILE` adds every trial with all its metrics (duration included), for the run report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from tfx import types
from tfx.components.trainer import fn_args_utils
from tfx.components.tuner import component as tuner_component
from tfx.components.tuner import executor as tuner_executor
from tfx.components.util import udf_utils
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_component_specs

from components.config import TRIALS_FILE
from data.errors import TailingsError

SPEC_FILE = "search.json"  # in the Tuner's working directory: what each process runs
CHIEF = "chief"
POLL_SECONDS = 1.0
CHIEF_EXIT_SECONDS = 120.0  # after the last worker: the chief's server checks every 1-20 s


class TuningError(TailingsError):
    """A process of a parallel search failed."""


class Executor(tuner_executor.Executor):
    """TFX's Tuner executor, plus `TuneArgs.num_parallel_trials` worker processes on this host."""

    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        tune_args = tuner_executor.get_tune_args(exec_properties)
        parallel = tune_args.num_parallel_trials if tune_args else 1
        results_dir = artifact_utils.get_single_uri(
            output_dict[standard_component_specs.TUNER_RESULTS_KEY]
        )
        working_dir = self._get_tmp_dir()
        started = time.monotonic()
        if parallel <= 1:
            tuner = tuner_executor.search(input_dict, exec_properties, working_dir)
        else:
            tuner = search_in_parallel(
                input_dict, exec_properties, working_dir, parallel, results_dir
            )
        tuner_executor.write_best_hyperparameters(tuner, output_dict)
        write_trials(tuner, os.path.join(results_dir, TRIALS_FILE), parallel, started)


class Tuner(tuner_component.Tuner):
    """TFX's Tuner component, run by `Executor` above (same spec, inputs and outputs)."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def search_in_parallel(
    input_dict: dict[str, list[types.Artifact]],
    exec_properties: dict[str, Any],
    working_dir: str,
    workers: int,
    log_dir: str,
) -> Any:
    """Run the chief oracle and `workers` trial processes; return the chief's tuner, reloaded.

    `working_dir` may be a gs:// folder (the spec file goes through TFX's fileio). The
    processes' logs are written to `log_dir` when it is local; for a gs:// `log_dir` they are
    written to a local temporary folder (a process's output is a local file) and copied
    there when the search ends, failed or not."""
    fileio.makedirs(working_dir)
    spec_path = os.path.join(working_dir, SPEC_FILE)
    with fileio.open(spec_path, "w") as f:
        json.dump(
            {
                "input_dict": artifact_utils.jsonify_artifact_dict(input_dict),
                "exec_properties": exec_properties,
                "working_dir": working_dir,
            },
            f,
        )
    # The user's own KERASTUNER_ORACLE_IP / _PORT let workers on other machines join
    # (docs/pipeline.md: "Trials on other machines"); then the chief may also wait for them.
    shared = "KERASTUNER_ORACLE_IP" in os.environ
    env = {
        **os.environ,
        "KERASTUNER_ORACLE_IP": os.environ.get("KERASTUNER_ORACLE_IP", "127.0.0.1"),
        "KERASTUNER_ORACLE_PORT": os.environ.get("KERASTUNER_ORACLE_PORT") or str(free_port()),
    }
    env.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    logging.info(
        "Tuner: chief oracle on %s:%s; another worker joins with KERASTUNER_ORACLE_IP=<this "
        "host> KERASTUNER_ORACLE_PORT=%s KERASTUNER_TUNER_ID=<unique id> python -m "
        "components.tuner %s",
        env["KERASTUNER_ORACLE_IP"],
        env["KERASTUNER_ORACLE_PORT"],
        env["KERASTUNER_ORACLE_PORT"],
        spec_path,
    )
    names = [CHIEF, *(f"tuner{i}" for i in range(workers))]
    remote_logs = log_dir if "://" in log_dir else None
    if remote_logs:
        log_dir = tempfile.mkdtemp(prefix="tuner-logs-")
    logs = {name: os.path.join(log_dir, f"{name}.log") for name in names}
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name in names:
            with open(logs[name], "wb") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "components.tuner", spec_path],
                    env={**env, "KERASTUNER_TUNER_ID": name},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        _wait(procs, logs, chief_deadline=None if shared else CHIEF_EXIT_SECONDS)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if remote_logs:
            fileio.makedirs(remote_logs)
            for path in logs.values():
                if os.path.exists(path):
                    fileio.copy(path, os.path.join(remote_logs, os.path.basename(path)), True)
    # The chief saved its oracle (every trial and score) in the shared folder: load it here
    # as the tuner "chief" without a chief oracle to connect to, so TFX's writer can read it.
    fn_args = fn_args_utils.get_common_fn_args(input_dict, exec_properties, working_dir)
    tuner_fn = udf_utils.get_fn(exec_properties, "tuner_fn")
    with _environment(KERASTUNER_TUNER_ID=CHIEF, KERASTUNER_ORACLE_IP=None):
        return tuner_fn(fn_args).tuner


def _wait(
    procs: dict[str, subprocess.Popen], logs: dict[str, str], chief_deadline: float | None
) -> None:
    """Until every worker and then the chief exit; TuningError at the first that fails, or when
    the chief is still waiting `chief_deadline` s after the last worker (None: no limit, as
    workers on other machines may still be running trials)."""
    workers_done_at = None
    while True:
        for name, proc in procs.items():
            code = proc.poll()
            if code not in (None, 0):
                raise TuningError(
                    f"Tuner {name} process exited with code {code}: {_last_line(logs[name])} "
                    f"(log: {logs[name]})"
                )
        if all(p.poll() == 0 for n, p in procs.items() if n != CHIEF):
            if procs[CHIEF].poll() == 0:
                return
            workers_done_at = workers_done_at or time.monotonic()
            waited = time.monotonic() - workers_done_at
            if chief_deadline is not None and waited > chief_deadline:
                raise TuningError(
                    f"the Tuner's chief oracle did not stop {chief_deadline:.0f} s after its "
                    f"workers ended (log: {logs[CHIEF]})"
                )
        time.sleep(POLL_SECONDS)


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


@contextlib.contextmanager
def _environment(**values: str | None) -> Iterator[None]:
    """Set (or, for None, remove) environment variables for the block, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(saved)


def _set_environment(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def write_trials(tuner: Any, path: str, workers: int, started: float) -> None:
    """Every trial of the search (values, status, score and every metric it recorded, in trial
    order) and the search's settings, as JSON: TFX's tuner_results.json keeps only the
    completed trials' scores and values."""
    oracle = tuner.oracle
    trials = []
    for trial in sorted(oracle.trials.values(), key=lambda t: int(t.trial_id)):
        metrics = {name: trial.metrics.get_last_value(name) for name in trial.metrics.metrics}
        trials.append(
            {
                "trial": trial.trial_id,
                "status": trial.status,
                "score": trial.score,
                "hyperparameters": dict(trial.hyperparameters.values),
                "metrics": metrics,
            }
        )
    search = {
        "objective": oracle.objective.name,
        "direction": oracle.objective.direction,
        "algorithm": type(oracle).__name__,
        "max_trials": oracle.max_trials,
        "workers": workers,
        "seconds": time.monotonic() - started,
        "trials": trials,
    }
    with fileio.open(path, "w") as f:  # a local folder or a gs:// artifact
        json.dump(search, f, indent=2)


def main(argv: list[str]) -> int:
    """One process of a parallel search (chief or worker, by KERASTUNER_TUNER_ID): TFX's own
    search loop on the inputs and properties in the spec file `argv[0]`."""
    with fileio.open(argv[0]) as f:
        spec = json.load(f)
    tuner_executor.search(
        artifact_utils.parse_artifact_dict(spec["input_dict"]),
        spec["exec_properties"],
        spec["working_dir"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
