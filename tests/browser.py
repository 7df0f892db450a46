"""A real headless Chromium driven through chromedriver's WebDriver HTTP API (stdlib only).

Used to check the HTML report the way a reviewer sees it: rendered, screenshotted, with the
browser's console log and resource timing read back.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROME_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1600",
]


def find_browser() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    def __init__(self, base: str, session_id: str) -> None:
        self.base, self.id = base, session_id

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base}/session/{self.id}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read())["value"]

    def open(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def script(self, source: str) -> Any:
        return self.call("POST", "/execute/sync", {"script": source, "args": []})

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("GET", "/screenshot"))

    def console(self) -> list[dict[str, Any]]:
        return self.call("POST", "/se/log", {"type": "browser"})


@contextmanager
def chromium() -> Iterator[Session]:
    found = find_browser()
    assert found is not None
    browser, driver = found
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as profile:
        process = subprocess.Popen(
            [driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"{base}/status", timeout=2).read()
                    break
                except (urllib.error.URLError, ConnectionError):
                    if time.monotonic() > deadline:
                        raise RuntimeError("chromedriver did not start") from None
                    time.sleep(0.1)
            capabilities = {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": browser,
                    "args": [*CHROME_ARGS, f"--user-data-dir={Path(profile) / 'p'}"],
                },
                "goog:loggingPrefs": {"browser": "ALL"},
            }
            request = urllib.request.Request(
                f"{base}/session",
                data=json.dumps({"capabilities": {"alwaysMatch": capabilities}}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as reply:
                session_id = json.loads(reply.read())["value"]["sessionId"]
            session = Session(base, session_id)
            try:
                yield session
            finally:
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(
                        urllib.request.Request(f"{base}/session/{session_id}", method="DELETE"),
                        timeout=30,
                    ).read()
        finally:
            process.terminate()
            process.wait(timeout=10)
