"""The web pages on a two-node cluster behind one service name, in headless Chromium.

Any node serves the pages for svc.test; the pages' WHIP/WHEP POSTs go to svc.test, and the
node that takes them answers `307` to the node that serves the room (DESIGN.md §2.4, §6).
When that is the other node the redirect crosses origins: Chromium sends a CORS preflight to
the target and the redirected POST without `Authorization`, so the `ticket=` the redirecting
node adds to the Location is what carries the bearer token's rights. (The redirected POST's
Origin stays the page's: the first hop was same-origin, so the origin is not "tainted" to
`null`; the nodes answer `Access-Control-Allow-Origin: *` either way.) The tests read what
Chromium did from DevTools network events (performance log).

The cluster (tests/interop/cluster_harness.py): nodes A (sfu-a.test, 127.0.0.2) and B
(sfu-b.test, 127.0.0.3), one HTTPS port number, one certificate for svc.test, sfu-a.test and
sfu-b.test from a test CA. Chromium maps svc.test to B (--host-resolver-rules), and accepts
that certificate by the hash of its key (--ignore-certificate-errors-spki-list), not by
ignoring certificate errors in general. Every page gets a recorder of its fetch() calls
(`window.__fetches`: URL, method, status, redirected, final URL), installed through the
DevTools protocol before the page's own scripts run.

    DEADSFU_BIN=target/debug/deadsfu .venv/bin/python -m pytest -q \
        tests/browser/test_cluster_pages.py

Needs redis-server and ffmpeg (the follow test streams FTL), besides Chromium.
"""

import json
import pathlib
import shutil
import sys
import time
import urllib.parse
import uuid

import pytest
from selenium.webdriver.common.by import By

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "interop"))
import cluster_harness as ch  # noqa: E402
from test_pages import (  # noqa: E402
    FRAMES, FRAMES_TIMEOUT, IDLE_H, IDLE_W, START_TIMEOUT, wait_playing,
)

TOKEN = "cluster-browser-token"
FTL_CHANNEL = 4343
FTL_SECRET = "clusterbrowsersecret"
FTL_W, FTL_H = 320, 240

FETCH_RECORDER = """
(() => {
  const original = window.fetch;
  const log = (window.__fetches = []);
  window.fetch = async function (input, init) {
    const entry = {
      url: String(typeof input === 'string' || input instanceof URL ? input : input.url),
      method: (init && init.method) || (input && input.method) || 'GET',
    };
    log.push(entry);
    try {
      const res = await original.apply(this, arguments);
      entry.status = res.status;
      entry.redirected = res.redirected;
      entry.finalUrl = res.url;
      return res;
    } catch (e) {
      entry.error = String(e);
      throw e;
    }
  };
})();
"""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def cluster(deadsfu_bin, tmp_path, artifacts, test_id, request):
    """cluster(*node_args, ftl_on_a=False) -> cluster_harness.TwoNodes; stopped at teardown,
    its logs copied to the artifacts directory and their tails printed if the test failed."""
    started = []

    def start(*node_args, ftl_on_a=False):
        nodes = ch.TwoNodes(deadsfu_bin, tmp_path / f"cluster{len(started) or ''}", node_args,
                            ftl_on_a=ftl_on_a)  # fmt: skip
        started.append(nodes)
        return nodes

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for nodes in started:
        nodes.close()
        for p in nodes.cluster.processes:
            shutil.copy(p.log_path, artifacts / f"{test_id}-{pathlib.Path(p.log_path).name}")
        if failed:
            sys.stderr.write("\n" + nodes.diagnostics() + "\n")


def chromium_flags(nodes: ch.TwoNodes, service_at: ch.Node):
    rules = ", ".join([
        f"MAP {ch.SERVICE} {service_at.ip}",
        f"MAP {nodes.a.hostname} {nodes.a.ip}",
        f"MAP {nodes.b.hostname} {nodes.b.ip}",
    ])  # fmt: skip
    return [
        f"--host-resolver-rules={rules}",
        f"--ignore-certificate-errors-spki-list={nodes.certs.leaf_spki_sha256}",
    ]


