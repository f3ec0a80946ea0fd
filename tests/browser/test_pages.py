"""End-to-end tests of deadsfu's web pages in headless Chromium with its fake camera.

    DEADSFU_BIN=target/debug/deadsfu .venv/bin/python -m pytest -q tests/browser

Every browser is its own Chromium process with a fresh profile. Assertions are on decoded
video (videoWidth/videoHeight, getVideoPlaybackQuality().totalVideoFrames increasing) and on
the state the pages expose (window.deadsfu, window.deadsfuSend). Screenshots, console logs and
deadsfu's log of each test go to target/browser-artifacts/.
"""

import pathlib
import re
import urllib.request

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By

WEB = pathlib.Path(__file__).resolve().parents[2] / "crates" / "server" / "web"

START_TIMEOUT = 30  # publisher connected, first picture at a player
FRAMES_TIMEOUT = 20
FRAMES = 30  # about a second of the fake camera
IDLE_W, IDLE_H = 640, 360  # crates/media/idle/no-signal.h264
TOKEN = "browser-test-token"


def publish(browser, pages, room, width, height, label=None, token=None):
    """A /send page publishing the fake camera at width x height into room; returns it
    once the WHIP connection is up and the encoder sends the requested resolution."""
    b = browser(label or f"send-{room}")
    b.driver.get(pages.send(room=room, width=width, height=height, hint="detail",
                            access_token=token))
    b.driver.find_element(By.ID, "start").click()
    b.wait(lambda b: (b.state("deadsfuSend") or {}).get("state") == "sending", START_TIMEOUT,
           f"the publisher of {room} to be sending")
    b.wait(lambda b: b.state("deadsfuSend")["stats"].get("width") == width
           and b.state("deadsfuSend")["stats"].get("height") == height,
           START_TIMEOUT, f"the encoder to send {width}x{height}")
    return b


def wait_playing(b, width, height, what):
    b.wait(lambda b: (b.state() or {}).get("state") == "playing"
           and b.video()["w"] == width and b.video()["h"] == height,
           START_TIMEOUT, f"{what} to play at {width}x{height}")
    return b.wait_frames(FRAMES, FRAMES_TIMEOUT)


def click_room(b, room):
    """Clicks a room in the player's room list (a real click, retried if the list changed
    under the pointer)."""
    sel = f'#room-list [data-room="{room}"]'

    def click(b):
        try:
            b.driver.find_element(By.CSS_SELECTOR, sel).click()
            return True
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    b.wait(click, 15, f"room {room} in the room list to click")


def no_horizontal_overflow(b):
    return b.js("return document.documentElement.scrollWidth <= window.innerWidth + 1")


# ------------------------------------------------------------------------------ tests


def test_send_and_play(browser, sfu, pages_for):
    """/send publishes the fake camera; / in another browser plays it at 640x480."""
    pages = pages_for(sfu)
    sender = publish(browser, pages, "cam", 640, 480, label="sender")
    s = sender.state("deadsfuSend")
    assert s["sessionUrl"] and "/session/" in s["sessionUrl"]
    assert s["whipPosts"] == 1
    if s["h264Preferred"]:
        sender.wait(lambda b: b.state("deadsfuSend")["stats"].get("codec") == "H264", 10,
                    "the publisher to send H264")
    watch = sender.driver.find_element(By.ID, "watch-link")
    assert re.search(r"[?&]room=cam(&|$)", watch.get_attribute("href"))

    player = browser("player")
    player.driver.get(pages.player(room="cam"))
    v = wait_playing(player, 640, 480, "room cam")
    st = player.state()
    assert st["room"] == "cam" and st["whepPosts"] == 1 and st["lastError"] is None
    assert "not live" not in st["message"]
    print(f"first frame after {st['firstFrameMs']} ms; video {v}")
    # A second viewer in the same browser build: its offer has the first one's shape, so the
    # SFU answers it from that answer's template, without str0m (answer_template.rs).
    second = browser("second-player")
    second.driver.get(pages.player(room="cam"))
    wait_playing(second, 640, 480, "room cam, second viewer")
    second.wait_frames(10, FRAMES_TIMEOUT)
    assert second.state()["lastError"] is None and not second.uncaught_errors()
    metrics = urllib.request.urlopen(f"{sfu.base}/metrics", timeout=5).read().decode()
    assert re.search(r"^deadsfu_answers_from_template_total [1-9]", metrics, re.M), metrics
    # The stats line fills in from getStats().
    player.wait(lambda b: "640×480" in b.driver.find_element(By.ID, "stats").text
                and "fps" in b.driver.find_element(By.ID, "stats").text, 10,
                "the stats line")
    player.wait(lambda b: any(r["name"] == "cam" and r["live"] for r in b.state()["rooms"] or []),
                10, "room cam listed as live")
    sender.screenshot("sending")
    player.screenshot("playing")

    # Mute button toggles the <video>'s sound.
    assert player.js("return document.getElementById('video').muted") is True
    player.driver.find_element(By.ID, "unmute").click()
    assert player.js("return document.getElementById('video').muted") is False

    # Phone-sized window: still plays, nothing sticks out sideways.
    player.driver.set_window_size(390, 844)
    player.wait_frames(10, FRAMES_TIMEOUT)
    assert no_horizontal_overflow(player)
    player.screenshot("phone")
    sender.driver.set_window_size(390, 844)
    assert no_horizontal_overflow(sender)
    sender.screenshot("phone")

    # Stop ends the WHIP session.
    sender.driver.find_element(By.ID, "stop").click()
    sender.wait(lambda b: b.state("deadsfuSend")["state"] == "idle"
                and b.state("deadsfuSend")["sessionUrl"] is None, 10, "the publisher to stop")
    assert not sender.uncaught_errors()
    assert not player.uncaught_errors()


