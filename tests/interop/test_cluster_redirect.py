"""Interop test of the cluster's one service hostname: any node takes a WHIP/WHEP POST for
svc.test and sends the client with `307 Temporary Redirect` to the node that serves the room
(DESIGN.md §2.4, §6), with aiortc as publisher and viewer over HTTPS.

Two nodes of a real cluster (cluster_harness.py: TLS redis-server, bootstrap server, sfu
bundles): A (sfu-a.test, 127.0.0.2) and B (sfu-b.test, 127.0.0.3), the same HTTPS port on both,
one certificate for svc.test, sfu-a.test and sfu-b.test from a test CA. Which node a client
enters at is which address its resolver gives svc.test (the part a front-line proxy or DNS
round robin plays in production).

The publisher follows the 307 by hand, as a WHIP client does (re-POST the offer to the
absolute Location, dropping Authorization since the origin changes); viewers use aiohttp's own
redirect following (307 keeps method and body; Authorization dropped across origins). With
--bearer-token on both nodes, the redirected request carries no token: the `ticket=` the
redirecting node put in the Location has to carry the rights.

    DEADSFU_BIN=target/debug/deadsfu .venv/bin/python -m pytest -q \
        tests/interop/test_cluster_redirect.py

Needs redis-server (Debian, built with TLS) and the packages of requirements.txt.
On failure the exchanged requests and every process's log tail are printed; the full logs
stay in the test's tmp dir.
"""

import asyncio
import time
import urllib.parse
import uuid

import aiohttp
import aiohttp.abc
import pytest
from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

import cluster_harness as ch
import test_aiortc as interop
from test_aiortc import decoders  # noqa: F401 (a fixture)

TOKEN = "cluster-interop-token"
TEST_TIMEOUT = 45.0  # media part of a test; the cluster's start comes on top (~5 s)


# --- the cluster -------------------------------------------------------------------------


@pytest.fixture
def two_nodes(tmp_path, monkeypatch):
    """two_nodes(*node_args) -> cluster_harness.TwoNodes, stopped at teardown."""
    binary = interop.deadsfu_binary()
    interop.loopback_only_ice(monkeypatch)
    started = []

    def start(*node_args):
        nodes = ch.TwoNodes(binary, tmp_path, node_args)
        started.append(nodes)
        return nodes

    yield start
    for nodes in started:
        nodes.close()


# --- HTTPS with the test resolver ----------------------------------------------------------


class _Resolver(aiohttp.abc.AbstractResolver):
    def __init__(self, hosts):
        self.hosts = hosts

    async def resolve(self, host, port=0, family=0):
        if host not in self.hosts:
            raise OSError(f"{host} is not among the test's hosts {self.hosts}")
        return [{"hostname": host, "host": self.hosts[host], "port": port,
                 "family": 2, "proto": 0, "flags": 4}]  # fmt: skip  (AF_INET, AI_NUMERICHOST)

    async def close(self):
        pass


async def request(nodes: ch.TwoNodes, entry: ch.Node, method: str, url: str, body=None,
                  headers=None, follow=False):  # fmt: skip
    """(status, headers with lower-case names, body text, [(status, location) of each
    redirect followed], final URL) of one request from a client reaching svc.test at `entry`."""
    connector = aiohttp.TCPConnector(resolver=_Resolver(nodes.hosts(entry)), ssl=nodes.context)
    async with (
        aiohttp.ClientSession(connector=connector,
                              timeout=aiohttp.ClientTimeout(total=interop.HTTP_TIMEOUT)) as s,
        s.request(method, url, data=body, headers=headers or {}, allow_redirects=follow) as res,
    ):  # fmt: skip
        text = await res.text(errors="replace")
        history = [(r.status, r.headers.get("Location")) for r in res.history]
        headers = {k.lower(): v for k, v in res.headers.items()}
        return res.status, headers, text, history, str(res.url)


def auth(token):
    return {"Authorization": f"Bearer {token}"} if token else {}


