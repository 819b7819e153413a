"""One job per output folder: a lock file that says who holds it, and is taken over when stale.

Two `tailings run` on one `--output-dir` both trained and pushed and read each other's runs from
the shared ML Metadata store; two `tailings convert` into one folder deleted and counted each
other's shards. `output_lock` makes the second job stop before it writes anything, with one line
that names the holder (`OutputBusy`, exit code `EXIT_BUSY`).

The lock is `<folder>/.tailings.lock`, JSON:

    {"pid": 4242, "hostname": "box", "boot_id": "...", "start_time": 1234567,
     "verb": "run", "started": "2025-01-31T12:00:00+01:00", "command": "tailings run ..."}

`start_time` is the process start in clock ticks since boot (field 22 of /proc/<pid>/stat) and
`boot_id` the kernel's /proc/sys/kernel/random/boot_id; both are null where /proc does not exist.
A lock is **stale**, and taken over with a note (`OutputLock.took_over`), when it was written on
this host and its process is gone: the machine rebooted since (boot id differs), no process has
that pid (or it is a zombie: killed, not yet reaped), or the pid now belongs to another process
(its start time differs from the recorded one, so a reused pid is not mistaken for the holder).
A lock written on another host (a shared folder) cannot be checked from here: it is refused, and
the message says to delete the file if that process is gone.

Why hand-written: nothing in `uv.lock` records the holder. There is no `filelock`; `fasteners`
(via Apache Beam) and `portalocker` (via sacrebleu) are transitive dependencies that wrap
fcntl/flock: the kernel drops such a lock when its process dies, which would make stale locks a
non-issue, but neither writes who holds it, so the second job could only say "locked", not
"locked by `tailings run`, pid 4242 on box, started at 12:00", and `tailings runs` could not tell
a killed run from a running one by reading a file; flock over NFS is also only emulated. Relying
on a package we do not depend on directly would also break when Beam drops it.

How it is atomic: the JSON is written to a private temporary file first and hard-linked to the
lock name (`link(2)` fails with EEXIST exactly as `O_CREAT|O_EXCL` does, and the lock never exists
half-written); where the filesystem has no hard links, `O_CREAT|O_EXCL` creates it directly.
Every check-and-change of the lock (take, take over, release) runs under `flock` on the folder
itself, a kernel lock held for microseconds that dies with its process, so two jobs that find
the same stale lock cannot both take it over. Where the folder cannot be flocked (some network
filesystems) the take-over still moves the stale file away under a private name, checks that
it moved the very file it judged stale, and puts back anything else: of two racers exactly one
wins (though it may not learn that the lock it got had been stale).

Local folders only: `tailings convert` into a remote URL (gs://..., s3://...) is not locked
(`lock_local_output` does nothing for it): Beam's FileSystems have no exclusive create, and
whether a holder on another machine still runs cannot be checked from here anyway.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from data.errors import EXIT_BUSY, TailingsError

LOCK_NAME = ".tailings.lock"
_PROC = Path("/proc")


class OutputBusy(TailingsError):
    """Another `tailings run` or `tailings convert` holds the output folder (exit code 5)."""

    exit_code = EXIT_BUSY


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) an output folder's lock, as its lock file records it."""

    pid: int
    hostname: str
    boot_id: str | None
    start_time: int | None  # clock ticks since boot; None where there is no /proc
    verb: str
    started: str  # ISO 8601 with the local UTC offset
    command: str

    def describe(self) -> str:
        """`tailings run` (pid 4242 on box, started 2025-01-31T12:00:00+01:00)."""
        return f"`tailings {self.verb}` (pid {self.pid} on {self.hostname}, started {self.started})"

    def same_host(self) -> bool:
        return self.hostname == socket.gethostname()

    def stale_reason(self) -> str | None:
        """Why this holder is certainly gone, or None if it may still run (or cannot be checked:
        another host)."""
        if not self.same_host():
            return None
        boot_id = _boot_id()
        if self.boot_id and boot_id and self.boot_id != boot_id:
            return "no longer running: the machine restarted since"
        state = process_state(self.pid)
        if state is None or state[0] in "ZX":
            return "no longer running"
        if self.start_time is not None and state[1] is not None and state[1] != self.start_time:
            return "no longer running; its pid now belongs to another process"
        return None