def test_second_publisher_gets_409(browser, sfu, pages_for):
    """A second /send to a room that is already live says the room is busy."""
    pages = pages_for(sfu)
    publish(browser, pages, "busy", 320, 240, label="first")
    second = browser("second")
    second.driver.get(pages.send(room="busy", width=320, height=240))
    second.driver.find_element(By.ID, "start").click()
    second.wait(lambda b: b.state("deadsfuSend")["state"] == "error", START_TIMEOUT,
                "the second publisher to be refused")
    msg = second.driver.find_element(By.ID, "message").text
    assert "409" in msg and "busy" in msg, msg
    assert second.driver.find_element(By.ID, "start").is_enabled()
    second.screenshot("busy")


def test_switch_rooms(browser, sfu, pages_for):
    """The player on room a switches to room b by a click in the room list: same WHEP
    session (no new POST), the picture becomes room b's (other resolution), frames go on."""
    pages = pages_for(sfu)
    publish(browser, pages, "a", 640, 480)
    publish(browser, pages, "b", 320, 240)
    player = browser("player")
    player.driver.get(pages.player(room="a"))
    wait_playing(player, 640, 480, "room a")
    session = player.state()["sessionUrl"]
    assert session

    player.wait(lambda b: any(r["name"] == "b" and r["live"] for r in b.state()["rooms"] or []),
                15, "room b listed as live")
    player.screenshot("on-a")
    click_room(player, "b")
    player.wait(lambda b: b.video()["w"] == 320 and b.video()["h"] == 240, START_TIMEOUT,
                "room b's 320x240 picture")
    player.wait_frames(FRAMES, FRAMES_TIMEOUT)
    st = player.state()
    assert st["room"] == "b"
    assert st["sessionUrl"] == session, "switching made a new session"
    assert st["whepPosts"] == 1, "switching made a new WHEP POST"
    assert st["switches"] == 1
    assert st["state"] == "playing"
    print(f"switch a -> b: new picture size after {st['lastSwitchMs']} ms")
    current = player.driver.find_element(By.CSS_SELECTOR, "#room-list [aria-current=true]")
    assert current.get_attribute("data-room") == "b"
    assert re.search(r"[?&]room=b(&|$)", player.driver.current_url)
    player.screenshot("on-b")

    # And back again.
    click_room(player, "a")
    player.wait(lambda b: b.video()["w"] == 640 and b.video()["h"] == 480, START_TIMEOUT,
                "room a's 640x480 picture again")
    player.wait_frames(FRAMES, FRAMES_TIMEOUT)
    st = player.state()
    assert st["sessionUrl"] == session and st["whepPosts"] == 1 and st["switches"] == 2
    assert not player.uncaught_errors()


def test_idle_picture(browser, sfu, pages_for):
    """A room nobody publishes to plays the "no signal" clip and says it is not live."""
    pages = pages_for(sfu)
    player = browser("player")
    player.driver.get(pages.player(room="empty"))
    v = wait_playing(player, IDLE_W, IDLE_H, "the idle clip of room empty")
    player.wait(lambda b: "room empty is not live (showing the idle picture)"
                in b.driver.find_element(By.ID, "message").text, 15, "the not-live message")
    print(f"idle clip: {v}; first frame after {player.state()['firstFrameMs']} ms")
    player.screenshot("idle")
    assert not player.uncaught_errors()


def test_idle_then_live(browser, sfu, pages_for):
    """A viewer waiting on the idle picture gets the publisher's video when it starts,
    in the same session, and the not-live message goes away."""
    pages = pages_for(sfu)
    player = browser("player")
    player.driver.get(pages.player(room="later"))
    wait_playing(player, IDLE_W, IDLE_H, "the idle clip of room later")
    session = player.state()["sessionUrl"]
    publish(browser, pages, "later", 320, 240)
    player.wait(lambda b: b.video()["w"] == 320 and b.video()["h"] == 240, START_TIMEOUT,
                "the live 320x240 picture")
    player.wait_frames(FRAMES, FRAMES_TIMEOUT)
    player.wait(lambda b: "not live" not in b.driver.find_element(By.ID, "message").text, 15,
                "the not-live message to go away")
    st = player.state()
    assert st["sessionUrl"] == session and st["whepPosts"] == 1
    player.screenshot("live")


