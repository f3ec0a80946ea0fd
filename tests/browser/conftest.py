"""Fixtures of the headless-Chromium tests of deadsfu's web pages (see test_pages.py).

Environment:
  DEADSFU_BIN         deadsfu binary to test (default: target/debug/deadsfu)
  CHROMIUM_BIN        Chromium (default: /usr/bin/chromium, Debian's `chromium`)
  CHROMEDRIVER_BIN    its driver (default: /usr/bin/chromedriver, Debian's `chromium-driver`)
  DEADSFU_TEST_PAGES  "server" (default): load the pages from deadsfu itself (/ and /send);
                      "static": serve crates/server/web with Python's http.server and point
                      the pages at deadsfu with ?server= (to work on the pages alone)
  DEADSFU_ARTIFACTS   where screenshots, console logs and server logs go
                      (default: target/browser-artifacts)
"""

import collections
import json
import os
import pathlib
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

REPO = pathlib.Path(__file__).resolve().parents[2]
WEB_PARENT = REPO / "crates" / "server"  # the static server serves this, so pages are /web/...
ARTIFACTS = pathlib.Path(os.environ.get("DEADSFU_ARTIFACTS", REPO / "target" / "browser-artifacts"))

BANNER_TIMEOUT = 20.0
LOG_TAIL = 200
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Several browsers share the machine; none of them is in the foreground.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
]


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)[:120]


# --------------------------------------------------------------------------- deadsfu


class Sfu:
    """A deadsfu process on a free loopback HTTP port; output kept for diagnostics."""

    def __init__(self, binary: str, log_path: pathlib.Path, extra_args=(), port=None):
        port = port or free_tcp_port()
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.tail = collections.deque(maxlen=LOG_TAIL)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("NO_COLOR", "1")
        self.args = [
            binary, "serve",
            "--http", f"127.0.0.1:{port}",
            "--udp-port", "0",
            "--workers", "2",
            "--ice-candidate-host", "127.0.0.1",
            "--ftl-listen", "",
            *extra_args,
        ]
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env,
        )
        self._banner = queue.Queue()
        self._lock = threading.Lock()
        self._log = open(log_path, "w", encoding="utf-8")
        for stream, prefix in ((self.proc.stdout, ""), (self.proc.stderr, "stderr: ")):
            threading.Thread(target=self._read, args=(stream, prefix), daemon=True).start()
        self._wait_banner()

    def _read(self, stream, prefix):
        for raw in stream:
            line = prefix + ANSI_ESCAPE.sub("", raw.decode("utf-8", "replace").rstrip("\n"))
            with self._lock:
                self.tail.append(line)
                if not self._log.closed:
                    self._log.write(line + "\n")
                    self._log.flush()
            if not prefix:
                self._banner.put(line)
        if not prefix:
            self._banner.put(None)

    def _wait_banner(self):
        deadline = time.monotonic() + BANNER_TIMEOUT
        while True:
            try:
                line = self._banner.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"deadsfu printed no 'listening on' in {BANNER_TIMEOUT}s\n"
                                   + self.diagnostics())
            if line is None:
                self.stop()
                raise RuntimeError(f"deadsfu exited before listening (status {self.proc.poll()})\n"
                                   + self.diagnostics())
            if "listening on" in line:
                return

    def diagnostics(self) -> str:
        with self._lock:
            return "deadsfu: " + " ".join(self.args) + "\n" + "\n".join(self.tail)

    def get(self, path: str, headers=None, timeout=5.0):
        """GET base+path: (status, headers, body bytes); HTTP errors are returned, not raised."""
        req = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as res:
                return res.status, res.headers, res.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        with self._lock:
            self._log.close()


@pytest.fixture(scope="session")
def deadsfu_bin() -> str:
    binary = os.environ.get("DEADSFU_BIN") or str(REPO / "target" / "debug" / "deadsfu")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"deadsfu binary not found at {binary}: build it and set DEADSFU_BIN")
    return binary


@pytest.fixture(scope="session")
def artifacts() -> pathlib.Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def test_id(request) -> str:
    return safe_name(request.node.name)


@pytest.fixture
def start_sfu(deadsfu_bin, artifacts, test_id, request):
    """start_sfu(*extra_args, port=None) -> Sfu; stopped at teardown, its log kept as an
    artifact."""
    started = []

    def start(*extra_args, port=None):
        log = artifacts / f"{test_id}-deadsfu{len(started) or ''}.log"
        sfu = Sfu(deadsfu_bin, log, extra_args, port)
        started.append(sfu)
        return sfu

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for sfu in started:
        sfu.stop()
        if failed:
            sys.stderr.write("\n" + sfu.diagnostics() + "\n")


@pytest.fixture
def sfu(start_sfu) -> Sfu:
    return start_sfu()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# ----------------------------------------------------------------------------- pages


class StaticPages:
    """Python's http.server on crates/server, so the pages are at /web/index.html."""

    def __init__(self):
        port = free_tcp_port()
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
             "--directory", str(WEB_PARENT)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(self.base + "/web/index.html", timeout=1).read()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("python http.server did not start")
                time.sleep(0.1)  # polling for a port to open, not synchronisation of the test

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


PAGES_MODE = os.environ.get("DEADSFU_TEST_PAGES", "server")


@pytest.fixture(scope="session")
def static_pages():
    if PAGES_MODE != "static":
        yield None
        return
    pages = StaticPages()
    yield pages
    pages.stop()