def query(url: str) -> dict:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def assert_redirect(status, headers, body, to: ch.Node, path: str, what: str) -> str:
    """A 307 to `to`'s public URL + path with a ticket; returns the Location."""
    assert status == 307, f"{what}: answered {status} {headers}: {body}, wanted 307"
    location = headers.get("location", "")
    assert location.startswith(f"{to.public_url}{path}?"), (
        f"{what}: Location {location!r}, wanted {to.public_url}{path}?...ticket=..."
    )
    assert query(location).get("ticket"), f"{what}: Location {location!r} has no ticket"
    assert headers.get("access-control-allow-origin") == "*", f"{what}: CORS headers {headers}"
    assert "location" in headers.get("access-control-expose-headers", "").lower(), (
        f"{what}: Location not exposed to scripts: {headers}"
    )
    return location


# --- WHIP / WHEP through the service name ------------------------------------------------------


async def publish_redirected(nodes, pc, entry, owner, room, token, trace):
    """The publisher POSTs its offer to svc.test (entering at `entry`), expects 307 to
    `owner`, re-POSTs there without Authorization (the origin changed) and gets 201 with a
    session on `owner`. Returns (session URL, the redirect's Location)."""
    offer = await pc.createOffer()
    await pc.setLocalDescription(offer)
    sdp = pc.localDescription.sdp.encode()
    trace.add("publisher offer", pc.localDescription.sdp)
    url = nodes.service_url(f"/whip/{room}")
    hdrs = {"Content-Type": "application/sdp", **auth(token)}
    status, headers, body, _, _ = await request(nodes, entry, "POST", url, sdp, hdrs)
    trace.add(f"publisher POST {url} at {entry.name} -> {status} {headers}", body)
    location = assert_redirect(status, headers, body, owner, f"/whip/{room}",
                               f"publisher POST {url} entering at {entry.name}")  # fmt: skip
    status, headers, body, _, _ = await request(
        nodes, entry, "POST", location, sdp, {"Content-Type": "application/sdp"})
    trace.add(f"publisher POST {location} -> {status} {headers}", body)
    assert status == 201, f"redirected publisher POST {location}: {status}: {body}"
    session = headers.get("location", "")
    assert session.startswith(owner.public_url + "/"), (
        f"publisher session {session!r} is not on {owner.name} ({owner.public_url})"
    )
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return session, location


async def view_redirected(nodes, pc, entry, owner, room, token, trace):
    """A viewer POSTs to svc.test entering at `entry` and lets aiohttp follow the 307 to
    `owner`; returns the session URL."""
    offer = await pc.createOffer()
    await pc.setLocalDescription(offer)
    url = nodes.service_url(f"/whep/{room}")
    hdrs = {"Content-Type": "application/sdp", **auth(token)}
    status, headers, body, history, final = await request(
        nodes, entry, "POST", url, pc.localDescription.sdp.encode(), hdrs, follow=True)
    trace.add(f"viewer POST {url} at {entry.name} -> {history} -> {status} {final} {headers}", body)
    assert len(history) == 1 and history[0][0] == 307, (
        f"viewer POST {url} entering at {entry.name}: redirects {history}, wanted one 307"
    )
    assert history[0][1].startswith(f"{owner.public_url}/whep/{room}?"), (
        f"viewer redirected to {history[0][1]!r}, wanted {owner.name}"
    )
    assert status == 201, f"viewer POST after the redirect ({final}): {status}: {body}"
    session = headers.get("location", "")
    assert session.startswith(owner.public_url + "/"), (
        f"viewer session {session!r} is not on {owner.name} ({owner.public_url})"
    )
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return session


