"""Interop test: aiortc publishes over WHIP and watches over WHEP through a real deadsfu;
and `deadsfu ftl-push` publishes over FTL (as OBS does) to an aiortc WHEP viewer.
(test_https.py runs the same WHIP/WHEP peers over HTTPS, with a certificate from ACME.)

Run with the binary to test in DEADSFU_BIN, e.g.

    DEADSFU_BIN=target/debug/deadsfu .venv/bin/python -m pytest -q tests/interop

deadsfu's log level follows RUST_LOG (default "info"); its whole output is written to
deadsfu.log in the test's tmp dir and its tail is printed when a test fails, with the SDP
offers and answers exchanged. The FTL test makes its media with ffmpeg (libx264 and
libopus; FFMPEG names another binary) and keeps ftl-push's output in ftl-push.log.
"""

import asyncio
import collections
import dataclasses
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import aiohttp
import aiohttp.abc
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
FTL_CHANNEL = 4242
FTL_KEY = f"{FTL_CHANNEL}-interopsecret"


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class Sfu:
    """A deadsfu process on free loopback ports; its output is kept for diagnostics.

    deadsfu prints its banner, then its logs, on stdout; stderr is kept as well.

    By default `deadsfu serve` with plain HTTP and FTL on free ports. `args` replaces all the
    arguments after the binary, with `base` the URL to reach it at and `https` how (see Https);
    without `wait_banner` the constructor returns once the process is started."""

    def __init__(self, binary: str, log_path, args=None, base=None, https=None,
                 wait_banner=True):  # fmt: skip
        port = free_tcp_port()
        ftl_port = free_tcp_port()
        while ftl_port == port:
            ftl_port = free_tcp_port()
        self.binary = binary
        self.base = base or f"http://127.0.0.1:{port}"
        self.https = https
        # FTL control (TCP) port on loopback, never the fixed default 8084.
        self.ftl_port = ftl_port
        self.log_path = log_path
        self.tail = collections.deque(maxlen=LOG_TAIL)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("NO_COLOR", "1")
        if args is None:
            args = [
                "serve",
                "--http",
                f"127.0.0.1:{port}",
                "--udp-port",
                "0",
                "--workers",
                "2",
                "--ice-candidate-host",
                "127.0.0.1",
                "--ftl-listen",
                f"127.0.0.1:{ftl_port}",
                "--ftl-udp-port",
                "0",
                "--ftl-key",
                FTL_KEY,
            ]
        self.proc = subprocess.Popen(
            [binary, *args],
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
        if wait_banner:
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


def deadsfu_binary() -> str:
    binary = os.environ.get("DEADSFU_BIN")
    if not binary:
        pytest.fail("set DEADSFU_BIN to the deadsfu binary to test")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"DEADSFU_BIN={binary} is not an executable")
    return binary


