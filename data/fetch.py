"""`tailings fetch-data`: get the study's image/mask pairs into `DEST/img` and `DEST/mask`.

Sources:
- nothing (the default): the study's public repository, github.com/IsasGithub/tailings_seg,
  listed through the GitHub contents API (`data/img_tiff`, `data/mask_tiff`) and downloaded
  from each entry's `download_url`;
- an HTTP(S) URL: a `https://github.com/OWNER/REPO[/tree/REF]` page, or a contents-API base
  such as `https://api.github.com/repos/OWNER/REPO/contents` (anything serving the same JSON);
- a local folder holding `img/` + `mask/`, `data/img_tiff/` + `data/mask_tiff/` (a clone of the
  repository) or `img_tiff/` + `mask_tiff/`.

Every file is written to a temporary name in its destination folder, checked (size and git
blob hash when the listing gives them, then opened and fully read with rasterio) and only then
renamed into place, so an interrupted or failed fetch never leaves a half or broken file.
Files already in place and valid are skipped, so a re-run only fetches what is missing. One
bad file is reported with its reason and never stops the others; a source that cannot be
reached or holds no pairs raises `FetchError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path

from data.config import PairingConfig
from data.errors import TailingsError

# Temporary files are named `.<final name>.<random>.fetch-tmp`, so a later run can tell its own
# leftovers (from a killed process) apart from anything else in the folder.
TEMP_SUFFIX = ".fetch-tmp"
RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
_GITHUB_PAGE = re.compile(
    r"^https?://(?:www\.)?github\.com/(?P<owner>[^/]+)/(?P<repo>[^/#?]+?)(?:\.git)?"
    r"(?:/tree/(?P<ref>[^#?]+?))?/?$"
)


@dataclass(frozen=True)
class FetchConfig:
    """Defaults of `tailings fetch-data`: where the study's pairs live and how to download them.

    `api_url` is the contents-API base used when no source is given; tests point it at a local
    server. `backoff` is the wait before the first retry, doubled for each further one.
    """

    repo_url: str = "https://github.com/IsasGithub/tailings_seg"
    api_url: str = "https://api.github.com/repos/IsasGithub/tailings_seg/contents"
    github_api: str = "https://api.github.com"  # for `--source https://github.com/OWNER/REPO`
    ref: str = "main"
    image_folder: str = "data/img_tiff"  # in the repository
    mask_folder: str = "data/mask_tiff"
    # Local layouts tried in order: (images, masks) relative to the source folder.
    local_layouts: tuple[tuple[str, str], ...] = (
        ("img", "mask"),
        ("data/img_tiff", "data/mask_tiff"),
        ("img_tiff", "mask_tiff"),
    )
    dest_images: str = "img"  # under DEST; what `tailings convert` and the tests expect
    dest_masks: str = "mask"
    study_pairs: int = 114  # how many pairs the study published (for a note when fewer)
    timeout: float = 30.0  # seconds, per connect / read of one request
    retries: int = 3  # extra attempts after a network error or an HTTP 408/429/5xx
    backoff: float = 1.0
    # After this many consecutive network failures the source is taken as gone: the files not
    # yet started fail at once instead of each waiting out its own retries.
    give_up_after: int = 6
    parallel: int = 4  # concurrent downloads / copies
    user_agent: str = "tailings-seg-fetch-data"
    pairing: PairingConfig = PairingConfig()


@dataclass
class FetchResult:
    """What one fetch did: `fetched` and `skipped` count files, the `*_files` lists name them.

    Names are `img/<file>` or `mask/<file>`, relative to `dest`.
    """

    source: str
    dest: Path
    fetched_files: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)  # already present and valid
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    bytes_fetched: int = 0
    pairs: int = 0  # complete image/mask pairs in dest after the fetch
    seconds: float = 0.0

    @property
    def fetched(self) -> int:
        return len(self.fetched_files)

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)

    @property
    def ok(self) -> bool:
        return not self.failed

    def one_line(self) -> str:
        return (
            f"fetched {self.fetched} files ({self.bytes_fetched / 1e6:.1f} MB), "
            f"skipped {self.skipped} already valid, failed {len(self.failed)}; "
            f"{self.pairs} complete pairs in {self.dest} ({self.seconds:.1f} s)"
        )


class FetchError(TailingsError, RuntimeError):
    """The source as a whole is unusable: unreachable, not a known layout, or without pairs."""


@dataclass(frozen=True)
class _Item:
    """One file to fetch: where it comes from and what the listing promises about it."""

    side: str  # destination subfolder: cfg.dest_images or cfg.dest_masks
    name: str
    origin: str  # local path or download URL
    size: int | None = None
    git_sha: str | None = None  # git blob SHA-1, as the GitHub contents API lists it

    @property
    def label(self) -> str:
        return f"{self.side}/{self.name}"


class _ItemFailed(Exception):
    """One file could not be fetched; `network` marks a connection-level problem."""

    def __init__(self, reason: str, network: bool = False, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.network = network
        self.retryable = retryable


def fetch_data(
    source: str | os.PathLike | None,
    dest: Path,
    cfg: FetchConfig = FetchConfig(),
    say: Callable[[str], None] = lambda _msg: None,
) -> FetchResult:
    """Fetch every image/mask file of `source` into `dest/img` and `dest/mask`."""
    start = time.monotonic()
    dest = Path(dest)
    label, items = _list_source(source, dest, cfg)
    images = [i for i in items if i.side == cfg.dest_images]
    masks = [i for i in items if i.side == cfg.dest_masks]
    pairable = _keys(images, cfg.pairing.image_prefix) & _keys(masks, cfg.pairing.mask_prefix)
    if not pairable:
        raise FetchError(
            f"no image/mask pairs in {label}: {len(images)} image and {len(masks)} mask files"
            f" with {'/'.join(cfg.pairing.extensions)} names, none sharing an id"
        )
    say(
        f"{label}: {len(pairable)} pairs ({len(images)} images, {len(masks)} masks)"
        + (f"; the study published {cfg.study_pairs}" if len(pairable) < cfg.study_pairs else "")
    )

    for side in (cfg.dest_images, cfg.dest_masks):
        try:
            (dest / side).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise FetchError(f"cannot create {dest / side}: {err.strerror or err}") from None
        _remove_stale_temps(dest / side)

    result = FetchResult(source=label, dest=dest)
    breaker = _Breaker(cfg.give_up_after)
    total = len(items)
    with ThreadPoolExecutor(max_workers=max(1, cfg.parallel)) as pool:
        futures = {pool.submit(_fetch_one, item, dest, cfg, breaker): item for item in items}
        for done, future in enumerate(as_completed(futures), start=1):
            item = futures[future]
            status, detail, nbytes = future.result()
            if status == "fetched":
                result.fetched_files.append(item.label)
                result.bytes_fetched += nbytes
                say(f"fetched {done}/{total} {item.label} ({_size(nbytes)})")
            elif status == "skipped":
                result.skipped_files.append(item.label)
                say(f"skipped {done}/{total} {item.label} (already present and valid)")
            else:
                result.failed.append((item.label, detail))
                say(f"FAILED  {done}/{total} {item.label}: {detail}")
    for names in (result.fetched_files, result.skipped_files):
        names.sort(key=_natural_key)
    result.failed.sort(key=lambda f: _natural_key(f[0]))
    result.pairs = _complete_pairs(dest, cfg)
    result.seconds = round(time.monotonic() - start, 3)
    return result


# --- sources -------------------------------------------------------------------------------


def _list_source(
    source: str | os.PathLike | None, dest: Path, cfg: FetchConfig
) -> tuple[str, list[_Item]]:
    """(a label naming the source, the files it offers)."""
    if source is None:
        return _list_http(cfg.api_url, cfg.ref, cfg, label=cfg.repo_url)
    text = os.fspath(source)
    if text.startswith("file://"):
        text = urllib.request.url2pathname(urllib.parse.urlparse(text).path)
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        if not text.lower().startswith(("http://", "https://")):
            raise FetchError(f"unsupported source {text!r}: give an http(s) URL or a folder")
        page = _GITHUB_PAGE.match(text)
        if page:
            api = f"{cfg.github_api.rstrip('/')}/repos/{page['owner']}/{page['repo']}/contents"
            return _list_http(api, page["ref"] or cfg.ref, cfg, label=text)
        return _list_http(text, cfg.ref, cfg, label=text)
    return _list_local(Path(text), dest, cfg)


def _list_local(root: Path, dest: Path, cfg: FetchConfig) -> tuple[str, list[_Item]]:
    if not root.is_dir():
        raise FetchError(f"source folder {root} does not exist (or is not a folder)")
    for images_rel, masks_rel in cfg.local_layouts:
        images_dir, masks_dir = root / images_rel, root / masks_rel
        if images_dir.is_dir() and masks_dir.is_dir():
            break
    else:
        tried = ", ".join(f"{i}/ + {m}/" for i, m in cfg.local_layouts)
        raise FetchError(f"source folder {root} has none of the known layouts ({tried})")
    for src, side in ((images_dir, cfg.dest_images), (masks_dir, cfg.dest_masks)):
        if _same_folder(src, dest / side):
            raise FetchError(f"source {src} is the destination {dest / side}; nothing to fetch")
    items = []
    for folder, side in ((images_dir, cfg.dest_images), (masks_dir, cfg.dest_masks)):
        for path in sorted(folder.iterdir(), key=lambda p: _natural_key(p.name)):
            if path.suffix.lower() in cfg.pairing.extensions and path.is_file():
                items.append(_Item(side, path.name, str(path), size=path.stat().st_size))
    return str(root), items


def _list_http(api: str, ref: str, cfg: FetchConfig, label: str) -> tuple[str, list[_Item]]:
    items = []
    for folder, side in ((cfg.image_folder, cfg.dest_images), (cfg.mask_folder, cfg.dest_masks)):
        url = f"{api.rstrip('/')}/{urllib.parse.quote(folder)}"
        if ref:
            url += "?" + urllib.parse.urlencode({"ref": ref})
        try:
            body = _retrying(lambda url=url: _get(url, cfg), cfg)
        except _ItemFailed as err:
            hint = (
                "; are you offline? Without internet, copy from a local folder with"
                " `--source DIR` (a clone of the repository, or a folder with img/ and mask/)"
                if err.network
                else ""
            )
            raise FetchError(
                f"cannot list {folder} of {label} ({url}): {err.reason}{hint}"
            ) from None
        try:
            entries = json.loads(body)
        except ValueError:
            raise FetchError(
                f"{label}: {url} did not answer with a contents-API JSON listing"
            ) from None
        if not isinstance(entries, list):
            message = entries.get("message") if isinstance(entries, dict) else None
            raise FetchError(
                f"{label}: {url} is not a folder listing" + (f" ({message})" if message else "")
            )
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("type", "file") != "file":
                continue
            name = str(entry.get("name", ""))
            if Path(name).suffix.lower() not in cfg.pairing.extensions:
                continue
            link = entry.get("download_url")
            if not link:
                continue
            size = entry.get("size")
            items.append(
                _Item(
                    side,
                    name,
                    urllib.parse.urljoin(url, link),
                    size=size if isinstance(size, int) else None,
                    git_sha=entry.get("sha") or None,
                )
            )
    return label, items


# --- one file ------------------------------------------------------------------------------


class _Breaker:
    """Counts consecutive network failures across threads; trips at `limit`."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._count = 0
        self._lock = threading.Lock()
        self.tripped = threading.Event()

    def record(self, network_failure: bool) -> None:
        with self._lock:
            self._count = self._count + 1 if network_failure else 0
            if self._limit > 0 and self._count >= self._limit:
                self.tripped.set()