async def offer_of(publisher: bool) -> bytes:
    """A valid offer of a peer not otherwise used (for requests whose answer is refused or
    redirected)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        if publisher:
            pc.addTransceiver(interop.MovingBarTrack(), direction="sendonly")
        else:
            pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp.encode()
    finally:
        await pc.close()


async def through_the_service_name(nodes: ch.TwoNodes, token, trace, created_decoders):
    """Publisher enters at B (room free: B takes it), viewer enters at A (sent to B)."""
    a, b = nodes.a, nodes.b
    room = f"svc-{uuid.uuid4().hex[:8]}"
    no_stun = RTCConfiguration(iceServers=[])
    publisher, viewer = RTCPeerConnection(no_stun), RTCPeerConnection(no_stun)
    try:
        if token:
            # The token is checked before anything is routed.
            status, headers, body, _, _ = await request(
                nodes, b, "POST", nodes.service_url(f"/whip/{room}"), b"v=0\r\n",
                {"Content-Type": "application/sdp"})  # fmt: skip
            assert status == 401 and "location" not in headers, (
                f"POST svc.test/whip without the token: {status} {headers} {body}"
            )

        video = publisher.addTransceiver(interop.MovingBarTrack(), direction="sendonly")
        video.setCodecPreferences(interop.codecs_for("video/H264"))
        publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
        pub_session, pub_redirect = await publish_redirected(
            nodes, publisher, b, b, room, token, trace)  # fmt: skip
        await interop.wait_connected(publisher, "publisher")
        await asyncio.to_thread(nodes.cluster.wait_room_owner, room, b.name)

        if token:
            # The ticket opens this room, for publishing, only; an altered one nothing.
            ticket = query(pub_redirect)["ticket"]
            forged = ticket[:-1] + ("A" if ticket[-1] != "A" else "B")
            sdp = await offer_of(publisher=False)
            for url, what in (
                (b.url(f"/whip/other-{room}?ticket={ticket}"), "another room"),
                (b.url(f"/whep/{room}?ticket={ticket}"), "viewing"),
                (b.url(f"/whep/{room}?ticket={forged}"), "viewing, altered"),
            ):
                status, headers, body, _, _ = await request(
                    nodes, b, "POST", url, sdp, {"Content-Type": "application/sdp"})
                trace.add(f"POST {url} -> {status}", body)
                assert status == 401, (
                    f"a publisher's ticket of room {room} used for {what} ({url}): {status} {body}"
                )

        viewer.addTransceiver("audio", direction="recvonly")
        viewer_video = viewer.addTransceiver("video", direction="recvonly")
        view_session = await view_redirected(nodes, viewer, a, b, room, token, trace)
        await interop.wait_connected(viewer, "viewer")
        await interop.expect_frames(
            viewer_video, created_decoders, "video/H264", trace,
            lambda: f"publisher {publisher.connectionState}, viewer {viewer.connectionState}",
        )  # fmt: skip

        # A second publisher entering at A is sent to the owner, which refuses it.
        sdp = b"v=0\r\n"  # routing comes before the offer is read
        url = nodes.service_url(f"/whip/{room}")
        hdrs = {"Content-Type": "application/sdp", **auth(token)}
        status, headers, body, _, _ = await request(nodes, a, "POST", url, sdp, hdrs)
        location = assert_redirect(status, headers, body, b, f"/whip/{room}",
                                   "second publisher entering at A")  # fmt: skip
        status, headers, body, _, _ = await request(
            nodes, a, "POST", location, await offer_of(publisher=True),
            {"Content-Type": "application/sdp"})  # fmt: skip
        assert status == 409, f"second publisher at the owner ({location}): {status} {body}"

        for session, who in ((view_session, "viewer"), (pub_session, "publisher")):
            status, _, body, _, _ = await request(nodes, a, "DELETE", session, None, auth(token))
            assert status == 200, f"DELETE {session} ({who}): {status} {body}"
    finally:
        await viewer.close()
        await publisher.close()


def run(nodes: ch.TwoNodes, coro, trace, timeout=TEST_TIMEOUT):
    started = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(coro, timeout))
    except BaseException as e:
        print(trace)
        print(nodes.diagnostics())
        if isinstance(e, asyncio.TimeoutError):
            raise AssertionError(f"not done within {timeout}s") from None
        raise
    print(f"media part took {time.monotonic() - started:.1f}s")


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "bearer-token"])
def test_whip_and_whep_through_the_service_name(two_nodes, decoders, token):  # noqa: F811
    """aiortc publishes H264 through https://svc.test/whip/R entering at B: 307 to B itself
    (the room is free, B takes it; sfu-b.test + ticket), 201 there. An aiortc viewer of
    https://svc.test/whep/R entering at A: 307 to B (the owner), 201 there, decodes H264.
    A second publisher through A is sent to B and refused (409). With --bearer-token: no
    token is 401 before any redirect; the redirected POSTs carry no token, only the ticket,
    which opens only its room and role (401 for another room, the other role, or altered)."""
    nodes = two_nodes(*(["--bearer-token", token] if token else []))
    trace = interop.Trace()
    run(nodes, through_the_service_name(nodes, token, trace, decoders), trace)


async def owned_by_the_publishers_node(nodes: ch.TwoNodes, trace, created_decoders):
    """Publisher directly at A (own name: served there, no redirect); viewers reaching B, by
    the service name or by B's own name, are sent to A."""
    a, b = nodes.a, nodes.b
    room = f"direct-{uuid.uuid4().hex[:8]}"
    no_stun = RTCConfiguration(iceServers=[])
    publisher, viewer = RTCPeerConnection(no_stun), RTCPeerConnection(no_stun)
    try:
        video = publisher.addTransceiver(interop.MovingBarTrack(), direction="sendonly")
        video.setCodecPreferences(interop.codecs_for("video/H264"))
        publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await publisher.setLocalDescription(await publisher.createOffer())
        url = a.url(f"/whip/{room}")
        status, headers, body, history, _ = await request(
            nodes, a, "POST", url, publisher.localDescription.sdp.encode(),
            {"Content-Type": "application/sdp"}, follow=True)  # fmt: skip
        trace.add(f"publisher POST {url} -> {history} {status} {headers}", body)
        assert status == 201 and not history, f"direct publish at A: {history} {status} {body}"
        pub_session = headers.get("location", "")
        assert pub_session.startswith(a.public_url + "/"), f"session {pub_session!r} not on A"
        await publisher.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        await interop.wait_connected(publisher, "publisher")
        await asyncio.to_thread(nodes.cluster.wait_room_owner, room, a.name)

        # B's own name: B does not serve a room another node owns either.
        url = b.url(f"/whep/{room}")
        status, headers, body, _, _ = await request(
            nodes, b, "POST", url, await offer_of(publisher=False),
            {"Content-Type": "application/sdp"})  # fmt: skip
        assert_redirect(status, headers, body, a, f"/whep/{room}", f"viewer POST {url}")

        viewer.addTransceiver("audio", direction="recvonly")
        viewer_video = viewer.addTransceiver("video", direction="recvonly")
        view_session = await view_redirected(nodes, viewer, b, a, room, None, trace)
        await interop.wait_connected(viewer, "viewer")
        await interop.expect_frames(
            viewer_video, created_decoders, "video/H264", trace,
            lambda: f"publisher {publisher.connectionState}, viewer {viewer.connectionState}",
        )  # fmt: skip
        for session in (view_session, pub_session):
            status, _, body, _, _ = await request(nodes, b, "DELETE", session)
            assert status == 200, f"DELETE {session}: {status} {body}"
    finally:
        await viewer.close()
        await publisher.close()


