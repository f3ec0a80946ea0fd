#!/usr/bin/env python3
"""The deadsfu benchmark driver (run through bench/run, which builds and sets up first).

Measures, in one run, on loopback, with the SFU pinned to CPU 0 and the load generator to CPU 1:
  1. the raw UDP send rate of one core (deadsfu-udprate),
  2. deadsfu viewers per core (1 Mbit/s H264 + Opus, raise viewers until loss > 0.1%),
  3. Janus (streaming plugin) under the same load,
  4. RSS per viewer (slope),
  5. time to first frame with a 4 s keyframe interval (GOP cache on and off),
  6. forwarding latency p50/p99 at 80% of deadsfu's capacity,
  7. a join storm (join_storm.py): time to first frame, CPU per join against the handshake's
     bare cryptography, connected viewers' latency before and during,
  8. the STUN flood capacity of one media worker (stun_flood.py),
  9. what an offer that never connects costs (offer_flood.py),
and writes BENCHMARKS.md with a plot of loss and CPU against viewers.
"""

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS_LIMIT_PCT = 0.1
DELIVERY_MIN_PCT = 97.0  # the delivery figure reads up to ~2% high (200 ms report lag)
# A server that only keeps up by queueing has not kept up: a step also fails when packets wait
# this long (p99) between the publisher and the viewers.
LATENCY_P99_LIMIT_MS = 250.0
# Above this the load generator (one core) is the bottleneck of a step.
GENERATOR_CPU_LIMIT_PCT = 90.0
SFU_CPU = "0"
GEN_CPU = "1"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server under test, pinned to SFU_CPU, stopped when the step ends."""

    def __init__(self, proc, kind, whip=None, whep=None, janus=None):
        self.proc, self.kind = proc, kind
        self.whip, self.whep, self.janus = whip, whep, janus

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def admission_flags(bins):
    """Every viewer of the load generator comes from 127.0.0.1: lift the per-client admission
    limits (meant for the internet) for the benchmark; builds from before them have none."""
    help_text = subprocess.run([f"{bins}/deadsfu", "serve", "--help"], capture_output=True,
                               text=True).stdout
    if "--max-pending-per-ip" not in help_text:
        return []
    return ["--max-pending-per-ip", "100000", "--new-sessions-per-ip", "100000",
            "--max-pending-sessions", "100000", "--max-sessions", "1000000"]


def start_deadsfu(bins, extra=()):
    port = free_port()
    cmd = ["taskset", "-c", SFU_CPU, f"{bins}/deadsfu", "serve",
           "--http", f"127.0.0.1:{port}", "--udp-port", "0", "--workers", "1",
           "--ice-candidate-host", "127.0.0.1",
           "--ftl-listen", f"127.0.0.1:{free_port()}", "--ftl-udp-port", "0",
           *admission_flags(bins), *extra]
    env = dict(os.environ, RUST_LOG="warn")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env, text=True)
    # The banner is printed once the HTTP listener is bound.
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"deadsfu did not start: {line!r}")
    base = f"http://127.0.0.1:{port}"
    return Server(proc, "deadsfu", whip=f"{base}/whip/bench", whep=f"{base}/whep/bench")


def start_janus(preload):
    env = dict(os.environ, LD_PRELOAD=preload)
    proc = subprocess.Popen(["taskset", "-c", SFU_CPU, "janus", "-F", "bench/janus", "-d", "2"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    url = "http://127.0.0.1:8088/janus/info"
    deadline = time.time() + 20
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError("janus did not start (is port 8088 free?)")
            time.sleep(0.2)  # polling a process that has no readiness signal
    return Server(proc, "janus", janus="http://127.0.0.1:8088/janus")


def ramp_rate(viewers):
    """Viewers started per second: a ramp of about 8 s, between 50/s and 100/s.

    Each sign-up costs the server about 1.5 ms of its core (SDP, a str0m session, DTLS) and the
    load generator about 2 ms of its own; at 100/s that is some 15% of the server's core on top
    of forwarding to everyone already there, which a server near its capacity still absorbs
    (a faster ramp would overload it at the end of the ramp, and the backlog would spill into
    the measuring window). 5000 viewers take 50 s."""
    return min(100, max(50, viewers // 8))


def settle_args(viewers):
    """When the measuring window opens: at least 3 s after the last sign-up (the last DTLS
    handshakes and GOP bursts), and, up to 5-20 s (1 s per 250 viewers), not before a second's
    p99 forwarding latency is back under the pass limit: the ramp costs the server too, and one
    near its capacity ends the ramp with a queue to drain. Capacity is steady-state load; a
    server that never drains it still fails the step on latency or delivery."""
    settle_max = max(5, min(20, viewers // 250))
    return settle_max, ["--settle", "3s", "--settle-max", f"{settle_max}s",
                        "--settle-latency", f"{LATENCY_P99_LIMIT_MS:.0f}ms"]


def loadtest(bins, server, viewers, duration, ramp=None, extra=()):
    if "--ramp" in extra:
        ramp = float(extra[extra.index("--ramp") + 1])
    else:
        ramp = ramp or ramp_rate(viewers)
        extra = ["--ramp", str(ramp), *extra]
    settle, settle_opts = settle_args(viewers)
    cmd = ["taskset", "-c", GEN_CPU, f"{bins}/deadsfu-loadtest", "--quiet",
           "--viewers", str(viewers), "--duration", f"{duration}s", *settle_opts,
           "--bitrate", "1M", "--sfu-pid", str(server.proc.pid), *extra]
    if server.kind == "deadsfu":
        cmd += ["--whip", server.whip, "--whep", server.whep]
    else:
        cmd += ["--janus", server.janus]
    out = subprocess.run(cmd, capture_output=True, text=True,
                         timeout=duration + settle + viewers / ramp + 120)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"loadtest failed: {out.stderr[-2000:]}")
    return json.loads(lines[-1])


def step(bins, kind, preload, viewers, duration, extra_server=(), extra_load=()):
    server = (start_deadsfu(bins, extra_server) if kind == "deadsfu"
              else start_janus(preload))
    try:
        r = loadtest(bins, server, viewers, duration, extra=extra_load)
    finally:
        server.stop()
    # Passing: little loss, every viewer connected, and the server keeps up (a server that
    # falls behind queues in its socket buffer before it drops, so its delivery sinks first).
    r["ok"] = (r["loss_pct"] <= LOSS_LIMIT_PCT and r["connected"] == viewers
               and (r.get("delivery_pct") or 0) >= DELIVERY_MIN_PCT
               and (r.get("latency_p99_ms") or 0) <= LATENCY_P99_LIMIT_MS)
    # A generator at its limit measures itself, not the server: say so (the step still counts).
    r["generator_limited"] = (r.get("generator_cpu_pct") or 0) >= GENERATOR_CPU_LIMIT_PCT
    log(f"  {kind:7} {viewers:5} viewers: loss {r['loss_pct']:.3f}% connected {r['connected']} "
        f"delivered {r.get('delivery_pct')}% latency p99 {r.get('latency_p99_ms')} ms "
        f"sfu cpu {r['sfu_cpu_pct']}% rss {r['sfu_rss_kib']} KiB, {r['pps']:.0f} pkt/s, "
        f"generator cpu {r['generator_cpu_pct']}%, window after {r.get('settled_after_s')} s "
        f"-> {'ok' if r['ok'] else 'over'}"
        + (" (GENERATOR-LIMITED)" if r["generator_limited"] else ""))
    return r


def capacity(bins, kind, preload, ladder, duration, refine):
    """Raises viewers along `ladder` until a step fails, then bisects `refine` times."""
    points = []
    good, bad = None, None
    for n in ladder:
        r = step(bins, kind, preload, n, duration)
        points.append(r)
        if r["ok"]:
            good = r
        else:
            bad = r
            break
    for _ in range(refine):
        if good is None or bad is None or bad["viewers"] - good["viewers"] <= max(10, good["viewers"] // 20):
            break
        n = (good["viewers"] + bad["viewers"]) // 2
        r = step(bins, kind, preload, n, duration)
        points.append(r)
        if r["ok"]:
            good = r
        else:
            bad = r
    points.sort(key=lambda p: p["viewers"])
    return points, good


def slope(points, key):
    """Least-squares slope of `key` over viewers."""
    pts = [(p["viewers"], p[key]) for p in points if p.get(key) is not None]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else None


# The fan-out measurement of step (1): this many receiver sockets (viewers of the load
# generator's own receiving code), GSO buffers of this many datagrams each.
FANOUT_VIEWERS = 1000
FANOUT_SEGMENTS = 4


def udprate(bins, seconds):
    """Step (1). Every send method to a plain reader and to a reader set up like the viewers
    (UDP_GRO), then a fan-out to FANOUT_VIEWERS viewer sockets. The raw limit is the best
    sender figure with GRO readers: the SFU is measured against the load generator's viewers,
    which take GSO buffers whole, so the yardstick uses the same receiving set-up (a plain
    reader makes the kernel cut every GSO buffer into datagrams inside the sender's system
    call, work the SFU under test does not do)."""
    out = subprocess.run([f"{bins}/deadsfu-udprate", "--seconds", str(seconds),
                          "--send-cpu", SFU_CPU, "--recv-cpu", GEN_CPU,
                          "--fanout", str(FANOUT_VIEWERS), "--segments", str(FANOUT_SEGMENTS)],
                         capture_output=True, text=True, check=True)
    log(out.stderr.strip())
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind, style in (("deadsfu", "o-"), ("janus", "s--")):
        pts = results["capacity"][kind]["points"]
        xs = [p["viewers"] for p in pts]
        ax1.plot(xs, [max(p["loss_pct"], 1e-4) for p in pts], style, label=kind)
        ax2.plot(xs, [p["sfu_cpu_pct"] or 0 for p in pts], style, label=kind)
    ax1.axhline(LOSS_LIMIT_PCT, color="grey", lw=0.8, ls=":")
    ax1.set_yscale("log")
    ax1.set_xlabel("viewers (1 Mbit/s H264 + Opus)")
    ax1.set_ylabel("loss % (floor 1e-4)")
    ax1.set_title("Loss against viewers")
    ax2.set_xlabel("viewers (1 Mbit/s H264 + Opus)")
    ax2.set_ylabel("server CPU % (one core)")
    ax2.set_title("Server CPU against viewers")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine():
    def sh(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""
    lscpu = sh(["lscpu"])
    keep = ("Architecture", "Model name", "CPU(s)", "Thread(s) per core", "CPU max MHz",
            "L2 cache", "L3 cache", "Hypervisor vendor", "Virtualization type")
    lines = [l for l in lscpu.splitlines() if l.split(":")[0].strip() in keep]
    return {"uname": sh(["uname", "-srvmo"]), "lscpu": "\n".join(lines),
            "janus": sh(["dpkg-query", "-W", "-f", "${Version}", "janus"]),
            "rustc": sh(["rustc", "--version"])}


def fmt(v, digits=2):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def join_storm_md(js):
    """Step (7), when the run has it."""
    if not js:
        return ""
    storm, crypto = js["storm"], js.get("crypto") or {}
    dtls = js.get("dtls_in_memory") or {}
    return f"""
