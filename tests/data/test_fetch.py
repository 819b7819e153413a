"""`tailings fetch-data`: local folders and a real HTTP server on 127.0.0.1, no internet."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from data.fetch import TEMP_SUFFIX, FetchConfig, FetchError, fetch_data
from tests.fixtures.geotiffs import make_pair, make_pairs, read_pixels

# Quick and deterministic: no real waiting between retries.
FAST = FetchConfig(timeout=5.0, retries=2, backoff=0.0, parallel=2)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _no_leftovers(dest: Path) -> None:
    assert not list(dest.rglob(f"*{TEMP_SUFFIX}")), "temporary files left behind"


@pytest.mark.parametrize(
    "images_rel, masks_rel",
    [("img", "mask"), ("data/img_tiff", "data/mask_tiff"), ("img_tiff", "mask_tiff")],
)
def test_local_layouts_arrive_byte_for_byte(tmp_path, images_rel, masks_rel):
    src = tmp_path / "src"
    for i in (1, 2, 10):
        make_pair(src / images_rel, src / masks_rel, str(i), seed=i)
    (src / images_rel / "notes.txt").write_text("not a raster, not fetched\n")
    lines: list[str] = []

    result = fetch_data(str(src), tmp_path / "dest", FAST, say=lines.append)

    assert result.ok and result.failed == []
    assert result.fetched_files == [
        "img/img_1.tif",
        "img/img_2.tif",
        "img/img_10.tif",
        "mask/mask_1.tif",
        "mask/mask_2.tif",
        "mask/mask_10.tif",
    ]
    assert result.pairs == 3 and result.skipped_files == []
    assert (result.fetched, result.skipped) == (6, 0)  # counts; the lists name the files
    expected_images = {k: v for k, v in _files(src / images_rel).items() if k != "notes.txt"}
    assert _files(tmp_path / "dest" / "img") == expected_images
    assert _files(tmp_path / "dest" / "mask") == _files(src / masks_rel)
    assert result.bytes_fetched == sum(p.stat().st_size for p in (tmp_path / "dest").rglob("*.tif"))
    assert lines[0].startswith(f"{src}: 3 pairs (3 images, 3 masks)")
    assert sum(line.startswith("fetched ") for line in lines) == 6
    assert any(line.startswith("fetched 6/6 ") for line in lines)
    _no_leftovers(tmp_path / "dest")


def test_second_call_skips_valid_files_and_fetches_only_new_ones(tmp_path):
    src = tmp_path / "src"
    make_pairs(src, 2)
    dest = tmp_path / "dest"
    fetch_data(str(src), dest, FAST)
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*.tif")}
    make_pair(src / "img", src / "mask", "3", seed=3)

    again = fetch_data(str(src), dest, FAST)

    assert again.fetched_files == ["img/img_3.tif", "mask/mask_3.tif"]
    assert again.skipped == 4 and again.failed == [] and again.pairs == 3
    assert all(p.stat().st_mtime_ns == t for p, t in before.items()), "valid files rewritten"


def test_corrupt_source_file_is_reported_and_the_good_ones_still_arrive(tmp_path):
    src = tmp_path / "src"
    images, masks = make_pairs(src, 4)
    (images / "img_2.tif").write_text("this is not a GeoTIFF\n")
    truncated = masks / "mask_3.tif"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    dest = tmp_path / "dest"

    result = fetch_data(str(src), dest, FAST)

    assert [name for name, _ in result.failed] == ["img/img_2.tif", "mask/mask_3.tif"]
    assert all("not a readable GeoTIFF" in reason for _, reason in result.failed)
    assert result.fetched == 6 and result.pairs == 2
    assert not (dest / "img" / "img_2.tif").exists()
    assert not (dest / "mask" / "mask_3.tif").exists()
    np.testing.assert_array_equal(
        read_pixels(dest / "img" / "img_4.tif"), read_pixels(images / "img_4.tif")
    )
    _no_leftovers(dest)


def test_broken_file_in_dest_is_replaced(tmp_path):
    src = tmp_path / "src"
    images, _ = make_pairs(src, 2)
    dest = tmp_path / "dest"
    fetch_data(str(src), dest, FAST)
    (dest / "img" / "img_1.tif").write_bytes(b"II*\x00 half a header")
    (dest / "mask" / "mask_2.tif").unlink()

    result = fetch_data(str(src), dest, FAST)

    assert result.fetched_files == ["img/img_1.tif", "mask/mask_2.tif"]
    assert result.skipped_files == ["img/img_2.tif", "mask/mask_1.tif"]
    assert (dest / "img" / "img_1.tif").read_bytes() == (images / "img_1.tif").read_bytes()


def test_broken_dest_file_is_removed_when_the_source_copy_is_broken_too(tmp_path):
    src = tmp_path / "src"
    images, _ = make_pairs(src, 1)
    dest = tmp_path / "dest"
    (dest / "img").mkdir(parents=True)
    (dest / "img" / "img_1.tif").write_text("broken\n")
    (images / "img_1.tif").write_text("also broken\n")
    (dest / "img" / f".img_1.tif.x1y2{TEMP_SUFFIX}").write_text("left by a killed run\n")

    result = fetch_data(str(src), dest, FAST)

    ((name, reason),) = result.failed
    assert name == "img/img_1.tif" and "removed the unreadable copy" in reason
    assert not (dest / "img" / "img_1.tif").exists()
    _no_leftovers(dest)


def test_unusable_local_sources_raise_a_clear_error(tmp_path):
    with pytest.raises(FetchError, match=r"nowhere.*does not exist"):
        fetch_data(str(tmp_path / "nowhere"), tmp_path / "dest", FAST)
    (tmp_path / "flat").mkdir()
    with pytest.raises(FetchError, match=r"flat has none of the known layouts.*img/ \+ mask/"):
        fetch_data(str(tmp_path / "flat"), tmp_path / "dest", FAST)
    (tmp_path / "empty" / "img").mkdir(parents=True)
    (tmp_path / "empty" / "mask").mkdir()
    with pytest.raises(FetchError, match=r"no image/mask pairs in .*empty"):
        fetch_data(str(tmp_path / "empty"), tmp_path / "dest", FAST)
    make_pairs(tmp_path / "same", 1)
    (tmp_path / "a_file").write_text("not a folder\n")
    with pytest.raises(FetchError, match=r"cannot create .*a_file/img"):
        fetch_data(str(tmp_path / "same"), tmp_path / "a_file", FAST)
    with pytest.raises(FetchError, match="is the destination"):
        fetch_data(str(tmp_path / "same"), tmp_path / "same", FAST)


# --- HTTP: a fake GitHub contents API on 127.0.0.1 ------------------------------------------


def _git_sha(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class FakeGitHub:
    """Serves `/repos/o/r/contents/<folder>?ref=...` listings and `/raw/<folder>/<file>`."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders  # repository folder -> local folder with the files
        self.requests: list[str] = []
        self.fail_first: dict[str, int] = {}  # raw path -> 500 answers before the real one
        self.missing: set[str] = set()  # raw paths listed but answering 404
        self.tampered: set[str] = set()  # raw paths serving other bytes than listed
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.raw_base = self.base  # where listed download_urls point
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                fake.requests.append(self.path)
                status, body = fake.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def answer(self, path: str) -> tuple[int, bytes]:
        parts = urlsplit(path)
        prefix = "/repos/o/r/contents/"
        if parts.path.startswith(prefix):
            folder = self.folders.get(parts.path[len(prefix) :])
            if folder is None:
                return 404, b'{"message": "Not Found"}'
            listing = [
                {
                    "name": p.name,
                    "type": "file",
                    "size": p.stat().st_size,
                    "sha": _git_sha(p.read_bytes()),
                    "download_url": f"{self.raw_base}/raw/{parts.path[len(prefix) :]}/{p.name}",
                }
                for p in sorted(folder.iterdir())
            ]
            listing.append({"name": "sub", "type": "dir", "download_url": None})
            return 200, json.dumps(listing).encode()
        if parts.path.startswith("/raw/"):
            rel = parts.path[len("/raw/") :]
            if self.fail_first.get(rel, 0) > 0:
                self.fail_first[rel] -= 1
                return 500, b"try again"
            if rel in self.missing:
                return 404, b"gone"
            folder_name, name = rel.rsplit("/", 1)
            data = (self.folders[folder_name] / name).read_bytes()
            return 200, data[:-1] + bytes([data[-1] ^ 0xFF]) if rel in self.tampered else data
        return 404, b""

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def github(tmp_path):
    images, masks = make_pairs(tmp_path / "repo", 3)
    with FakeGitHub({"data/img_tiff": images, "data/mask_tiff": masks}) as fake:
        yield fake