@dataclass(frozen=True)
class OutputLock:
    """A held lock: its file, our own record, and the stale holder taken over, if any."""

    path: Path
    holder: LockHolder
    took_over: LockHolder | None = None
    took_over_because: str | None = None

    @property
    def note(self) -> str | None:
        """The one line to print when a stale lock was taken over."""
        if self.took_over is None:
            return None
        gone = self.took_over
        return (
            f"took over the lock of pid {gone.pid} ({self.took_over_because}) on "
            f"{self.path.parent}: it was `tailings {gone.verb}` on {gone.hostname}, "
            f"started {gone.started}"
        )


def lock_holder(folder: str | os.PathLike) -> LockHolder | None:
    """The holder of `folder`'s lock if it may still be running, else None (no lock, a stale
    one, or an unreadable one). Read-only: a stale lock is left for the next job to take over.
    A holder on another host is returned as it cannot be checked (`LockHolder.same_host`)."""
    try:
        holder = _read(Path(folder) / LOCK_NAME)[0]
    except (OSError, ValueError):
        return None
    return holder if holder.stale_reason() is None else None


@contextlib.contextmanager
def output_lock(
    folder: str | os.PathLike, verb: str, say: Callable[[str], None] | None = None
) -> Iterator[OutputLock]:
    """Hold `folder`'s lock for the block (creating the folder if needed); raise `OutputBusy`
    naming the holder if another job has it. A stale lock is taken over and `say` told so.
    Released when the block ends, however it ends, if the lock file is still ours."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = _acquire(folder, verb)
    if lock.note and say is not None:
        say(lock.note)
    try:
        yield lock
    finally:
        _release(lock)


def lock_local_output(
    output: str, verb: str, say: Callable[[str], None] | None = None
) -> contextlib.AbstractContextManager[OutputLock | None]:
    """`output_lock` for a local output path; nothing for a URL (gs://...), which is not locked."""
    if "://" in output:
        return contextlib.nullcontext()
    return output_lock(output, verb, say)


# --------------------------------------------------------------------------- internals
def _boot_id() -> str | None:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def process_state(pid: int) -> tuple[str, int | None] | None:
    """(state letter, start time in ticks) of a live pid, or None if there is no such process.

    Where /proc is missing the state is "?" and the start time None (liveness by signal 0)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        stat = None
    if stat is not None:
        # The command name (field 2) is in parentheses and may hold spaces and ")": split after
        # the last one; what follows starts at field 3 (state), so field 22 is index 19.
        fields = stat.rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's process: alive
    return "?", None


def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22), or None
    when no such process runs here (a zombie, killed but not yet reaped, counts as gone); 0
    where there is no /proc and only "a process with this pid exists" can be told.

    A pid alone is not an identity: the kernel reuses pids, so a dead job's pid may belong to an
    unrelated process by the time anyone looks. The start time tells them apart (the Pusher
    names its temporary folders with both, `components.pusher.temp_name`)."""
    state = process_state(pid)
    if state is None or state[0] in "ZX":
        return None
    return 0 if state[1] is None else state[1]


def process_is_alive(pid: int, start_ticks: int) -> bool:
    """Whether process `pid` on this host is still the process that started at `start_ticks`."""
    return process_start_ticks(pid) == start_ticks


def _me(verb: str) -> LockHolder:
    state = process_state(os.getpid())
    return LockHolder(
        pid=os.getpid(),
        hostname=socket.gethostname(),
        boot_id=_boot_id(),
        start_time=state[1] if state else None,
        verb=verb,
        started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        command=shlex.join(sys.argv),
    )


def _read(path: Path) -> tuple[LockHolder, bytes, int]:
    """The lock's holder, raw bytes and inode; OSError if absent, ValueError if not ours."""
    with open(path, "rb") as fh:
        raw = fh.read()
        inode = os.fstat(fh.fileno()).st_ino
    try:
        data = json.loads(raw)
        holder = LockHolder(**{k: data[k] for k in LockHolder.__dataclass_fields__})
        if not isinstance(holder.pid, int) or holder.pid <= 0:
            raise ValueError(f"pid {holder.pid!r}")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"not a tailings lock file ({type(err).__name__}: {err})") from None
    return holder, raw, inode