def test_reconnect(browser, start_sfu, pages_for):
    """When the server goes away the player says so and retries with backoff; when it is
    back (same address) the player plays again on its own, in a new session."""
    sfu = start_sfu()
    pages = pages_for(sfu)
    player = browser("player")
    player.driver.get(pages.player(room="back"))
    player.wait(lambda b: (b.state() or {}).get("state") == "playing", START_TIMEOUT,
                "the player to play (idle picture)")
    first = player.state()["sessionUrl"]
    sfu.stop()
    player.wait(lambda b: b.state()["state"] != "playing" and b.state()["lastError"],
                START_TIMEOUT, "the player to notice the server is gone")
    player.screenshot("server-gone")
    msg = player.driver.find_element(By.ID, "message").text
    assert msg, "no message while the server is gone"
    start_sfu(port=sfu.port)
    player.wait(lambda b: b.state()["state"] == "playing" and b.state()["sessionUrl"] != first,
                60, "the player to play again after the server came back")
    player.wait_frames(FRAMES, FRAMES_TIMEOUT)
    st = player.state()
    assert st["whepPosts"] >= 2 and st["reconnects"] >= 1 and st["lastError"] is None
    player.screenshot("back")


def test_token(browser, start_sfu, pages_for):
    """With --bearer-token the player says the token is required or wrong (401) without or
    with a wrong token, and plays with ?access_token= or the token typed into its form."""
    sfu = start_sfu("--bearer-token", TOKEN)
    pages = pages_for(sfu)

    # The publisher without a token is refused, with the token it publishes.
    refused = browser("send-notoken")
    refused.driver.get(pages.send(room="t", width=320, height=240))
    refused.driver.find_element(By.ID, "start").click()
    refused.wait(lambda b: b.state("deadsfuSend")["state"] == "error", START_TIMEOUT,
                 "the publisher without a token to be refused")
    assert "token required or wrong (401)" in refused.driver.find_element(By.ID, "message").text
    refused.screenshot("401")
    publish(browser, pages, "t", 320, 240, token=TOKEN)

    for label, token in (("player-notoken", None), ("player-wrongtoken", "wrong")):
        p = browser(label)
        p.driver.get(pages.player(room="t", access_token=token))
        p.wait(lambda b: (b.state() or {}).get("state") == "error", START_TIMEOUT,
               "the player to be refused")
        assert "token required or wrong (401)" in p.driver.find_element(By.ID, "message").text
        assert p.driver.find_element(By.ID, "token-form").is_displayed()
        p.screenshot("401")

    # The token typed into the form of the last one.
    p.driver.find_element(By.ID, "token-input").send_keys(TOKEN)
    p.driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait_playing(p, 320, 240, "room t after typing the token")
    assert f"access_token={TOKEN}" in p.driver.current_url

    ok = browser("player-token")
    ok.driver.get(pages.player(room="t", access_token=TOKEN))
    wait_playing(ok, 320, 240, "room t with ?access_token=")
    assert ok.state()["lastError"] is None
    ok.screenshot("playing")


# ------------------------------------------------------------------ serving and assets


def test_pages_are_served(sfu, pages_for):
    """deadsfu serves the pages from the binary: / and /send and /web/{file}, identical to
    crates/server/web (so the embedded copy is current), with fitting content types."""
    if pages_for(sfu).static:
        pytest.skip("DEADSFU_TEST_PAGES=static: pages come from python's http.server")
    expected = {
        "/": ("index.html", "text/html"),
        "/send": ("send.html", "text/html"),
    }
    for f in sorted(WEB.iterdir()):
        kind = {".js": "javascript", ".css": "text/css", ".html": "text/html"}.get(f.suffix)
        if kind:
            expected[f"/web/{f.name}"] = (f.name, kind)
    for path, (name, kind) in expected.items():
        status, headers, body = sfu.get(path)
        assert status == 200, f"GET {path}: {status}"
        assert kind in headers.get("Content-Type", ""), f"GET {path}: {headers.get('Content-Type')}"
        assert body == (WEB / name).read_bytes(), f"GET {path} differs from web/{name}"
    status, _, _ = sfu.get("/web/no-such-file.js")
    assert status == 404


def test_pages_load_nothing_external():
    """The pages work offline: no http(s) URL, CDN, web font or @import in them."""
    for f in sorted(WEB.iterdir()):
        text = f.read_text(encoding="utf-8")
        for pattern in (r"""(src|href)\s*=\s*["']?(https?:)?//""", r"@import",
                        r"url\(\s*['\"]?(https?:)?//", r"fonts\.googleapis", r"cdn\."):
            m = re.search(pattern, text, re.IGNORECASE)
            assert not m, f"{f.name} refers to something external: {m.group(0)!r}"