def test_http_source_lists_downloads_retries_and_reports_failures(github, tmp_path):
    cfg = FetchConfig(
        api_url=f"{github.base}/repos/o/r/contents", timeout=5.0, retries=2, backoff=0.0
    )
    github.fail_first["data/img_tiff/img_1.tif"] = 2  # two 500s, then the file
    github.missing.add("data/mask_tiff/mask_2.tif")
    github.tampered.add("data/img_tiff/img_3.tif")
    dest = tmp_path / "dest"
    lines: list[str] = []

    result = fetch_data(None, dest, cfg, say=lines.append)

    assert "/repos/o/r/contents/data/img_tiff?ref=main" in github.requests
    assert github.requests.count("/raw/data/img_tiff/img_1.tif") == 3
    assert result.fetched_files == [
        "img/img_1.tif",
        "img/img_2.tif",
        "mask/mask_1.tif",
        "mask/mask_3.tif",
    ]
    failed = dict(result.failed)
    assert set(failed) == {"img/img_3.tif", "mask/mask_2.tif"}
    assert failed["mask/mask_2.tif"].startswith("HTTP 404")
    assert "does not match the listed git sha" in failed["img/img_3.tif"]
    assert "after 3 attempts" in failed["img/img_3.tif"]
    assert result.pairs == 1 and not (dest / "img" / "img_3.tif").exists()
    assert (dest / "img" / "img_1.tif").read_bytes() == (
        tmp_path / "repo" / "img" / "img_1.tif"
    ).read_bytes()
    assert any(line.startswith("FAILED ") and "mask/mask_2.tif" in line for line in lines)
    _no_leftovers(dest)

    github.missing.clear()
    github.tampered.clear()
    again = fetch_data(None, dest, cfg)
    assert again.fetched_files == ["img/img_3.tif", "mask/mask_2.tif"]
    assert again.skipped == 4 and again.ok and again.pairs == 3