def open_page(browser, nodes, label, url, service_at=None):
    """A Chromium that reaches svc.test at `service_at` (default B), with the fetch recorder
    and DevTools network events kept, on `url`."""
    b = browser(label, extra_flags=chromium_flags(nodes, service_at or nodes.b),
                performance_log=True)  # fmt: skip
    b.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": FETCH_RECORDER})
    b.driver.get(url)
    return b


def page_url(host: str, port: int, path: str, **params) -> str:
    qs = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return f"https://{host}:{port}{path}" + ("?" + qs if qs else "")


def fetches(b, method: str, path_part: str):
    return [f for f in (b.js("return window.__fetches || []") or [])
            if f["method"] == method and path_part in f["url"]]  # fmt: skip


def start_publishing(b, width, height):
    b.driver.find_element(By.ID, "start").click()
    b.wait(lambda b: (b.state("deadsfuSend") or {}).get("state") == "sending", START_TIMEOUT,
           "the publisher to be sending")
    b.wait(lambda b: b.state("deadsfuSend")["stats"].get("width") == width
           and b.state("deadsfuSend")["stats"].get("height") == height,
           START_TIMEOUT, f"the encoder to send {width}x{height}")  # fmt: skip


def assert_redirected_fetch(b, path: str, service_url: str, owner: ch.Node, what: str):
    """The page POSTed to svc.test once, and fetch() reports it redirected to the owner
    (which answered 201)."""
    posts = fetches(b, "POST", path)
    assert len(posts) == 1, f"{what}: POSTs to {path}: {posts}"
    post = posts[0]
    assert post["url"] == service_url, f"{what}: POSTed to {post['url']}, wanted {service_url}"
    assert post.get("status") == 201 and post.get("redirected") is True, f"{what}: {post}"
    assert post["finalUrl"].startswith(f"{owner.public_url}{path}?ticket="), (
        f"{what}: ended at {post['finalUrl']}, wanted {owner.public_url}{path}?ticket=..."
    )


def network_events(b) -> list:
    """The DevTools Network.* events since the last call (the log is drained by reading)."""
    events = []
    for entry in b.driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"].startswith("Network."):
            events.append(message)
    return events


def assert_cross_origin_redirect(events: list, start_url: str, owner: ch.Node, path: str,
                                 token, what: str) -> dict:  # fmt: skip
    """What Chromium's network stack did with the page's last POST to `start_url`: 307 to the
    owner's URL with a ticket, a CORS preflight there that passed, the redirected POST sent
    without Authorization (the origin changed) and answered 201. With `token`, the first
    POST carried it. Returns the redirected POST's request headers."""
    sent = [e["params"] for e in events if e["method"] == "Network.requestWillBeSent"]
    first = [p for p in sent
             if p["request"]["method"] == "POST" and p["request"]["url"] == start_url]  # fmt: skip
    assert first, f"{what}: DevTools saw no POST to {start_url}"
    rid = first[-1]["requestId"]
    hops = [p for p in sent if p["requestId"] == rid]
    assert len(hops) == 2, f"{what}: the POST went {[h['request']['url'] for h in hops]}"
    redirected = hops[1]
    status = redirected.get("redirectResponse", {}).get("status")
    url = redirected["request"]["url"]
    assert status == 307, f"{what}: {start_url} answered {status}, wanted 307"
    assert url.startswith(f"{owner.public_url}{path}?ticket="), f"{what}: redirected to {url}"

    def wire_headers(u):
        """Headers Chromium really sent (ExtraInfo; HTTP/2 pseudo-headers name the URL)."""
        split = urllib.parse.urlsplit(u)
        target = (split.netloc, split.path + ("?" + split.query if split.query else ""))
        for e in events:
            if e["method"] == "Network.requestWillBeSentExtraInfo":
                h = e["params"]["headers"]
                if (h.get(":authority"), h.get(":path")) == target and h.get(":method") == "POST":
                    return {k.lower(): v for k, v in h.items()}
        raise AssertionError(f"{what}: no headers recorded for the POST to {u}")

    first_headers, redirected_headers = wire_headers(start_url), wire_headers(url)
    if token:
        assert first_headers.get("authorization") == f"Bearer {token}", (
            f"{what}: the page's POST to {start_url} carried no token: {first_headers}"
        )
    assert "authorization" not in redirected_headers, (
        f"{what}: Chromium kept Authorization across origins, so the ticket was not what "
        f"let the POST in: {redirected_headers}"
    )
    preflights = [
        e["params"] for e in events if e["method"] == "Network.responseReceived"
        and e["params"].get("type") == "Preflight" and e["params"]["response"]["url"] == url
    ]  # fmt: skip
    assert preflights and 200 <= preflights[0]["response"]["status"] < 300, (
        f"{what}: CORS preflight of {url}: {[p['response']['status'] for p in preflights]}"
    )
    final = [
        e["params"]["response"]["status"] for e in events
        if e["method"] == "Network.responseReceived" and e["params"]["requestId"] == rid
    ]  # fmt: skip
    assert final == [201], f"{what}: the redirected POST answered {final}"
    return redirected_headers