def test_viewer_is_sent_to_the_publishers_node(two_nodes, decoders):  # noqa: F811
    """aiortc publishes directly at https://sfu-a.test (201, no redirect, A owns the room);
    a WHEP POST to B's own name is sent to A (307); an aiortc viewer through svc.test entering
    at B is sent to A and decodes the H264."""
    nodes = two_nodes()
    trace = interop.Trace()
    run(nodes, owned_by_the_publishers_node(nodes, trace, decoders), trace)


def test_pages_and_preflight_on_the_service_name_at_either_node(two_nodes):
    """Either node serves the pages for svc.test (no redirect: 200 HTML), and answers the CORS
    preflight of a WHIP/WHEP POST for svc.test itself (204, any origin, Authorization and
    Content-Type allowed)."""
    nodes = two_nodes()
    try:
        for entry in (nodes.a, nodes.b):
            hosts = nodes.hosts(entry)
            for path in ("/", "/send"):
                url = nodes.service_url(path)
                status, headers, body = ch.https_request("GET", url, hosts, nodes.context)
                assert status == 200 and "text/html" in headers.get("content-type", ""), (
                    f"GET {url} at {entry.name}: {status} {headers}"
                )
                assert "<html" in body.lower(), f"GET {url} at {entry.name}: {body[:200]}"
            for path in ("/whip/pre", "/whep/pre"):
                url = nodes.service_url(path)
                preflight = {
                    "Origin": f"https://{ch.SERVICE}:{nodes.port}",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type",
                }
                status, headers, _ = ch.https_request("OPTIONS", url, hosts, nodes.context,
                                                      headers=preflight)  # fmt: skip
                allowed = headers.get("access-control-allow-headers", "").lower()
                assert status in (200, 204) and headers.get("access-control-allow-origin") == "*"
                assert "authorization" in allowed and "content-type" in allowed, (
                    f"OPTIONS {url} at {entry.name}: {status} {headers}"
                )
    except BaseException:
        print(nodes.diagnostics())
        raise