def loopback_only_ice(monkeypatch):
    """aiortc gathers host candidates on loopback only (aioice skips 127.0.0.1 by default)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.fixture
def sfu(tmp_path, monkeypatch):
    binary = deadsfu_binary()
    loopback_only_ice(monkeypatch)
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


# --- FTL ---------------------------------------------------------------------------


FTL_STREAMING_TIMEOUT = 20.0
FFMPEG = os.environ.get("FFMPEG", "ffmpeg")


def make_ftl_media(directory, timeout: float, gop: int = 30):
    """~4 s of H264 constrained baseline (Annex-B, no B-frames, keyframe every `gop` frames,
    WIDTHxHEIGHT at 30 fps) and of Opus in Ogg, as ftl-push reads them."""
    video, audio = directory / f"v-g{gop}.h264", directory / "a.ogg"
    commands = [
        [FFMPEG, "-y", "-loglevel", "error", "-f", "lavfi",
         "-i", f"testsrc=size={WIDTH}x{HEIGHT}:rate=30", "-t", "4",
         "-c:v", "libx264", "-profile:v", "baseline", "-bf", "0", "-g", str(gop),
         "-keyint_min", str(gop), "-sc_threshold", "0",
         "-pix_fmt", "yuv420p", "-f", "h264", str(video)],
        [FFMPEG, "-y", "-loglevel", "error", "-f", "lavfi",
         "-i", "sine=frequency=440:sample_rate=48000", "-t", "4",
         "-c:a", "libopus", "-b:a", "64k", "-f", "ogg", str(audio)],
    ]  # fmt: skip
    for command in commands:
        done = subprocess.run(command, capture_output=True, timeout=timeout)
        assert done.returncode == 0, (
            f"{' '.join(command)} failed ({done.returncode}): "
            + done.stderr.decode("utf-8", "replace")
        )
        assert os.path.getsize(command[-1]) > 0, f"ffmpeg wrote an empty {command[-1]}"
    return video, audio


class FtlPush:
    """A `deadsfu ftl-push --loop` process streaming files to the Sfu's FTL port, as OBS
    would. Its output (logs and final report, on stdout and stderr) is kept."""

    def __init__(self, binary: str, sfu: Sfu, video, audio, log_path):
        self.log_path = log_path
        self.tail = collections.deque(maxlen=LOG_TAIL)
        env = dict(os.environ)
        # Its "FTL streaming" info line is what start() waits for.
        env["RUST_LOG"] = os.environ.get("RUST_LOG", "info") + ",deadsfu_ftl::net::client=debug"
        env.setdefault("NO_COLOR", "1")
        self.proc = subprocess.Popen(
            [
                binary,
                "ftl-push",
                "--server",
                f"127.0.0.1:{sfu.ftl_port}",
                "--key",
                FTL_KEY,
                "--video",
                str(video),
                "--audio",
                str(audio),
                "--loop",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._lines = queue.Queue()
        self._log_file = open(log_path, "w", encoding="utf-8")
        self._log_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = ANSI_ESCAPE.sub("", raw.decode("utf-8", "replace").rstrip("\n"))
            with self._log_lock:
                self.tail.append(line)
                if not self._log_file.closed:
                    self._log_file.write(line + "\n")
                    self._log_file.flush()
            self._lines.put(line)
        self._lines.put(None)  # EOF: the process has exited

    def wait_streaming(self, timeout: float):
        """Until the client logs "FTL streaming": deadsfu accepted the key and the channel's
        room has its publisher (deadsfu claims the room before answering the handshake)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                raise AssertionError(f"ftl-push was not streaming after {timeout}s") from None
            if line is None:
                self.proc.wait(timeout=10)
                raise AssertionError(
                    f"ftl-push exited with status {self.proc.returncode} before streaming"
                )
            if "FTL streaming" in line:
                return

    def diagnostics(self) -> str:
        with self._log_lock:
            tail = list(self.tail)
        exited = self.proc.poll()
        state = "running" if exited is None else f"exited with status {exited}"
        return (
            f"--- ftl-push ({state}) output, last {len(tail)} lines "
            f"(full log: {self.log_path}) ---\n" + "\n".join(tail)
        )

    def stop(self):
        """SIGINT (it then ends the FTL session and prints its report), kill if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(timeout=2)
        with self._log_lock:
            self._log_file.close()


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


# --- WHIP / WHEP over HTTP(S) ---------------------------------------------------------


@dataclasses.dataclass
class Https:
    """How a test reaches an https:// URL: trusting only `ssl_context`'s roots, and connecting
    to `hosts[name]` (an IP address) for each host name instead of looking it up. Names not
    in `hosts` fail: no test request leaves loopback."""

    ssl_context: ssl.SSLContext
    hosts: dict


class _HostsResolver(aiohttp.abc.AbstractResolver):
    def __init__(self, hosts: dict):
        self.hosts = hosts

    async def resolve(self, host, port=0, family=socket.AF_INET):
        if host not in self.hosts:
            raise OSError(f"{host} is not among the test's hosts {self.hosts}")
        return [{"hostname": host, "host": self.hosts[host], "port": port,
                 "family": socket.AF_INET, "proto": 0, "flags": socket.AI_NUMERICHOST}]  # fmt: skip

    async def close(self):
        pass


async def _aiohttp(method: str, url: str, body, headers, https: Https):
    connector = aiohttp.TCPConnector(resolver=_HostsResolver(https.hosts), ssl=https.ssl_context)
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.request(method, url, data=body, headers=headers or {}) as res,
    ):
        text = await res.text(errors="replace")
        return res.status, {k.lower(): v for k, v in res.headers.items()}, text


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


async def http(method: str, url: str, body: bytes | None = None, headers=None,
               https: Https | None = None):  # fmt: skip
    """(status, headers with lower-case names, body text). With `https`, over aiohttp (see
    Https); without, over urllib."""
    if https is not None:
        return await _aiohttp(method, url, body, headers, https)
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
        "POST", sfu.url(path), sdp.encode(), {"Content-Type": "application/sdp"}, sfu.https
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


async def expect_frames(transceiver, decoders: list, mime: str, trace: Trace, state):
    """FRAMES_WANTED WIDTHxHEIGHT video frames decoded, all by a `mime` decoder.

    `state()` describes the connections for the failure message."""
    track = transceiver.receiver.track
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
            f"(sizes {dict(sizes)}); {state()}"
        ) from None
    assert set(sizes) == {(WIDTH, HEIGHT)}, f"decoded frame sizes {dict(sizes)}"
    video_decoders = {m for m in decoders if m.lower().startswith("video/")}
    assert video_decoders == {mime}, f"viewer decoded {video_decoders}, wanted {mime}"
    trace.add("received", f"{received} frames, sizes {dict(sizes)}")


# --- the tests ------------------------------------------------------------------------


async def publish_and_watch(sfu: Sfu, mime: str, trace: Trace, decoders: list, room=None):
    room = room or f"interop-{mime.split('/')[1].lower()}-{uuid.uuid4().hex[:8]}"
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

        await expect_frames(
            viewer_video, decoders, mime, trace,
            lambda: f"publisher connection {publisher.connectionState}, "
            f"viewer connection {viewer.connectionState}",
        )  # fmt: skip

        status, _, body = await http("DELETE", view_session, https=sfu.https)
        assert status == 200, f"DELETE {view_session} (viewer) answered {status}: {body}"
        status, _, body = await http("DELETE", pub_session, https=sfu.https)
        assert status == 200, f"DELETE {pub_session} (publisher) answered {status}: {body}"
    finally:
        await viewer.close()
        await publisher.close()


async def ftl_watch(sfu: Sfu, trace: Trace, decoders: list):
    """A WHEP viewer of the room an FTL stream is being pushed into."""
    viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        viewer.addTransceiver("audio", direction="recvonly")
        viewer_video = viewer.addTransceiver("video", direction="recvonly")
        view_session = await negotiate(sfu, viewer, f"/whep/{FTL_CHANNEL}", trace, "viewer")
        answered = media_codecs(viewer.remoteDescription.sdp, "video")
        assert "h264" in [c.lower() for c in answered], (
            f"WHEP answer's video codecs {answered}, wanted H264 (FTL carries H264)"
        )
        await wait_connected(viewer, "viewer")
        await expect_frames(
            viewer_video, decoders, "video/H264", trace,
            lambda: f"viewer connection {viewer.connectionState}",
        )  # fmt: skip
        status, _, body = await http("DELETE", view_session, https=sfu.https)
        assert status == 200, f"DELETE {view_session} (viewer) answered {status}: {body}"
    finally:
        await viewer.close()


def run_test(coro, trace: Trace, timeout: float, *processes):
    """Runs `coro` within `timeout`; on failure prints the trace and the processes' output
    (pytest shows the captured stdout of failing tests)."""
    try:
        asyncio.run(asyncio.wait_for(coro, timeout))
    except asyncio.TimeoutError:
        print(trace)
        for process in processes:
            print(process.diagnostics())
        raise AssertionError(f"test did not finish within {TEST_TIMEOUT}s") from None
    except BaseException:
        print(trace)
        for process in processes:
            print(process.diagnostics())
        raise


def test_h264_whip_to_whep(sfu, decoders):
    trace = Trace()
    run_test(publish_and_watch(sfu, "video/H264", trace, decoders), trace, TEST_TIMEOUT, sfu)


def test_vp8_whip_to_whep(sfu, decoders):
    trace = Trace()
    run_test(publish_and_watch(sfu, "video/VP8", trace, decoders), trace, TEST_TIMEOUT, sfu)


def test_ftl_to_aiortc_viewer(sfu, decoders, tmp_path):
    """`deadsfu ftl-push` streams H264 + Opus over FTL (as OBS does) into channel
    FTL_CHANNEL's room; an aiortc WHEP viewer of that room decodes the H264."""
    deadline = time.monotonic() + TEST_TIMEOUT
    trace = Trace()
    try:
        video, audio = make_ftl_media(tmp_path, timeout=TEST_TIMEOUT / 2)
    except BaseException:
        print(sfu.diagnostics())
        raise
    pusher = FtlPush(sfu.binary, sfu, video, audio, tmp_path / "ftl-push.log")
    try:
        try:
            pusher.wait_streaming(min(FTL_STREAMING_TIMEOUT, deadline - time.monotonic()))
        except BaseException:
            print(pusher.diagnostics())
            print(sfu.diagnostics())
            raise
        run_test(ftl_watch(sfu, trace, decoders), trace, deadline - time.monotonic(), sfu, pusher)
        assert pusher.proc.poll() is None, (
            f"ftl-push exited ({pusher.proc.returncode}) while looping\n" + pusher.diagnostics()
        )
        pusher.stop()
        assert pusher.proc.returncode == 0, (
            f"ftl-push ended with status {pusher.proc.returncode} on SIGINT\n"
            + pusher.diagnostics()
        )
    finally:
        pusher.stop()


