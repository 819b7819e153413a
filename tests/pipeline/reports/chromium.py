"""Render a page in headless Chromium and record every request the page makes.

The DevTools protocol runs over `--remote-debugging-pipe` (fds 3 and 4, NUL-separated JSON),
so no websocket library is needed. `Network.requestWillBeSent` lists the page's own requests,
the document included; Chromium's background traffic (update checks and the like, which no
flag fully silences) belongs to no page and is not counted, unlike in a browser-wide net log.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)
# [images, images that failed to decode], computed in the page after `load`.
IMAGE_CHECK = (
    "[document.images.length,"
    " Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length]"
)


def find_chromium() -> str | None:
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


@dataclass
class Rendered:
    requests: list[str]  # every URL the page asked for, the document first
    screenshot: bytes  # PNG of the whole page
    images: int  # <img> elements on the page
    broken_images: int  # of those, how many did not decode


class _Pipe:
    """Chromium's end of the protocol: commands to its fd 3, replies and events from its fd 4."""

    def __init__(self, binary: str, profile: str, width: int, height: int) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_fds() -> None:  # in the child, before exec
            read_end, write_end = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
            + ["about:blank"],
            pass_fds=(3, 4),
            preexec_fn=wire_fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        reply = self.wait_for(lambda m, i=self._next_id: m.get("id") == i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_for(self, wanted, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                self.events.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self._buffer += chunk

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError, EOFError, TimeoutError):
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def render(page: Path, binary: str, width: int = 1280, height: int = 900) -> Rendered:
    """Open `page` from disk in a fresh profile; wait for `load`; screenshot the full page."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        pipe = _Pipe(binary, profile, width, height)
        try:
            target = next(
                t for t in pipe.call("Target.getTargets")["targetInfos"] if t["type"] == "page"
            )
            session = pipe.call(
                "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
            )["sessionId"]
            pipe.call("Network.enable", session=session)
            pipe.call("Page.enable", session=session)
            pipe.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
            pipe.wait_for(lambda m: m.get("method") == "Page.loadEventFired")
            counts = pipe.call(
                "Runtime.evaluate",
                {"expression": IMAGE_CHECK, "returnByValue": True},
                session=session,
            )["result"]["value"]
            size = pipe.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            shot = pipe.call(
                "Page.captureScreenshot",
                {"format": "png", "captureBeyondViewport": True, "clip": clip},
                session=session,
            )
        finally:
            pipe.close()
    requests = [
        m["params"]["request"]["url"]
        for m in pipe.events
        if m.get("method") == "Network.requestWillBeSent"
    ]
    return Rendered(
        requests=requests,
        screenshot=base64.b64decode(shot["data"]),
        images=counts[0],
        broken_images=counts[1],
    )