def log_has(node: ch.Node, *parts: str) -> bool:
    return any(all(p in line for p in parts) for line in node.log_text().splitlines())


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "bearer-token"])
def test_pages_on_the_service_name(cluster, browser, token):
    """Room R is held by A for a viewer waiting there (a player opened at sfu-a.test). The
    publisher page opened at https://svc.test/send (served by B) publishes: its WHIP POST to
    svc.test gets 307 to sfu-a.test (cross-origin), the session is on A, and the waiting
    viewer gets the live picture. A player opened at https://svc.test/ (served by B) plays R
    from A the same way. With --bearer-token on both nodes, the pages carry
    ?access_token= and the redirected POSTs are let in by the ticket."""
    started = time.monotonic()
    nodes = cluster(*(["--bearer-token", token] if token else []))
    a, b, port = nodes.a, nodes.b, nodes.port
    room = f"r{uuid.uuid4().hex[:8]}"
    svc = f"https://{ch.SERVICE}:{port}"

    waiting = open_page(browser, nodes, "player-at-a",
                        page_url(a.hostname, port, "/", room=room, access_token=token))  # fmt: skip
    wait_playing(waiting, IDLE_W, IDLE_H, f"the idle picture of {room} at A")
    session = waiting.state()["sessionUrl"]
    assert session.startswith(a.public_url + "/"), session
    nodes.cluster.wait_room_owner(room, a.name)  # a lease for waiting viewers

    sender = open_page(browser, nodes, "send-via-svc",
                       page_url(ch.SERVICE, port, "/send", room=room, width=640, height=480,
                                hint="detail", access_token=token))  # fmt: skip
    start_publishing(sender, 640, 480)
    s = sender.state("deadsfuSend")
    assert s["sessionUrl"].startswith(a.public_url + "/session/"), (
        f"publisher session {s['sessionUrl']}, wanted one on A ({a.public_url})"
    )
    assert s["whipPosts"] == 1
    assert_redirected_fetch(sender, f"/whip/{room}", f"{svc}/whip/{room}", a, "publisher")
    sent = assert_cross_origin_redirect(network_events(sender), f"{svc}/whip/{room}", a,
                                        f"/whip/{room}", token, "publisher")  # fmt: skip
    print(f"redirected WHIP POST: Origin {sent.get('origin')!r}, no Authorization")
    assert log_has(b, "redirected", f'room="{room}"', "role=Publish", f"to={a.public_url}/whip/"), (
        "B did not log the publisher's redirect to A"
    )
    nodes.cluster.wait_room_owner(room, a.name)

    # The viewer waiting at A gets the live picture in its session.
    waiting.wait(lambda p: p.video()["w"] == 640 and p.video()["h"] == 480, START_TIMEOUT,
                 "the live 640x480 picture at the viewer waiting at A")
    waiting.wait_frames(FRAMES, FRAMES_TIMEOUT)
    assert waiting.state()["sessionUrl"] == session

    player = open_page(browser, nodes, "player-via-svc",
                       page_url(ch.SERVICE, port, "/", room=room, access_token=token))
    wait_playing(player, 640, 480, f"room {room} through {ch.SERVICE}")
    st = player.state()
    assert st["sessionUrl"].startswith(a.public_url + "/session/"), (
        f"player session {st['sessionUrl']}, wanted one on A ({a.public_url})"
    )
    assert st["whepPosts"] == 1 and st["lastError"] is None, st
    assert_redirected_fetch(player, f"/whep/{room}", f"{svc}/whep/{room}", a, "player")
    assert_cross_origin_redirect(network_events(player), f"{svc}/whep/{room}", a,
                                 f"/whep/{room}", token, "player")  # fmt: skip
    assert log_has(b, "redirected", f'room="{room}"', "role=View", f"to={a.public_url}/whep/")
    player.screenshot("playing")

    for page in (waiting, sender, player):
        assert not page.uncaught_errors(), page.label
    print(f"took {time.monotonic() - started:.1f}s")