### Join storm (7)

{js['joiners']} viewers joining as fast as the load generator can (asked {js['asked_rate']:.0f}/s,
achieved {fmt(storm['achieved_rate'], 0)}/s) into a room that already has {js['existing']}
viewers, deadsfu on one core.

| figure | value |
|---|---:|
| joiners' time to first frame, p50 / p99 | {fmt(storm['ttff_p50_ms'], 0)} / {fmt(storm['ttff_p99_ms'], 0)} ms |
| connected viewers' forwarding latency p99, before / during | {fmt(js['before']['latency_p99_ms'])} / {fmt(js['during']['latency_p99_ms'])} ms |
| deadsfu CPU per join (SDP, ICE, DTLS, set-up and tear-down), all in | {fmt(js['joins_alone']['cpu_per_join_us'], 0)} µs |
| the same without the connected viewers' upkeep meanwhile ({fmt(js['joins_alone'].get('upkeep_us_per_viewer_second'), 0)} µs per viewer-second) | {fmt(js['joins_alone'].get('own_cpu_per_join_us'), 0)} µs |
| a handshake's bare public-key cryptography on this machine | {fmt(crypto.get('total_us'), 0)} µs |
| per join ÷ cryptography, all in / own | {fmt(js.get('per_join_over_crypto'), 1)}× / {fmt(js.get('own_per_join_over_crypto'), 1)}× |
| the server's side of a DTLS handshake with deadsfu's DTLS in memory (`dtls_handshake_cost`) | {fmt(dtls.get('server_handshake_us'), 0)} µs |
| the public-key work inside it, by the same OpenSSL | {fmt(dtls.get('public_key_work_us'), 0)} µs |
"""


def stun_flood_md(sf):
    """Step (8), when the run has it."""
    if not sf:
        return ""
    rows = "\n".join(
        f"| {s['rate']:,} | {fmt((s.get('flood') or {}).get('pps'), 0)} | {s['loss_pct']:.3f}% "
        f"| {fmt(s.get('delivery_pct'), 1)}% | {s['sfu_cpu_pct']}% | {'ok' if s['ok'] else 'loss'} |"
        for s in sf["steps"])
    more = (" (the most the flood tool sent: the worker was not overwhelmed)"
            if sf.get("beyond_ladder") else "")
    return f"""