def test_github_page_url_maps_to_the_contents_api_with_its_ref(github, tmp_path):
    cfg = FetchConfig(github_api=github.base, retries=0, backoff=0.0)

    result = fetch_data("https://github.com/o/r/tree/dev", tmp_path / "dest", cfg)

    assert "/repos/o/r/contents/data/mask_tiff?ref=dev" in github.requests
    assert result.ok and result.pairs == 3


def test_http_listing_errors_name_the_source(github, tmp_path):
    cfg = FetchConfig(retries=0, backoff=0.0)
    with pytest.raises(FetchError, match=r"cannot list data/img_tiff of .*/repos/o/nope.*404"):
        fetch_data(f"{github.base}/repos/o/nope/contents", tmp_path / "dest", cfg)


def test_unreachable_source_is_a_clear_offline_error(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = FetchConfig(api_url=f"http://127.0.0.1:{port}/repos/o/r/contents", retries=1, backoff=0)

    with pytest.raises(FetchError) as err:
        fetch_data(None, tmp_path / "dest", cfg)

    message = str(err.value)
    assert cfg.repo_url in message and "connection refused" in message
    assert "after 2 attempts" in message and "offline" in message and "--source DIR" in message
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").rglob("*.tif"))


def test_source_that_stops_answering_fails_the_rest_without_waiting(github, tmp_path):
    with socket.socket() as probe:  # downloads go to a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        github.raw_base = f"http://127.0.0.1:{probe.getsockname()[1]}"
    cfg = FetchConfig(
        api_url=f"{github.base}/repos/o/r/contents",
        retries=0,
        backoff=0.0,
        parallel=1,
        give_up_after=2,
    )

    result = fetch_data(None, tmp_path / "dest", cfg)

    assert result.fetched_files == [] and len(result.failed) == 6
    reasons = [reason for _, reason in result.failed]
    assert sum("connection refused" in r for r in reasons) == 2
    assert sum(r.startswith("not attempted: the source stopped answering") for r in reasons) == 4
