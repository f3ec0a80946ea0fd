#!/usr/bin/env python3
"""What an offer that never connects costs: deadsfu on one core takes `--offers` WHEP offers
(a valid SDP offer, then no ICE at all, as in a flood of offers), with the admission limits
lifted so that all are taken. Reports deadsfu's RSS per session held (the slope) and its CPU
per offer, for the flood tool's minimal offer (one video section, 412 bytes) and for one
Chromium made (`crates/rtc/fixtures/chromium-offer.sdp`: audio and video, 43 payload types, 6 KB, its
candidates removed); the connected figure to compare with is step (4)'s RSS per viewer.

    bench/offer_flood.py --bin target/release [--before DIR] [--offers 1000]
(--before: a directory with another build's `deadsfu`, measured in the same sitting.)
"""

import argparse
import concurrent.futures
import json
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import join_storm  # noqa: E402

OFFERS = 1000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def never_connecting_offer():
    """The flood tool's offer (crates/loadtest/src/stunflood.rs): audio and video, recvonly."""
    src = open(os.path.join(ROOT, "crates/loadtest/src/stunflood.rs")).read()
    literal = src.split('NEVER_CONNECTING_OFFER: &str = "')[1].split('";')[0]
    return literal.encode().decode("unicode_escape").encode()


def chromium_offer():
    with open(os.path.join(ROOT, "crates", "rtc", "fixtures", "chromium-offer.sdp"), "rb") as f:
        return f.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def measure(bins, offers=OFFERS):
    """Both offers, on a fresh deadsfu each."""
    return {"minimal": measure_offer(bins, never_connecting_offer(), offers),
            "chromium": measure_offer(bins, chromium_offer(), offers)}


def measure_offer(bins, offer, offers):
    # Long enough a deadline that none of them expires while measured.
    server = bench.start_deadsfu(bins, ["--connect-timeout", "60"])
    try:
        def post(_):
            req = urllib.request.Request(server.whep, data=offer,
                                         headers={"content-type": "application/sdp"})
            try:
                return urllib.request.urlopen(req, timeout=30).status
            except urllib.error.HTTPError as e:
                return e.code
        for _ in range(20):  # warm-up: allocator arenas, the room
            post(0)
        time.sleep(1)
        rss0 = rss_kib(server.proc.pid)
        cpu0 = join_storm.cpu_secs(server.proc.pid)
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            codes = list(ex.map(post, range(offers)))
        cpu1 = join_storm.cpu_secs(server.proc.pid)
        time.sleep(1)
        rss1 = rss_kib(server.proc.pid)
    finally:
        server.stop()
    created = codes.count(201)
    return {"offers": offers, "created": created,
            "rss_per_pending_kib": round((rss1 - rss0) / max(1, created), 1),
            "cpu_per_offer_us": round((cpu1 - cpu0) / max(1, offers) * 1e6)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="directory with deadsfu")
    ap.add_argument("--before", help="directory with an earlier build's deadsfu")
    ap.add_argument("--offers", type=int, default=OFFERS)
    args = ap.parse_args()
    results = {}
    if args.before:
        results["before"] = measure(args.before, args.offers)
    results["after"] = measure(args.bin, args.offers)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