### STUN flood capacity of one media worker (8)

{sf['viewers']} viewers of one stream on a one-worker deadsfu, while Binding requests naming
a real session's ufrag with garbage integrity arrive from 64 addresses at rising rates. The
capacity is the highest rate at which the viewers still lose < 0.1%:
**{sf['capacity_pps']:,} checks/s**{more}.

| checks/s asked | sent | viewers' loss | delivered | deadsfu CPU | |
|---:|---:|---:|---:|---:|---|
{rows}
"""


def offer_flood_md(of, rss_connected):
    """Step (9), when the run has it."""
    if not of:
        return ""
    def share(kib):
        return f"{kib / rss_connected * 100:.0f}%" if rss_connected else "–"
    rows = "\n".join(
        f"| {name} | {r['created']:,} of {r['offers']:,} | {r['rss_per_pending_kib']} KiB "
        f"| {share(r['rss_per_pending_kib'])} | {r['cpu_per_offer_us']:,} µs |"
        for name, r in of.items())
    return f"""
### What an offer that never connects costs (9)

WHEP offers that never start ICE, on a one-worker deadsfu with the admission limits lifted;
RSS per session held, against a connected viewer's {fmt(rss_connected, 1)} KiB from (4).

| offer | sessions held | RSS per session | of a connected viewer | deadsfu CPU per offer |
|---|---:|---:|---:|---:|
{rows}
"""


def write_markdown(results, path, plot_rel):
    m = results["machine"]
    u = results["udprate"]
    d = results["capacity"]["deadsfu"]
    j = results["capacity"]["janus"]
    dcap = d["capacity"] or {}
    jcap = j["capacity"] or {}
    # (1) raw limit: the best sender figure with GRO readers (see udprate()); results of an
    # older deadsfu-udprate have only the plain readers' best.
    best = u.get("raw_limit_pps") or u["best_pps"]
    best_method = {"gro_sendto": "`sendto`", "gro_sendmmsg": "`sendmmsg`",
                   "gro_gso": "GSO, 54 datagrams per buffer",
                   "gro_sendmmsg_gso": "`sendmmsg` of GSO buffers",
                   "fanout_sendmmsg": "fan-out, `sendmmsg`", "fanout_gso": "fan-out, GSO",
                   "plain": "plain reader: this kernel refused `UDP_GRO`"}.get(
                       u.get("raw_limit_method"), "plain reader")
    fanout = u.get("fanout_gso_pps")
    sealed = u.get("fanout_gso_sealed_pps")
    dpps = dcap.get("pps")
    ratio_raw = dpps / best if dpps else None
    ratio_fanout = dpps / fanout if dpps and fanout else None
    ratio_janus = (dcap.get("viewers", 0) / jcap["viewers"]) if jcap.get("viewers") else None
    lat = results["latency"]
    tt = results["ttff"]
    rss = results["rss_per_viewer_kib"]
    targets = [
        ("≥ 2000 viewers per core at < 0.1% loss", f"{dcap.get('viewers', 0)}",
         dcap.get("viewers", 0) >= 2000),
        ("≥ 60% of raw UDP send rate per core", fmt(ratio_raw and ratio_raw * 100, 1) + "%",
         ratio_raw is not None and ratio_raw >= 0.6),
        ("≥ 3× Janus's viewers per core", fmt(ratio_janus, 1) + "×",
         ratio_janus is not None and ratio_janus >= 3),
        ("forwarding latency p99 < 2 ms at 80% load", fmt(lat["deadsfu"].get("latency_p99_ms")) + " ms",
         (lat["deadsfu"].get("latency_p99_ms") or 1e9) < 2),
        ("RSS ≤ 100 KiB per viewer", fmt(rss["deadsfu"], 1) + " KiB",
         rss["deadsfu"] is not None and rss["deadsfu"] <= 100),
    ]

    def udprate_table():
        def cell(key):
            sent, got = u.get(f"{key}_pps"), u.get(f"{key}_received_pps")
            if sent is None:
                return "–"
            return f"{sent:,.0f} ({got:,.0f})" if got is not None else f"{sent:,.0f}"
        rows = ["| sender (CPU " + SFU_CPU + ") | plain reader | reader with `UDP_GRO` (as the viewers) |",
                "|---|---:|---:|"]
        for key, label in (("sendto", "`sendto`, one datagram per call"),
                           ("sendmmsg", "`sendmmsg`, 64 datagrams per call"),
                           ("gso", "GSO, 54 datagrams per buffer"),
                           ("sendmmsg_gso", "`sendmmsg` of 8 GSO buffers of 54")):
            rows.append(f"| {label} | {cell(key)} | {cell('gro_' + key)} |")
        n = u.get("fanout_viewers", FANOUT_VIEWERS)
        seg = u.get("fanout_segments", FANOUT_SEGMENTS)
        rows.append(f"| fan-out to {n} viewer sockets: `sendmmsg`, 64 viewers per call, one datagram each | | {cell('fanout_sendmmsg')} |")
        rows.append(f"| fan-out to {n} viewer sockets: `sendmmsg` of GSO buffers of {seg}, 64 viewers per call | | {cell('fanout_gso')} |")
        return "\n".join(rows)

    def points_table(points):
        rows = ["| viewers | connected | loss % | delivered % | latency p50 / p99 ms | Mbit/s out | pkt/s out | server CPU % | server RSS KiB | generator CPU % | settle s |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in points:
            rows.append(f"| {p['viewers']} | {p['connected']} | {p['loss_pct']:.3f} | "
                        f"{fmt(p.get('delivery_pct'), 1)} | {fmt(p.get('latency_p50_ms'))} / {fmt(p.get('latency_p99_ms'))} | "
                        f"{p['mbps']:.0f} | {p['pps']:.0f} | {fmt(p['sfu_cpu_pct'], 0)} | "
                        f"{p['sfu_rss_kib']} | {fmt(p['generator_cpu_pct'], 0)} | "
                        f"{fmt(p.get('settled_after_s'), 0)} |")
        return "\n".join(rows)

    md = f"""# Benchmarks

