#!/usr/bin/env python3
"""Join storm: viewers joining as fast as the load generator can, into a room that already has
viewers, on deadsfu pinned to one core. Reports the joiners' time to first frame, deadsfu's CPU
per join, the connected viewers' forwarding latency p99 before and during the storm, and the
bare cost of a DTLS handshake's public-key cryptography on this machine (`openssl speed`) as
the limit a join cannot go below.

    bench/join_storm.py --bin target/release [--existing 300] [--joiners 1000] [--rate 400]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
# The connected viewers' upkeep is measured for UPKEEP_SECS, from UPKEEP_DELAY after all have
# joined (the last ones' handshakes are done by then).
UPKEEP_DELAY = 1
UPKEEP_SECS = 3


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_secs_fine(pid):
    """The CPU time of `pid`'s live threads in seconds, to the nanosecond (the scheduler's
    figures; `cpu_secs` counts clock ticks of 10 ms)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # a thread that ended meanwhile
    return total / 1e9


def loadtest_cmd(bins, server, viewers, ramp, duration, publish, extra=()):
    cmd = ["taskset", "-c", bench.GEN_CPU, f"{bins}/deadsfu-loadtest", "--quiet",
           "--viewers", str(viewers), "--ramp", str(ramp), "--duration", f"{duration}s",
           "--settle", "2s", "--bitrate", "1M", "--whep", server.whep, *extra]
    if publish:
        cmd += ["--whip", server.whip, "--sfu-pid", str(server.proc.pid)]
    return cmd


def report(proc):
    out, err = proc.communicate(timeout=300)
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"loadtest failed: {err[-2000:]}")
    return json.loads(lines[-1])


def handshake_crypto_us():
    """ECDHE P-256 (a key and a shared secret), one ECDSA P-256 signature (ServerKeyExchange)
    and one verification (the client's CertificateVerify): the public-key work of one DTLS
    handshake on the server's side, in microseconds on this machine. Also the same with X25519
    for the key exchange, the group OpenSSL, BoringSSL and NSS clients offer first and so the one
    the handshakes here use (`total_x25519_us`); `total_us` stays P-256's, as first reported."""
    out = subprocess.run(["openssl", "speed", "-seconds", "2", "ecdsap256", "ecdhp256",
                          "ecdhx25519"], capture_output=True, text=True).stdout
    sign = verify = ecdh = x25519 = None
    for line in out.splitlines():
        # "256 bits ecdsa (nistp256)   0.0000s   0.0001s  40703.0  13828.0": the rates.
        m = re.match(r"\s*256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+(\S+)\s+(\S+)", line)
        if m:
            sign, verify = 1e6 / float(m.group(1)), 1e6 / float(m.group(2))
        m = re.match(r"\s*256 bits ecdh \(nistp256\)\s+\S+s\s+(\S+)", line)
        if m:
            ecdh = 1e6 / float(m.group(1))
        m = re.match(r"\s*253 bits ecdh \(X25519\)\s+\S+s\s+(\S+)", line)
        if m:
            x25519 = 1e6 / float(m.group(1))
    if None in (sign, verify, ecdh):
        return None
    # The ECDHE key pair costs about as much as the shared secret.
    return {"sign_us": sign, "verify_us": verify, "ecdh_us": ecdh,
            "total_us": sign + verify + 2 * ecdh, "ecdh_x25519_us": x25519,
            "total_x25519_us": sign + verify + 2 * x25519 if x25519 else None}