def _fetch_one(
    item: _Item, dest: Path, cfg: FetchConfig, breaker: _Breaker
) -> tuple[str, str, int]:
    """("fetched" | "skipped" | "failed", reason when failed, bytes written)."""
    if not _safe_name(item.name):
        return "failed", f"refused unsafe file name {item.name!r}", 0
    final = dest / item.side / item.name
    existing_unreadable = False
    if final.exists() or final.is_symlink():
        problem, unreadable = _problem(final, item)
        if problem is None:
            return "skipped", "", 0
        existing_unreadable = unreadable
    if breaker.tripped.is_set():
        return (
            "failed",
            _with_cleanup(
                "not attempted: the source stopped answering", final, existing_unreadable
            ),
            0,
        )
    try:
        fd, temp_name = tempfile.mkstemp(
            prefix=f".{item.name}.", suffix=TEMP_SUFFIX, dir=final.parent
        )
    except OSError as err:
        return "failed", f"cannot write in {final.parent}: {err.strerror or err}", 0
    os.close(fd)
    temp = Path(temp_name)
    try:
        if item.origin.lower().startswith(("http://", "https://")):
            _retrying(lambda: _download_checked(item, temp, cfg), cfg)
        else:
            _copy_checked(item, temp)
        problem, _ = _problem(temp, None)
        if problem is not None:
            raise _ItemFailed(problem)
        nbytes = temp.stat().st_size
        os.replace(temp, final)
        breaker.record(False)
        return "fetched", "", nbytes
    except _ItemFailed as err:
        breaker.record(err.network)
        return "failed", _with_cleanup(err.reason, final, existing_unreadable), 0
    except OSError as err:  # the destination side: permissions, a full disk, a vanished folder
        return "failed", f"cannot write {final}: {err.strerror or err}", 0
    finally:
        temp.unlink(missing_ok=True)