Measured by `bench/run` ({results['mode']} run, {results['date']}); the method is in
[bench/README.md](bench/README.md). Everything runs on loopback on one machine: the server
under test is pinned to CPU {SFU_CPU} (`taskset`), deadsfu with one media worker
(`--workers 1`); the load generator (`deadsfu loadtest`, which is also the publisher) is
pinned to CPU {GEN_CPU}. The stream is the load generator's synthetic 1 Mbit/s H264
(30 fps, keyframe every 2 s, payloads ≤ 1100 bytes) plus Opus-sized audio at 50 packets/s,
about {results['stream_pps']:.0f} packets/s per viewer. Viewers join at 50-100 per second. The
measuring window opens 3 s after the last viewer signed up, or later (up to 5-20 s) until a
second's p99 forwarding latency is under {LATENCY_P99_LIMIT_MS:.0f} ms, so the queue a server near its
capacity builds during the ramp is not counted; loss is counted over the window from sequence
gaps not filled within 256 packets. The viewers set `UDP_GRO`: a server's GSO buffers reach
them whole and they count every datagram in them.

## Machine

```
{m['uname']}
{m['lscpu']}
{m['rustc']}; Janus {m['janus']} (Debian)
```

## Results

| | deadsfu | Janus |
|---|---:|---:|
| (1) raw UDP send rate of one core, 1200-byte datagrams to readers with `UDP_GRO` (best method: {best_method}) | {best:,.0f} /s | |
| (1b) the same, fanned out to {u.get('fanout_viewers', FANOUT_VIEWERS)} viewer sockets in GSO buffers of {u.get('fanout_segments', FANOUT_SEGMENTS)} | {f"{fanout:,.0f} /s" if fanout else "–"} | |
| (1c) the same fan-out, every datagram sealed with AES-128-GCM as SRTP does (the physical limit of an SFU's egress) | {f"{sealed:,.0f} /s" if sealed else "–"} | |
| (2, 3) viewers per core at < {LOSS_LIMIT_PCT}% loss and ≥ {DELIVERY_MIN_PCT:.0f}% delivered | **{dcap.get('viewers', 0)}** | **{jcap.get('viewers', 0)}** |
| egress packets/s per core at that load | {fmt(dcap.get('pps'), 0)} | {fmt(jcap.get('pps'), 0)} |
| egress Mbit/s per core at that load | {fmt(dcap.get('mbps'), 0)} | {fmt(jcap.get('mbps'), 0)} |
| ratio to the raw UDP send rate (1) | {fmt(ratio_raw and ratio_raw * 100, 1)}% | {fmt(jcap.get('pps') and jcap['pps'] / best * 100, 1)}% |
| ratio to the fan-out send rate (1b) | {fmt(ratio_fanout and ratio_fanout * 100, 1)}% | {fmt(jcap.get('pps') and fanout and jcap['pps'] / fanout * 100, 1)}% |
| ratio to the sealed fan-out (1c) | {fmt(dcap.get('pps') and sealed and dcap['pps'] / sealed * 100, 1)}% | {fmt(jcap.get('pps') and sealed and jcap['pps'] / sealed * 100, 1)}% |
| deadsfu / Janus viewers per core | {fmt(ratio_janus, 2)}× | |
| (4) RSS per viewer (slope over the steps) | {fmt(rss['deadsfu'], 1)} KiB | {fmt(rss['janus'], 1)} KiB |
| (5) time to first keyframe, 4 s keyframe interval, p50 / p99 | GOP cache on: {fmt(tt['deadsfu_gop'].get('ttff_p50_ms'), 0)} / {fmt(tt['deadsfu_gop'].get('ttff_p99_ms'), 0)} ms; off: {fmt(tt['deadsfu_nogop'].get('ttff_p50_ms'), 0)} / {fmt(tt['deadsfu_nogop'].get('ttff_p99_ms'), 0)} ms | {fmt(tt['janus'].get('ttff_p50_ms'), 0)} / {fmt(tt['janus'].get('ttff_p99_ms'), 0)} ms |
| time to first packet, p50 / p99 | {fmt(tt['deadsfu_gop'].get('first_packet_p50_ms'), 0)} / {fmt(tt['deadsfu_gop'].get('first_packet_p99_ms'), 0)} ms | {fmt(tt['janus'].get('first_packet_p50_ms'), 0)} / {fmt(tt['janus'].get('first_packet_p99_ms'), 0)} ms |
| (6) forwarding latency at 80% of capacity, p50 / p99 / max | {fmt(lat['deadsfu'].get('latency_p50_ms'))} / {fmt(lat['deadsfu'].get('latency_p99_ms'))} / {fmt(lat['deadsfu'].get('latency_max_ms'))} ms ({lat['deadsfu'].get('viewers')} viewers) | {fmt(lat['janus'].get('latency_p50_ms'))} / {fmt(lat['janus'].get('latency_p99_ms'))} / {fmt(lat['janus'].get('latency_max_ms'))} ms ({lat['janus'].get('viewers')} viewers) |

(1) is the best of these, from the sender on CPU {SFU_CPU} to a reader on CPU {GEN_CPU}, in
datagrams per second handed to the kernel (in brackets: counted by the reader; a reader that
falls behind drops in its socket buffer). The raw limit is the best figure with readers that set
`UDP_GRO`, because the SFU is measured against the load generator's viewers, which set it too:
a GSO buffer then reaches the reader whole, whereas for a plain reader the kernel cuts it into
datagrams inside the sender's system call (on loopback), work the SFU under test does not do.
With one reader and 54 datagrams per buffer that figure is mostly the cost of copying 64 KiB
buffers; (1b), the fan-out, is what an SFU's sending looks like (many destinations, a few
datagrams per buffer).