def dtls_in_memory(bins):
    """What the server's side of a DTLS handshake costs with deadsfu's DTLS (OpenSSL, one
    shared context) in memory, and the public-key work inside it by the same OpenSSL
    (`crates/rtc/examples/dtls_handshake_cost.rs`, on deadsfu's core): the floor of a join with
    this DTLS, before any I/O."""
    tool = os.path.join(bins, "examples", "dtls_handshake_cost")
    if not os.path.exists(tool):
        return None
    out = subprocess.run(["taskset", "-c", bench.SFU_CPU, tool, "2000"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def follow_connected(server, proc, joiners):
    """Follows deadsfu's connected viewers (its /metrics) while `proc` runs: the viewer-seconds
    they add up to, and deadsfu's CPU per connected viewer per second over UPKEEP_SECS from
    UPKEEP_DELAY after all `joiners` are connected (nobody joins then)."""
    base = server.whep.rsplit("/whep", 1)[0]
    viewer_seconds, last, window = 0.0, None, None
    all_joined = upkeep = None
    while proc.poll() is None:
        try:
            text = urllib.request.urlopen(base + "/metrics", timeout=1).read().decode()
        except OSError:
            break
        now = time.time()
        live = pending = 0
        for line in text.splitlines():
            if line.startswith('deadsfu_sessions{kind="viewer"}'):
                live = float(line.split()[-1])
            elif line.startswith("deadsfu_sessions_pending "):
                pending = float(line.split()[-1])
        connected = max(0.0, live - pending)
        if last:
            viewer_seconds += last[1] * (now - last[0])
        last = (now, connected)
        if all_joined is None and connected >= joiners:
            all_joined = now
        if window is None and all_joined and now - all_joined >= UPKEEP_DELAY:
            window = (now, cpu_secs_fine(server.proc.pid), viewer_seconds)
        elif window and upkeep is None and now - window[0] >= UPKEEP_SECS - 0.5:
            cpu = cpu_secs_fine(server.proc.pid) - window[1]
            upkeep = cpu * 1e6 / max(1.0, viewer_seconds - window[2])
        time.sleep(0.1)
    return {"viewer_seconds": viewer_seconds, "upkeep_us_per_viewer_second": upkeep}


def run(bins, existing=200, joiners=800, rate=400):
    """The join storm (see the module's text); returns its figures."""
    args = argparse.Namespace(bin=bins, existing=existing, joiners=joiners, rate=rate)
    results = {"existing": args.existing, "joiners": args.joiners, "asked_rate": args.rate}

    # Before: the existing viewers alone, for their latency and deadsfu's CPU rate.
    server = bench.start_deadsfu(args.bin)
    try:
        t0, c0 = time.time(), cpu_secs(server.proc.pid)
        calm = report(subprocess.Popen(
            loadtest_cmd(args.bin, server, args.existing, 100, 20, True, ["--full-viewers", "8"]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        base_rate = (cpu_secs(server.proc.pid) - c0) / (time.time() - t0)
    finally:
        server.stop()
    results["before"] = {"latency_p99_ms": calm.get("latency_p99_ms"),
                         "latency_p50_ms": calm.get("latency_p50_ms"),
                         "sfu_cpu_pct": calm.get("sfu_cpu_pct")}

    # During: the same viewers, and a storm of joiners once they are settled.
    server = bench.start_deadsfu(args.bin)
    try:
        existing = subprocess.Popen(
            loadtest_cmd(args.bin, server, args.existing, 100, 20, True, ["--full-viewers", "8"]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(args.existing / 100 + 4)  # their ramp and settle (a benchmark's pacing)
        # The forwarding CPU for the existing viewers, measured just before the storm.
        c1, t1 = cpu_secs(server.proc.pid), time.time()
        time.sleep(2)
        forwarding_rate = (cpu_secs(server.proc.pid) - c1) / (time.time() - t1)
        c2, t2 = cpu_secs(server.proc.pid), time.time()
        storm = report(subprocess.Popen(
            loadtest_cmd(args.bin, server, args.joiners, args.rate, 3, False,
                         ["--concurrency", "128"]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        storm_secs = time.time() - t2
        storm_cpu = cpu_secs(server.proc.pid) - c2
        during = report(existing)
    finally:
        server.stop()
    joins = storm.get("connected") or args.joiners
    results["storm"] = {
        "connected": storm.get("connected"),
        "ttff_p50_ms": storm.get("ttff_p50_ms"), "ttff_p99_ms": storm.get("ttff_p99_ms"),
        "first_packet_p50_ms": storm.get("first_packet_p50_ms"),
        "first_packet_p99_ms": storm.get("first_packet_p99_ms"),
        # The storm's run is its sign-ups, then 2 s of settling and 3 s of measuring.
        "achieved_rate": joins / max(0.1, storm_secs - 5),
        "sfu_cpu_secs": storm_cpu, "wall_secs": storm_secs,
        "generator_cpu_pct": storm.get("generator_cpu_pct"),
    }
    results["during"] = {"latency_p99_ms": during.get("latency_p99_ms"),
                         "latency_p50_ms": during.get("latency_p50_ms"),
                         "loss_pct": during.get("loss_pct")}
    results["base_cpu_rate"] = base_rate

    # Joins alone: the same storm into a room nobody publishes to (and no idle clip), so that
    # deadsfu's CPU is the joins' own: SDP, ICE, DTLS, session set-up and tear-down, plus the
    # upkeep of the viewers already connected (their consent checks, RTCP and timers) while
    # the others join. That upkeep is measured in the same run, over a few seconds once all
    # have joined, and taken out for the join's own cost.
    server = bench.start_deadsfu(args.bin, ["--idle-clip", "none"])
    try:
        c0 = cpu_secs(server.proc.pid)
        proc = subprocess.Popen(
            loadtest_cmd(args.bin, server, args.joiners, args.rate,
                         UPKEEP_DELAY + UPKEEP_SECS, False, ["--concurrency", "128"]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        upkeep = follow_connected(server, proc, args.joiners)
        alone = report(proc)
        joins_cpu = cpu_secs(server.proc.pid) - c0
    finally:
        server.stop()
    joins = max(1, alone.get("connected") or args.joiners)
    per_join_us = joins_cpu / joins * 1e6
    results["joins_alone"] = {"connected": alone.get("connected"), "sfu_cpu_secs": joins_cpu,
                              "cpu_per_join_us": per_join_us, **upkeep}
    if upkeep.get("upkeep_us_per_viewer_second") is not None:
        own = joins_cpu * 1e6 - upkeep["upkeep_us_per_viewer_second"] * upkeep["viewer_seconds"]
        results["joins_alone"]["own_cpu_per_join_us"] = own / joins
    results["crypto"] = handshake_crypto_us()
    results["dtls_in_memory"] = dtls_in_memory(args.bin)
    crypto_us = (results["crypto"] or {}).get("total_us")
    if crypto_us:
        results["per_join_over_crypto"] = per_join_us / crypto_us
        if "own_cpu_per_join_us" in results["joins_alone"]:
            results["own_per_join_over_crypto"] = \
                results["joins_alone"]["own_cpu_per_join_us"] / crypto_us
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--existing", type=int, default=200)
    ap.add_argument("--joiners", type=int, default=800)
    ap.add_argument("--rate", type=float, default=400)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results = run(args.bin, args.existing, args.joiners, args.rate)
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