def _with_cleanup(reason: str, final: Path, existing_unreadable: bool) -> str:
    """Remove an unreadable file already in dest that could not be replaced; say so."""
    if existing_unreadable:
        final.unlink(missing_ok=True)
        return f"{reason}; removed the unreadable copy that was in place"
    return reason


def _copy_checked(item: _Item, temp: Path) -> None:
    try:
        shutil.copyfile(item.origin, temp)
    except OSError as err:
        raise _ItemFailed(f"cannot copy {item.origin}: {err.strerror or err}") from None
    _check_integrity(item, temp)


def _download_checked(item: _Item, temp: Path, cfg: FetchConfig) -> None:
    """Download `item` into `temp` (truncating it), then check size and hash."""
    request = urllib.request.Request(item.origin, headers={"User-Agent": cfg.user_agent})
    try:
        with (
            urllib.request.urlopen(request, timeout=cfg.timeout) as response,
            temp.open("wb") as fh,
        ):
            shutil.copyfileobj(response, fh, length=1 << 20)
    except OSError as err:  # urllib.error.*, socket timeouts and resets are all OSError
        raise _network_failure(err, item.origin) from None
    except HTTPException as err:  # IncompleteRead and friends: the connection broke mid-file
        raise _ItemFailed(
            f"download of {item.origin} broke off: {type(err).__name__}",
            network=True,
            retryable=True,
        ) from None
    _check_integrity(item, temp)


