"""Interop test: aiortc publishes over WHIP and watches over WHEP through a real deadsfu.

Run with the binary to test in DEADSFU_BIN, e.g.

    DEADSFU_BIN=target/debug/deadsfu .venv/bin/python -m pytest -q tests/interop

deadsfu's log level follows RUST_LOG (default "info"); its whole output is written to
deadsfu.log in the test's tmp dir and its tail is printed when a test fails, with the SDP
offers and answers exchanged.
"""

import asyncio
import collections
import os
import queue
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import aioice.ice
import aiortc.rtcrtpreceiver
import pytest
from aiortc import (
    AudioStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from av import VideoFrame

WIDTH, HEIGHT = 320, 240
FRAMES_WANTED = 60
TEST_TIMEOUT = 60.0  # seconds, for a whole test
CONNECT_TIMEOUT = 20.0
BANNER_TIMEOUT = 20.0
HTTP_TIMEOUT = 10.0
LOG_TAIL = 150


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class Sfu:
    """A deadsfu process on free loopback ports; its output is kept for diagnostics.

    deadsfu prints its banner, then its logs, on stdout; stderr is kept as well."""

    def __init__(self, binary: str, log_path):
        port = free_tcp_port()
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.tail = collections.deque(maxlen=LOG_TAIL)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("NO_COLOR", "1")
        self.proc = subprocess.Popen(
            [
                binary,
                "serve",
                "--http",
                f"127.0.0.1:{port}",
                "--udp-port",
                "0",
                "--workers",
                "2",
                "--ice-candidate-host",
                "127.0.0.1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._banner = queue.Queue()
        self._log_file = open(log_path, "w", encoding="utf-8")
        self._log_lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, ""), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, "stderr: "), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self._wait_banner()

    def _read(self, stream, prefix: str):
        for raw in stream:
            line = prefix + ANSI_ESCAPE.sub("", raw.decode("utf-8", "replace").rstrip("\n"))
            with self._log_lock:
                self.tail.append(line)
                if not self._log_file.closed:
                    self._log_file.write(line + "\n")
                    self._log_file.flush()
            if not prefix:
                self._banner.put(line)
        if not prefix:
            self._banner.put(None)  # EOF: the process has exited

    def _wait_banner(self):
        deadline = time.monotonic() + BANNER_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._banner.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                self.stop()
                raise RuntimeError(
                    f"deadsfu printed no 'listening on' within {BANNER_TIMEOUT}s\n"
                    + self.diagnostics()
                )
            if line is None:
                self.stop()
                raise RuntimeError(
                    f"deadsfu exited before listening (status {self.proc.poll()})\n"
                    + self.diagnostics()
                )
            if "listening on" in line:
                return

    def url(self, path: str) -> str:
        return urllib.parse.urljoin(self.base + "/", path)

    def diagnostics(self) -> str:
        with self._log_lock:
            tail = list(self.tail)
        exited = self.proc.poll()
        state = "running" if exited is None else f"exited with status {exited}"
        return (
            f"--- deadsfu ({state}) output, last {len(tail)} lines "
            f"(full log: {self.log_path}) ---\n" + "\n".join(tail)
        )

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for reader in self._readers:
            reader.join(timeout=2)
        with self._log_lock:
            self._log_file.close()


@pytest.fixture
def sfu(tmp_path, monkeypatch):
    binary = os.environ.get("DEADSFU_BIN")
    if not binary:
        pytest.fail("set DEADSFU_BIN to the deadsfu binary to test")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"DEADSFU_BIN={binary} is not an executable")
    # aiortc gathers host candidates on loopback only (aioice skips 127.0.0.1 by default).
    monkeypatch.setattr(
        aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    )
    server = Sfu(binary, tmp_path / "deadsfu.log")
    yield server
    server.stop()


@pytest.fixture
def decoders(monkeypatch):
    """MIME types of the decoders aiortc's receivers create: which codec really arrived."""
    created = []
    original = aiortc.rtcrtpreceiver.get_decoder

    def recording_get_decoder(codec):
        created.append(codec.mimeType)
        return original(codec)

    monkeypatch.setattr(aiortc.rtcrtpreceiver, "get_decoder", recording_get_decoder)
    return created