@contextlib.contextmanager
def _folder_guard(folder: Path) -> Iterator[None]:
    """Serialise lock changes in `folder` between processes on this host (see module doc)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # no flock here (some network filesystems): the take-over checks its rename
        yield
    finally:
        os.close(fd)  # also drops the flock


def _create(path: Path, raw: bytes) -> int | None:
    """Create the lock file with `raw` in it, atomically; its inode, or None if it exists."""
    temp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    with open(temp, "xb") as fh:
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())
        inode = os.fstat(fh.fileno()).st_ino
    try:
        os.link(temp, path)
        return inode
    except FileExistsError:
        return None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
    finally:
        temp.unlink()
    try:  # no hard links on this filesystem
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())
        return os.fstat(fh.fileno()).st_ino


def _busy(folder: Path, holder: LockHolder) -> OutputBusy:
    lock = folder / LOCK_NAME
    if holder.same_host():
        return OutputBusy(
            f"{folder} is in use by {holder.describe()}: wait for it to finish or stop it "
            f"(its lock {lock} goes when it ends)"
        )
    return OutputBusy(
        f"{folder} is in use by {holder.describe()}, which cannot be checked from "
        f"{socket.gethostname()}: wait for it to finish, or delete {lock} if it is gone"
    )


def _acquire(folder: Path, verb: str) -> OutputLock:
    path = folder / LOCK_NAME
    me = _me(verb)
    raw = json.dumps(asdict(me), indent=1).encode() + b"\n"
    for _ in range(100):  # each pass ends in a decision unless another process changes the lock
        with _folder_guard(folder):
            inode = _create(path, raw)
            if inode is not None:
                return OutputLock(path, me)
            try:
                holder, stale_raw, stale_inode = _read(path)
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except (OSError, ValueError) as err:
                raise OutputBusy(
                    f"{path} is in the way and unreadable ({err}); delete it if no "
                    f"`tailings run` or `tailings convert` is using {folder}"
                ) from None
            reason = holder.stale_reason()
            if reason is None:
                raise _busy(folder, holder)
            if not _move_away(path, stale_raw, stale_inode):
                continue  # another process changed the lock first: look again
            inode = _create(path, raw)
            if inode is not None:
                return OutputLock(path, me, took_over=holder, took_over_because=reason)
    raise OutputBusy(f"{path} keeps changing; another job is taking {folder}: try again")


def _move_away(path: Path, stale_raw: bytes, stale_inode: int) -> bool:
    """Remove the stale lock file `path` if it is still the one judged stale; True if removed.

    Renamed (not unlinked) first, so what was removed can be checked: if another process has
    replaced the stale lock with its own live one since we read it, that one is put back."""
    moved = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return False
    try:
        with open(moved, "rb") as fh:
            same = fh.read() == stale_raw and os.fstat(fh.fileno()).st_ino == stale_inode
        if not same:
            with contextlib.suppress(FileExistsError):
                os.link(moved, path)  # a live lock taken by mistake: put it back
        return same
    finally:
        moved.unlink()


def _release(lock: OutputLock) -> None:
    """Delete the lock file if it is still ours (not taken over, not replaced by hand)."""
    with contextlib.suppress(FileNotFoundError, ValueError), _folder_guard(lock.path.parent):
        if _read(lock.path)[0] == lock.holder:
            lock.path.unlink()