{udprate_table()}

Time to first frame is measured from the viewer's first HTTP request (WHEP POST; for Janus
the session `create`) to the first RTP packet that starts a keyframe.

### Targets (issue 5)

| target | measured | met |
|---|---:|:---:|
""" + "\n".join(f"| {t} | {v} | {'yes' if ok else 'no'} |" for t, v, ok in targets) + f"""

### Loss and CPU against viewers

![loss and CPU against viewers]({plot_rel})

deadsfu (`--workers 1`, CPU {SFU_CPU}):

{points_table(d['points'])}

Janus (streaming plugin, CPU {SFU_CPU}):

{points_table(j['points'])}

A step whose generator CPU is near 100% was limited by the load generator, not the server.
"settle s": seconds from the last sign-up to the opening of the measuring window.
Raw figures: `bench/results.json`.
""" + join_storm_md(results.get("join_storm")) + stun_flood_md(results.get("stun_flood"))
    md += offer_flood_md(results.get("offer_flood"), results["rss_per_viewer_kib"].get("deadsfu"))
    extra = os.path.join(ROOT, "bench", "NOTES.md")
    if os.path.exists(extra):
        md += "\n" + open(extra).read()
    md += kept_proxy_section(path)
    with open(path, "w") as f:
        f.write(md)


def kept_proxy_section(path):
    """The "Front-line proxy" section that bench/proxy/run wrote into the file at `path`, if
    any: this rewrite must not drop it (its figures are not in this run's results)."""
    try:
        text = open(path).read()
    except OSError:
        return ""
    heading = "## Front-line proxy\n"
    start = text.find(heading)
    if start < 0:
        return ""
    end = text.find("\n## ", start + len(heading))
    return "\n" + text[start:end + 1 if end >= 0 else len(text)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--janus-preload", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite BENCHMARKS.md from bench/results.json (after editing NOTES.md)")
    args = ap.parse_args()
    os.chdir(ROOT)
    if args.render_only:
        with open(os.path.join(ROOT, "bench", "results.json")) as f:
            write_markdown(json.load(f), args.out, "bench/loss_cpu.png")
        log(f"wrote {args.out}")
        return
    quick = args.quick
    duration = 5 if quick else 10
    results = {"mode": "quick" if quick else "full",
               "date": datetime.date.today().isoformat(), "machine": machine(),
               "stream_pps": 175}  # 124.5 video (4 per delta frame, 13 per keyframe) + 50 audio

    log("(1) raw UDP send rate")
    results["udprate"] = udprate(args.bin, 1 if quick else 3)

    log("(2) deadsfu capacity")
    ladder = ([100, 500, 2000] if quick
              else [100, 250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000])
    points, good = capacity(args.bin, "deadsfu", args.janus_preload, ladder, duration,
                            0 if quick else 3)
    results["capacity"] = {"deadsfu": {"points": points, "capacity": good}}

    log("(3) Janus capacity")
    ladder = [25, 100, 200] if quick else [25, 50, 100, 150, 200, 300, 400, 600, 800, 1200]
    points, good = capacity(args.bin, "janus", args.janus_preload, ladder, duration,
                            0 if quick else 3)
    results["capacity"]["janus"] = {"points": points, "capacity": good}

    log("(4) RSS per viewer")
    results["rss_per_viewer_kib"] = {
        k: slope([p for p in results["capacity"][k]["points"] if p["ok"]], "sfu_rss_kib")
        for k in ("deadsfu", "janus")}

    log("(5) time to first frame, 4 s keyframe interval")
    n = 50 if quick else 200
    kf = ["--keyframe-interval", "4s", "--ramp", "20"]
    results["ttff"] = {
        "deadsfu_gop": step(args.bin, "deadsfu", args.janus_preload, n, duration,
                            extra_load=kf),
        "deadsfu_nogop": step(args.bin, "deadsfu", args.janus_preload, n, duration,
                              extra_server=["--gop-cache", "false"], extra_load=kf),
        "janus": step(args.bin, "janus", args.janus_preload, n, duration, extra_load=kf),
    }

    log("(6) forwarding latency at 80% of capacity")
    results["latency"] = {}
    for kind in ("deadsfu", "janus"):
        cap = results["capacity"][kind]["capacity"]
        n = max(10, int(0.8 * cap["viewers"])) if cap else 10
        results["latency"][kind] = step(args.bin, kind, args.janus_preload, n,
                                        duration * 2, extra_load=["--full-viewers", "8"])

    log("(7) join storm")
    import join_storm
    results["join_storm"] = (join_storm.run(args.bin, 50, 200, 200) if quick
                             else join_storm.run(args.bin))

    log("(8) STUN flood capacity of one media worker")
    import stun_flood
    results["stun_flood"] = (stun_flood.capacity(args.bin, [50_000, 200_000], 100, 5) if quick
                             else stun_flood.capacity(args.bin))

    log("(9) cost of an offer that never connects")
    import offer_flood
    results["offer_flood"] = offer_flood.measure(args.bin, 200 if quick else 1000)

    with open(os.path.join(ROOT, "bench", "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(results, os.path.join(ROOT, "bench", "loss_cpu.png"))
    write_markdown(results, args.out, "bench/loss_cpu.png")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