# --- media sources -------------------------------------------------------------------


class MovingBarTrack(VideoStreamTrack):
    """WIDTHxHEIGHT frames: a grey background whose shade changes, with a moving bar."""

    def __init__(self):
        super().__init__()
        self.count = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(WIDTH, HEIGHT, "yuv420p")
        y_plane, u_plane, v_plane = frame.planes
        background = 40 + (self.count * 3) % 160
        row = bytearray([background]) * y_plane.line_size
        bar = (self.count * 4) % (WIDTH - 32)
        row[bar : bar + 32] = bytes([235]) * 32
        y_plane.update(bytes(row) * (y_plane.buffer_size // y_plane.line_size))
        u_plane.update(bytes([(self.count * 2) % 256]) * u_plane.buffer_size)
        v_plane.update(bytes([128]) * v_plane.buffer_size)
        frame.pts = pts
        frame.time_base = time_base
        self.count += 1
        return frame


# --- WHIP / WHEP over HTTP ------------------------------------------------------------


def _http(method: str, url: str, body: bytes | None = None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as res:
            return res.status, _headers(res.headers), res.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, _headers(e.headers), e.read().decode("utf-8", "replace")


def _headers(message) -> dict:
    """Response headers with lower-case names."""
    return {k.lower(): v for k, v in message.items()}


async def http(method: str, url: str, body: bytes | None = None, headers=None):
    return await asyncio.to_thread(_http, method, url, body, headers)


class Trace:
    """What was exchanged, printed when a test fails."""

    def __init__(self):
        self.entries = []

    def add(self, title: str, text: str):
        self.entries.append(f"--- {title} ---\n{text}")

    def __str__(self):
        return "\n".join(self.entries)


async def negotiate(sfu: Sfu, pc: RTCPeerConnection, path: str, trace: Trace, who: str):
    """Offer (with all candidates: aiortc gathers in setLocalDescription), POST, answer.

    Returns the session resource URL from the Location header."""
    offer = await pc.createOffer()
    await pc.setLocalDescription(offer)
    assert pc.iceGatheringState == "complete"
    sdp = pc.localDescription.sdp
    trace.add(f"{who} offer", sdp)
    status, headers, body = await http(
        "POST", sfu.url(path), sdp.encode(), {"Content-Type": "application/sdp"}
    )
    trace.add(f"{who} POST {path} -> {status} {headers}", body)
    assert status == 201, f"{who}: POST {path} answered {status}: {body}"
    ctype = headers.get("content-type", "")
    assert ctype.startswith("application/sdp"), f"{who}: answer Content-Type {ctype!r}"
    location = headers.get("location")
    assert location, f"{who}: no Location header"
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return sfu.url(location)


async def wait_connected(pc: RTCPeerConnection, who: str, timeout: float = CONNECT_TIMEOUT):
    done = asyncio.get_running_loop().create_future()

    def check():
        if done.done():
            return
        if pc.connectionState == "connected":
            done.set_result(None)
        elif pc.connectionState in ("failed", "closed"):
            done.set_exception(AssertionError(f"{who}: connection {pc.connectionState}"))

    pc.on("connectionstatechange", check)
    check()
    try:
        await asyncio.wait_for(done, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(
            f"{who}: not connected after {timeout}s (connection {pc.connectionState}, "
            f"ICE {pc.iceConnectionState})"
        ) from None
    finally:
        pc.remove_listener("connectionstatechange", check)


def codecs_for(mime: str):
    """The aiortc video codecs of one type (all its profiles), plus RTX."""
    caps = RTCRtpSender.getCapabilities("video").codecs
    chosen = [c for c in caps if c.mimeType.lower() == mime.lower()]
    assert chosen, f"aiortc has no {mime}"
    return chosen + [c for c in caps if c.mimeType.lower() == "video/rtx"]


def media_codecs(sdp: str, kind: str):
    """Codec names of the first m=<kind> section, in order."""
    names, rtpmap, payloads, inside = [], {}, [], False
    for line in sdp.splitlines():
        if line.startswith("m="):
            if inside:
                break
            inside = line.startswith(f"m={kind} ")
            if inside:
                payloads = line.split()[3:]
        elif inside and line.startswith("a=rtpmap:"):
            pt, rest = line[len("a=rtpmap:") :].split(" ", 1)
            rtpmap[pt] = rest.split("/")[0]
    for pt in payloads:
        if pt in rtpmap:
            names.append(rtpmap[pt])
    return names


# --- the test -------------------------------------------------------------------------


async def publish_and_watch(sfu: Sfu, mime: str, trace: Trace, decoders: list):
    room = f"interop-{mime.split('/')[1].lower()}-{uuid.uuid4().hex[:8]}"
    no_stun = RTCConfiguration(iceServers=[])
    publisher = RTCPeerConnection(no_stun)
    viewer = RTCPeerConnection(no_stun)
    try:
        # Publisher: sendonly video forced to one codec, and silent audio.
        video = publisher.addTransceiver(MovingBarTrack(), direction="sendonly")
        video.setCodecPreferences(codecs_for(mime))
        publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
        pub_session = await negotiate(sfu, publisher, f"/whip/{room}", trace, "publisher")
        answered = media_codecs(publisher.remoteDescription.sdp, "video")
        assert answered and answered[0].lower() == mime.split("/")[1].lower(), (
            f"WHIP answer's video codecs {answered}, wanted {mime}"
        )
        await wait_connected(publisher, "publisher")

        # Viewer: recvonly audio and video, joining the running stream.
        viewer.addTransceiver("audio", direction="recvonly")
        viewer_video = viewer.addTransceiver("video", direction="recvonly")
        view_session = await negotiate(sfu, viewer, f"/whep/{room}", trace, "viewer")
        # deadsfu answers every codec it can send and sends the publisher's.
        answered = media_codecs(viewer.remoteDescription.sdp, "video")
        assert mime.split("/")[1].lower() in [c.lower() for c in answered], (
            f"WHEP answer's video codecs {answered}, wanted {mime}"
        )
        await wait_connected(viewer, "viewer")

        track = viewer_video.receiver.track
        assert track is not None and track.kind == "video"
        received = 0
        sizes = collections.Counter()

        async def receive():
            nonlocal received
            while received < FRAMES_WANTED:
                frame = await track.recv()
                sizes[(frame.width, frame.height)] += 1
                received += 1

        try:
            await asyncio.wait_for(receive(), 30)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"viewer decoded only {received} of {FRAMES_WANTED} video frames in 30s "
                f"(sizes {dict(sizes)}); publisher connection {publisher.connectionState}, "
                f"viewer connection {viewer.connectionState}"
            ) from None
        assert set(sizes) == {(WIDTH, HEIGHT)}, f"decoded frame sizes {dict(sizes)}"
        video_decoders = {m for m in decoders if m.lower().startswith("video/")}
        assert video_decoders == {mime}, f"viewer decoded {video_decoders}, wanted {mime}"
        trace.add("received", f"{received} frames, sizes {dict(sizes)}")

        status, _, body = await http("DELETE", view_session)
        assert status == 200, f"DELETE {view_session} (viewer) answered {status}: {body}"
        status, _, body = await http("DELETE", pub_session)
        assert status == 200, f"DELETE {pub_session} (publisher) answered {status}: {body}"
    finally:
        await viewer.close()
        await publisher.close()


def run_test(sfu: Sfu, decoders: list, mime: str):
    trace = Trace()
    try:
        asyncio.run(asyncio.wait_for(publish_and_watch(sfu, mime, trace, decoders), TEST_TIMEOUT))
    except asyncio.TimeoutError:
        # pytest shows the captured stdout of failing tests.
        print(trace)
        print(sfu.diagnostics())
        raise AssertionError(f"test did not finish within {TEST_TIMEOUT}s") from None
    except BaseException:
        print(trace)
        print(sfu.diagnostics())
        raise


def test_h264_whip_to_whep(sfu, decoders):
    run_test(sfu, decoders, "video/H264")


def test_vp8_whip_to_whep(sfu, decoders):
    run_test(sfu, decoders, "video/VP8")