class Pages:
    """URLs of the player and the publisher of one deadsfu, in the chosen serving mode."""

    def __init__(self, sfu: Sfu, static: StaticPages | None):
        self.sfu = sfu
        self.static = static

    def _url(self, server_path, file, params):
        params = {k: v for k, v in params.items() if v is not None}
        if self.static:
            params["server"] = self.sfu.base
            return f"{self.static.base}/web/{file}?" + urllib.parse.urlencode(params)
        qs = urllib.parse.urlencode(params)
        return self.sfu.base + server_path + ("?" + qs if qs else "")

    def player(self, **params) -> str:
        return self._url("/", "index.html", params)

    def send(self, **params) -> str:
        return self._url("/send", "send.html", params)


@pytest.fixture
def pages_for(static_pages):
    return lambda sfu: Pages(sfu, static_pages)


# --------------------------------------------------------------------------- browsers


class Browser:
    """One headless Chromium (its own process and profile) with helpers for the pages."""

    def __init__(self, label, profile_dir, artifacts, test_id, window_size=None, extra_flags=(),
                 performance_log=False):
        self.label = label
        self.artifacts = artifacts
        self.test_id = test_id
        opts = webdriver.ChromeOptions()
        opts.binary_location = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
        for flag in [*CHROMIUM_FLAGS, *extra_flags]:
            opts.add_argument(flag)
        if window_size:
            opts.add_argument(f"--window-size={window_size[0]},{window_size[1]}")
        opts.add_argument(f"--user-data-dir={profile_dir}")
        # performance_log: DevTools events (Network.*) for driver.get_log("performance").
        prefs = {"browser": "ALL", **({"performance": "ALL"} if performance_log else {})}
        opts.set_capability("goog:loggingPrefs", prefs)
        service = Service(
            executable_path=os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver"),
            log_output=str(artifacts / f"{test_id}-{label}-chromedriver.log"),
        )
        self.driver = webdriver.Chrome(options=opts, service=service)
        self.driver.set_script_timeout(20)
        self.console = []

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def state(self, var="deadsfu"):
        return self.js(f"return window.{var} ? JSON.parse(JSON.stringify(window.{var})) : null")

    def video(self, element_id="video"):
        return self.js(
            """
            const v = document.getElementById(arguments[0]);
            if (!v) return null;
            const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : {};
            return {w: v.videoWidth, h: v.videoHeight, frames: q.totalVideoFrames || 0,
                    dropped: q.droppedVideoFrames || 0, paused: v.paused, time: v.currentTime};
            """,
            element_id,
        )

    def wait(self, predicate, timeout, what):
        """Waits for predicate(self) to be truthy; on timeout fails with the pages' state."""
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(
                lambda _d: predicate(self))
        except TimeoutException:
            pytest.fail(f"[{self.label}] timed out after {timeout}s waiting for {what}; "
                        f"state: {self.describe()}")

    def wait_frames(self, count, timeout, element_id="video"):
        """Waits until `count` more frames have been rendered into the <video>."""
        start = self.video(element_id)["frames"]
        self.wait(lambda b: b.video(element_id)["frames"] >= start + count, timeout,
                  f"{count} more decoded frames (had {start})")
        return self.video(element_id)

    def describe(self) -> str:
        try:
            return json.dumps({
                "url": self.driver.current_url,
                "deadsfu": self.state("deadsfu"),
                "deadsfuSend": self.state("deadsfuSend"),
                "video": self.video("video"),
                "preview": self.video("preview"),
            })
        except WebDriverException as e:
            return f"(cannot read the page: {e.msg})"

    def screenshot(self, suffix=""):
        name = f"{self.test_id}-{self.label}{'-' + suffix if suffix else ''}.png"
        try:
            self.driver.save_screenshot(str(self.artifacts / name))
        except WebDriverException:
            pass

    def collect_console(self):
        try:
            self.console.extend(self.driver.get_log("browser"))
        except WebDriverException:
            pass
        return self.console

    def uncaught_errors(self):
        """JavaScript exceptions the pages did not catch (not failed HTTP requests)."""
        return [e["message"] for e in self.collect_console()
                if e.get("level") == "SEVERE" and "Uncaught" in e.get("message", "")]

    def close(self):
        self.screenshot("final")
        self.collect_console()
        try:
            (self.artifacts / f"{self.test_id}-{self.label}-console.log").write_text(
                "\n".join(f"{e.get('level')} {e.get('message')}" for e in self.console)
                + "\n\nstate: " + self.describe() + "\n")
        except OSError:
            pass
        try:
            self.driver.quit()
        except WebDriverException:
            pass


@pytest.fixture
def browser(tmp_path, artifacts, test_id):
    """browser(label, window_size=None, extra_flags=(), performance_log=False) -> Browser; a
    fresh profile each (extra_flags: more Chromium flags; performance_log: keep DevTools
    events); closed at teardown with a screenshot and the console log saved under the
    artifacts directory."""
    if not shutil.which(os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")):
        pytest.fail("chromium not found: apt-get install chromium chromium-driver")
    opened = []

    def open_browser(label, window_size=None, extra_flags=(), performance_log=False):
        profile = tmp_path / f"profile-{label}"
        profile.mkdir()
        b = Browser(label, profile, artifacts, test_id, window_size, extra_flags, performance_log)
        opened.append(b)
        return b

    yield open_browser
    for b in opened:
        b.close()
