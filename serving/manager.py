"""Model versions on disk -> loaded, available versions, as TF Serving's manager does it.

Every `poll_seconds` each model's base path is listed; numeric folders are versions, and the
version policy picks the aspired ones. New aspired versions are loaded (and warmed up) first;
versions no longer aspired are unloaded only afterwards, and only while another version stays
available (TF Serving's AvailabilityPreservingPolicy), after their in-flight requests finish.
States and errors are kept per version for the status API, as TF Serving's state monitor does.

A version that fails to load is retried `load_retries` times, `load_retry_seconds` apart (TF
Serving's --max_num_load_retries and --load_retry_interval_micros, 5 x 1 minute by default),
then shown as END with its error. It is not tried again while it stays on disk; once a poll
finds it gone (no longer aspired) it is forgotten, and a new copy under the same number loads
afresh, as TF Serving's AspiredVersionsManager stops managing it (FlushServables).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from serving.config import ServerConfig
from serving.errors import INVALID_ARGUMENT, NOT_FOUND, OK, UNKNOWN, ServingError
from serving.model_config import ModelEntry
from serving.servable import Servable

log = logging.getLogger(__name__)

# ModelVersionStatus.State names (get_model_status.proto).
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"

Loader = Callable[[str, int, Path], Servable]


@dataclass
class VersionState:
    state: str = START
    error_code: int = OK
    error_message: str = ""
    attempts: int = 0
    last_attempt: float = 0.0
    servable: Servable | None = None
    # Left the aspired set while not loaded (END, or waiting for a retry): TF Serving stops
    # managing such a version (aspired_versions_manager.cc:418-443 FlushServables), so when
    # the number comes back it is a new servable with fresh retries, not the failed one.
    forgotten: bool = False


def version_dirs(base_path: Path) -> list[int]:
    """Numeric sub-folders, as TF Serving reads them; hidden `.tmp-*` pushes are skipped."""
    try:
        names = [p.name for p in Path(base_path).iterdir() if p.is_dir()]
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and len(n) < 19)


def _error_code(err: BaseException) -> int:
    code = getattr(err, "error_code", None)  # tf.errors.OpError
    if isinstance(code, int):
        return code
    return err.code if isinstance(err, ServingError) else UNKNOWN


class ModelManager:
    """Loads, serves and unloads versions of the configured models; safe to use from threads."""

    def __init__(
        self,
        entries: list[ModelEntry],
        config: ServerConfig,
        loader: Loader = Servable.load,
        say: Callable[[str], None] = log.info,
    ) -> None:
        self.entries = {entry.name: entry for entry in entries}
        self.config = config
        self._load = loader
        self._say = say
        self._lock = threading.Lock()
        self._states: dict[str, dict[int, VersionState]] = {name: {} for name in self.entries}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0  # completed polls; tests wait on it instead of on the clock

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Load what is on disk now (as TF Serving does before serving), then keep polling."""
        self.poll_once()
        self._thread = threading.Thread(target=self._poll_loop, name="model-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.config.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # keep serving what is loaded; the next poll tries again
                log.exception("polling the model base paths failed")

    # ------------------------------------------------------------------ polling
    def poll_once(self) -> None:
        for entry in self.entries.values():
            on_disk = version_dirs(entry.base_path)
            aspired = entry.policy.select(on_disk)
            for version in aspired:  # newest first: what clients get by default is ready soonest
                self._maybe_load(entry, version)
            self._unload_unaspired(entry, set(aspired))
        with self._lock:
            self.polls += 1

    def _maybe_load(self, entry: ModelEntry, version: int) -> None:
        with self._lock:
            states = self._states[entry.name]
            state = states.setdefault(version, VersionState())
            if state.forgotten:  # back on disk after it left: load it afresh
                state = states[version] = VersionState()
            if state.state in (AVAILABLE, UNLOADING):
                return
            if state.state == END and state.error_code != OK:
                # Gave up after the retries (TF Serving: --max_num_load_retries) and still on
                # disk: TF Serving does not retry it either (aspired_versions_manager.cc:320,
                # enable_reload_servables_with_error is off) until it leaves the aspired set.
                return
            now = time.monotonic()
            if state.attempts and now - state.last_attempt < self.config.load_retry_seconds:
                return
            state.state, state.attempts, state.last_attempt = LOADING, state.attempts + 1, now
        path = entry.base_path / str(version)
        self._say(f"loading {entry.name} version {version} from {path}")
        started = time.monotonic()
        try:
            servable = self._load(entry.name, version, path)
            warmed = servable.warm_up() if self.config.warmup else 0
        except Exception as err:  # any load failure is reported through the status API
            message = f"{type(err).__name__}: {getattr(err, 'message', None) or err}".strip()
            with self._lock:
                state.error_code, state.error_message = _error_code(err), message
                if state.attempts > self.config.load_retries:
                    state.state = END
            self._say(f"failed to load {entry.name} version {version} ({message})")
            return
        with self._lock:
            state.state, state.servable = AVAILABLE, servable
            state.error_code, state.error_message = OK, ""
        seconds = time.monotonic() - started
        self._say(
            f"{entry.name} version {version} AVAILABLE ({seconds:.1f} s, {warmed} warmup requests)"
        )

    def _unload_unaspired(self, entry: ModelEntry, aspired: set[int]) -> None:
        with self._lock:
            states = self._states[entry.name]
            # AvailabilityPreservingPolicy: never leave the model without an available version
            # while one is aspired; with nothing aspired (folder emptied), unload everything.
            may_unload = not aspired or any(
                states[v].state == AVAILABLE for v in aspired if v in states
            )
            doomed = []
            for version, state in states.items():
                if version in aspired:
                    continue
                if state.state == AVAILABLE and may_unload:
                    state.state = UNLOADING
                    doomed.append((version, state))
                elif state.state == LOADING:  # waiting for a retry, and no longer aspired:
                    # TF Serving cancels the retries (aspired_versions_manager.cc:299) and
                    # the load ends in error.
                    state.state, state.forgotten = END, True
                elif state.state in (START, END):
                    state.forgotten = True
        for version, state in doomed:
            servable = state.servable
            if servable is not None and not servable.wait_idle(self.config.unload_wait_seconds):
                self._say(f"{entry.name} version {version}: requests still running; unloading")
            with self._lock:
                state.state, state.servable = END, None
            self._say(f"{entry.name} version {version} unloaded")

    # ------------------------------------------------------------------ requests
    def _entry(self, name: str, request: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise ServingError.not_found(f"Servable not found for request: {request}")
        return entry

    def resolve_version(self, name: str, version: int | None, label: str | None) -> int | None:
        """A label's version, else `version`.

        As TF Serving's ServerCore::GetModelVersionForLabel (server_core.cc:822-841): a label
        the model does not have, or any label of a model that is not configured, is
        INVALID_ARGUMENT "Unrecognized servable version label"; the version it names need not
        be available (a request for it is then NOT_FOUND, as for that version number).
        """
        if label is None:
            return version
        entry = self.entries.get(name)
        if entry is None or label not in entry.labels:
            raise ServingError(INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
        return entry.labels[label]

    @contextlib.contextmanager
    def servable(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> Iterator[Servable]:
        """The servable a request asks for, held so it is not unloaded under the request."""
        version = self.resolve_version(name, version, label)
        request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
        entry = self._entry(name, request)
        with self._lock:
            states = self._states[entry.name]
            if version is None:
                available = [v for v, s in states.items() if s.state == AVAILABLE]
                version = max(available) if available else None
            state = states.get(version) if version is not None else None
            if state is None or state.state != AVAILABLE or state.servable is None:
                raise ServingError.not_found(f"Servable not found for request: {request}")
            servable = state.servable
            servable.enter()
        try:
            yield servable
        finally:
            servable.leave()

    def version_states(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[tuple[int, VersionState]]:
        """(version, state) newest first, for the status API; TF Serving's NOT_FOUND texts.

        `label` is accepted and ignored, as TF Serving's status API does: it looks only at the
        model spec's version, so `/labels/<l>` (even a label that does not exist) returns every
        version (get_model_status_impl.cc:82-107).
        """
        del label
        with self._lock:
            states = self._states.get(name, {})
            if version is not None:
                if version not in states:
                    raise ServingError(
                        NOT_FOUND, f"Could not find version {version} of model {name}"
                    )
                picked = {version: states[version]}
            else:
                picked = dict(states)
            if not picked:
                raise ServingError(NOT_FOUND, f"Could not find any versions of model {name}")
            return [
                (v, VersionState(s.state, s.error_code, s.error_message))
                for v, s in sorted(picked.items(), reverse=True)
            ]

    def wait_available(self, name: str, version: int | None = None, timeout: float = 60) -> bool:
        """True once `version` (or any version) of `name` is AVAILABLE; for tests and the CLI."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                states = self._states.get(name, {})
                if any(
                    s.state == AVAILABLE and (version is None or v == version)
                    for v, s in states.items()
                ):
                    return True
            time.sleep(0.05)
        return False