async def first_decoded_frame(sfu: Sfu, trace: Trace, decoders: list) -> float:
    """Seconds from a viewer's WHEP POST to its first decoded video frame."""
    viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        viewer.addTransceiver("audio", direction="recvonly")
        viewer_video = viewer.addTransceiver("video", direction="recvonly")
        started = time.monotonic()
        view_session = await negotiate(sfu, viewer, f"/whep/{FTL_CHANNEL}", trace, "viewer")
        await wait_connected(viewer, "viewer")
        frame = await asyncio.wait_for(viewer_video.receiver.track.recv(), 10)
        elapsed = time.monotonic() - started
        assert (frame.width, frame.height) == (WIDTH, HEIGHT)
        status, _, body = await http("DELETE", view_session, https=sfu.https)
        assert status == 200, f"DELETE {view_session} (viewer) answered {status}: {body}"
        return elapsed
    finally:
        await viewer.close()


def test_first_decoded_frame_with_4s_keyframe_interval(sfu, decoders, tmp_path):
    """With a keyframe only every 4 s (FTL cannot ask for one), a viewer joining mid-GOP still
    decodes its first frame within 2 s, thanks to deadsfu's GOP cache."""
    deadline = time.monotonic() + TEST_TIMEOUT
    trace = Trace()
    video, audio = make_ftl_media(tmp_path, timeout=TEST_TIMEOUT / 2, gop=120)
    pusher = FtlPush(sfu.binary, sfu, video, audio, tmp_path / "ftl-push.log")
    try:
        pusher.wait_streaming(min(FTL_STREAMING_TIMEOUT, deadline - time.monotonic()))
        # The file's one keyframe goes out as streaming starts (and every 4 s on each loop):
        # joining 1.5 s later puts the viewer in the middle of a GOP. This positions the join;
        # it does not wait for anything to happen.
        time.sleep(1.5)
        result = {}

        async def measure():
            result["seconds"] = await first_decoded_frame(sfu, trace, decoders)

        run_test(measure(), trace, deadline - time.monotonic(), sfu, pusher)
        seconds = result["seconds"]
        print(f"first decoded frame {seconds * 1000:.0f} ms after the WHEP POST "
              f"(keyframe interval 4 s)")
        assert seconds < 2.0, f"first decoded frame after {seconds:.2f}s"
    finally:
        pusher.stop()