def test_player_follows_the_room_to_its_new_owner(cluster, browser, tmp_path):
    """A player opened at https://sfu-b.test/ waits in empty room R (idle picture; B holds R
    for it). An FTL stream (which cannot be redirected) starts R on A: A takes R over. The
    player sees R live on A in B's room list, reconnects (window.deadsfu.follows), its WHEP
    POST to sfu-b.test gets 307 to sfu-a.test, and it plays the stream from A."""
    started = time.monotonic()
    nodes = cluster(ftl_on_a=True)
    a, b, port = nodes.a, nodes.b, nodes.port
    room = str(FTL_CHANNEL)  # an FTL channel's room is named after its id
    nodes.cluster.admin(["ftl-key", "set", room, FTL_SECRET], "ftl-key")
    video, audio = ch.make_ftl_media(tmp_path, FTL_W, FTL_H)

    player = open_page(browser, nodes, "player-at-b", page_url(b.hostname, port, "/", room=room))
    wait_playing(player, IDLE_W, IDLE_H, f"the idle picture of {room} at B")
    first = player.state()["sessionUrl"]
    assert first.startswith(b.public_url + "/"), first
    nodes.cluster.wait_room_owner(room, b.name)

    ch.ftl_push(nodes.cluster, a, f"{FTL_CHANNEL}-{FTL_SECRET}", video, audio)
    nodes.cluster.wait_room_owner(room, a.name)

    player.wait(lambda p: p.state()["follows"] >= 1 and p.state()["state"] == "playing"
                and p.video()["w"] == FTL_W and p.video()["h"] == FTL_H,
                START_TIMEOUT,
                f"the player to follow {room} to A and play {FTL_W}x{FTL_H}")  # fmt: skip
    player.wait_frames(FRAMES, FRAMES_TIMEOUT)
    st = player.state()
    assert st["sessionUrl"].startswith(a.public_url + "/session/"), (
        f"session after the follow {st['sessionUrl']}, wanted one on A ({a.public_url})"
    )
    assert st["follows"] == 1 and st["whepPosts"] == 2, st
    posts = fetches(player, "POST", f"/whep/{room}")
    assert len(posts) == 2 and posts[1]["url"] == f"{b.public_url}/whep/{room}", posts
    assert posts[1].get("redirected") is True and posts[1]["finalUrl"].startswith(
        f"{a.public_url}/whep/{room}?ticket="), posts  # fmt: skip
    assert log_has(b, "redirected", f'room="{room}"', "role=View", f"to={a.public_url}/whep/")
    assert_cross_origin_redirect(network_events(player), f"{b.public_url}/whep/{room}", a,
                                 f"/whep/{room}", None, "the player following")  # fmt: skip
    player.screenshot("followed")
    assert not player.uncaught_errors()
    print(f"took {time.monotonic() - started:.1f}s")
