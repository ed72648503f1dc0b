"""The HTML report in a real browser: it loads with no network request and no console message.

The page is served from a local http.server and opened by headless Chromium,
driven over the DevTools protocol (``--remote-debugging-pipe``, so no extra
library). The page's own requests and console messages are attributed to it
by the protocol; Chromium's own background traffic (time sync, sign-in) is not
the page's and is ignored. Every non-local request goes to a recording proxy
that answers 502, so nothing leaves the machine. A control page that does reach
out proves both recorders work. Skipped, saying why, where Chromium is absent.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import select
import shutil
import socketserver
import subprocess
import threading
import time

import pytest
import verdict_samples as samples

from cbpt_guard.report import render

CHROMIUM = next((found for name in ("chromium", "chromium-browser", "google-chrome")
                 if (found := shutil.which(name))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium); "
                                                         "the offline-loading check needs a real browser")


class _RecordingProxy(socketserver.ThreadingTCPServer):
    """An HTTP proxy that forwards nothing: it records each request line and answers 502."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline(65536).decode("latin-1").strip()
        if line:
            self.server.requests.append(line)
        self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class _PageHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        self.server.paths.append(self.path)


@contextlib.contextmanager
def _running(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _above_stdio(fd: int) -> int:
    """A duplicate of ``fd`` numbered above 4, so moving it onto 3 or 4 in the child never dup2s it onto itself."""
    duplicates = [os.dup(fd)]
    while duplicates[-1] <= 4:
        duplicates.append(os.dup(fd))
    for extra in duplicates[:-1]:
        os.close(extra)
    return duplicates[-1]


class DevTools:
    """Headless Chromium driven over ``--remote-debugging-pipe``: commands in on fd 3, replies out on fd 4."""

    def __init__(self, flags: list[str]):
        command_read, self._commands = os.pipe()
        self._replies, reply_write = os.pipe()
        child_read, child_write = _above_stdio(command_read), _above_stdio(reply_write)
        os.close(command_read)
        os.close(reply_write)

        def wire_pipes():  # runs in the child before exec
            os.dup2(child_read, 3)
            os.dup2(child_write, 4)

        self.process = subprocess.Popen([CHROMIUM, *flags, "--remote-debugging-pipe", "about:blank"],
                                        preexec_fn=wire_pipes, close_fds=False, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(child_read)
        os.close(child_write)
        self._buffer = b""
        self._last_id = 0
        self.events: list[dict] = []

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and wait for its reply; events seen meanwhile are kept in ``events``."""
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        wanted = self._last_id
        reply = self.wait_for(lambda m: m.get("id") == wanted)
        assert reply is not None and "error" not in reply, (method, reply)
        return reply["result"]

    def wait_for(self, predicate, timeout: float = 30.0) -> dict | None:
        """The first message matching ``predicate`` within ``timeout`` seconds (None if none came)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if predicate(message):
                    return message
                if "method" in message:
                    self.events.append(message)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._replies], [], [], left)
            if ready:
                chunk = os.read(self._replies, 1 << 20)
                if not chunk:
                    return None
                self._buffer += chunk

    def close(self) -> None:
        """Close the browser and the pipes."""
        with contextlib.suppress(OSError, AssertionError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self._commands)
        os.close(self._replies)


def load(folder, name: str, profile) -> dict:
    """Open ``folder/name`` over local HTTP in headless Chromium and report what the page did."""
    pages = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_PageHandler, directory=str(folder)))
    pages.paths = []
    with _running(_RecordingProxy()) as proxy, _running(pages):
        url = f"http://127.0.0.1:{pages.server_address[1]}/{name}"
        browser = DevTools(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                            "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-extensions",
                            f"--user-data-dir={profile}",
                            f"--proxy-server=http://127.0.0.1:{proxy.server_address[1]}"])
        try:
            page = next(t for t in browser.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
            session = browser.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})[
                "sessionId"]
            for domain in ("Network", "Runtime", "Log", "Page"):
                browser.call(f"{domain}.enable", session=session)
            browser.call("Page.navigate", {"url": url}, session=session)
            loaded = browser.wait_for(lambda m: m.get("method") == "Page.loadEventFired")
            browser.wait_for(lambda m: False, timeout=1.0)  # let late requests and messages arrive
            dom = browser.call("Runtime.evaluate", {"expression": "document.documentElement.outerHTML"},
                               session=session)["result"]["value"]
        finally:
            browser.close()
        mine = [e for e in browser.events if e.get("sessionId") == session]
        return {
            "loaded": loaded is not None,
            "requests": [e["params"]["request"]["url"] for e in mine if e["method"] == "Network.requestWillBeSent"
                         and not e["params"]["request"]["url"].startswith("data:")],
            "console": [json.dumps(e["params"])[:300] for e in mine if e["method"] in (
                "Runtime.consoleAPICalled", "Runtime.exceptionThrown", "Log.entryAdded")],
            "served": list(pages.paths),
            "proxied": list(proxy.requests),
            "url": url,
            "dom": dom,
        }


@pytest.mark.parametrize("sample", ["backdoored-purified", "blocked-unsafe", "hostile"])
def test_report_loads_with_no_network_request_and_no_console_message(tmp_path, sample):
    verdict = samples.hostile() if sample == "hostile" else samples.ALL[sample]()
    (tmp_path / "report.html").write_text(render(verdict, "html"), encoding="utf-8")
    seen = load(tmp_path, "report.html", tmp_path / "profile")
    assert seen["loaded"] and "cbpt-guard" in seen["dom"]
    assert seen["requests"] == [seen["url"]]  # the document itself, nothing else
    assert seen["served"] == ["/report.html"]
    assert seen["console"] == []
    assert not any("127.0.0.1" in line for line in seen["proxied"])


def test_the_recorders_see_a_page_that_reaches_out(tmp_path):
    (tmp_path / "control.html").write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
        '<img src="http://reach-out.invalid/pixel.png"><script>console.error("from the page")</script>'
        "</body></html>", encoding="utf-8")
    seen = load(tmp_path, "control.html", tmp_path / "profile")
    assert "http://reach-out.invalid/pixel.png" in seen["requests"]
    assert any("reach-out.invalid" in line for line in seen["proxied"])
    assert any("from the page" in line for line in seen["console"])