def _check_integrity(item: _Item, path: Path) -> None:
    """Size and git blob hash against what the source listed (a truncated download fails)."""
    size = path.stat().st_size
    if item.size is not None and size != item.size:
        raise _ItemFailed(f"got {size} bytes, the source lists {item.size}", retryable=True)
    if item.git_sha:
        digest = hashlib.sha1(f"blob {size}\0".encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != item.git_sha:
            raise _ItemFailed(
                f"content hash {digest.hexdigest()[:12]} does not match the listed git sha "
                f"{item.git_sha[:12]}",
                retryable=True,
            )


def _problem(path: Path, item: _Item | None) -> tuple[str | None, bool]:
    """(why `path` is not a good copy of `item`, or None; whether it is unreadable at all)."""
    reason = _raster_problem(path)
    if reason is not None:
        return reason, True
    if item is not None:
        try:
            _check_integrity(item, path)
        except _ItemFailed as err:
            return err.reason, False
    return None, False


def _raster_problem(path: Path) -> str | None:
    """None when rasterio opens `path` and reads every band; else why not."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. NotGeoreferencedWarning: still readable
            with rasterio.open(path) as src:
                if src.count < 1 or src.width < 1 or src.height < 1:
                    return f"not a usable raster ({src.count} bands, {src.width}x{src.height})"
                src.read()
    except (RasterioError, OSError, ValueError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        text = text.replace(str(path), "file")
        if _looks_like_lfs_pointer(path):
            text = "a Git LFS pointer, not the GeoTIFF itself"
        return f"not a readable GeoTIFF: {text}"
    return None


def _looks_like_lfs_pointer(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(40).startswith(b"version https://git-lfs")
    except OSError:
        return False


# --- network -------------------------------------------------------------------------------


def _get(url: str, cfg: FetchConfig) -> bytes:
    request = urllib.request.Request(
        url,
        headers={"User-Agent": cfg.user_agent, "Accept": "application/vnd.github+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout) as response:
            return response.read()
    except OSError as err:
        raise _network_failure(err, url) from None
    except HTTPException as err:
        raise _ItemFailed(
            f"answer from {url} broke off: {type(err).__name__}", network=True, retryable=True
        ) from None


def _network_failure(err: OSError, url: str) -> _ItemFailed:
    """A readable reason, and whether trying again can help."""
    if isinstance(err, urllib.error.HTTPError):
        reason = f"HTTP {err.code} {err.reason}"
        if err.code == 403 and err.headers.get("X-RateLimit-Remaining") == "0":
            reset = err.headers.get("X-RateLimit-Reset")
            when = time.strftime("%H:%M", time.localtime(int(reset))) if reset else "later"
            reason += f" (GitHub API rate limit reached; try again after {when})"
        return _ItemFailed(reason, retryable=err.code in RETRYABLE_HTTP)
    inner = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(inner, socket.gaierror):
        host = urllib.parse.urlparse(url).hostname
        return _ItemFailed(
            f"cannot resolve host {host} ({inner.strerror})", network=True, retryable=True
        )
    if isinstance(inner, TimeoutError):
        return _ItemFailed("timed out", network=True, retryable=True)
    if isinstance(inner, ConnectionRefusedError):
        return _ItemFailed("connection refused", network=True, retryable=True)
    if isinstance(inner, OSError):
        return _ItemFailed(
            inner.strerror or str(inner) or type(inner).__name__, network=True, retryable=True
        )
    return _ItemFailed(str(inner), network=True, retryable=True)


def _retrying(action: Callable[[], object], cfg: FetchConfig):
    """Run `action`, retrying retryable failures with exponential backoff."""
    for attempt in range(cfg.retries + 1):
        try:
            return action()
        except _ItemFailed as err:
            if not err.retryable or attempt == cfg.retries:
                if attempt:
                    err.reason += f" (after {attempt + 1} attempts)"
                raise
            time.sleep(cfg.backoff * 2**attempt)
    raise AssertionError("unreachable")


# --- helpers -------------------------------------------------------------------------------


def _keys(items: list[_Item], prefix: str) -> set[str]:
    keys = set()
    for item in items:
        stem = Path(item.name).stem
        keys.add(
            stem[len(prefix) :] if stem.startswith(prefix) and len(stem) > len(prefix) else stem
        )
    return keys


def _complete_pairs(dest: Path, cfg: FetchConfig) -> int:
    from data.pairs import discover_pairs

    specs = discover_pairs(dest / cfg.dest_images, dest / cfg.dest_masks, cfg.pairing)
    return sum(1 for s in specs if s.image and s.mask and not s.duplicates)


def _remove_stale_temps(folder: Path) -> None:
    """Temporary files of an earlier, killed fetch: ours by name, never complete."""
    for path in folder.glob(f".*{TEMP_SUFFIX}"):
        path.unlink(missing_ok=True)


def _safe_name(name: str) -> bool:
    return bool(name) and name == Path(name).name and not name.startswith(".") and "\\" not in name


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 100_000 else f"{nbytes / 1e3:.0f} kB"


def _natural_key(text: str) -> tuple:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text))
