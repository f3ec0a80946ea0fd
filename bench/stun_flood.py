#!/usr/bin/env python3
"""STUN flood capacity: deadsfu on one core (one media worker) serving viewers, while
`deadsfu-stunflood` sends Binding requests to the same worker at rising rates. Each request
names a real session's ufrag (any viewer learns one from its own answer) with garbage
integrity, from 64 source addresses. The capacity is the highest rate at which the viewers
still lose < 0.1% and get ≥ 97% of what was sent; beyond it, legitimate loss begins.

    bench/stun_flood.py --bin target/release [--before DIR] [--viewers 300]
(--before: a directory with another build's `deadsfu`, measured in the same sitting.)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

RATES = [100_000, 200_000, 400_000, 800_000, 1_200_000]
VIEWERS = 300
DURATION = 8


def flood_step(bins, rate, viewers, duration):
    """One deadsfu, `viewers` viewers of one stream, and a flood of `rate` checks/s that starts
    once their sign-ups are done and lasts to the end of the measuring window."""
    server = bench.start_deadsfu(bins)
    flood = None
    try:
        ramp = bench.ramp_rate(viewers)
        settle, _ = bench.settle_args(viewers)
        delay = viewers / ramp + 1
        if rate:
            flood = subprocess.Popen(
                ["taskset", "-c", bench.GEN_CPU, f"{bins}/deadsfu-stunflood",
                 "--whep", server.whep, "--rate", str(rate), "--delay", f"{delay:.1f}",
                 "--seconds", str(settle + duration + 5)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        r = bench.loadtest(bins, server, viewers, duration)
        if flood:
            out, err = flood.communicate(timeout=120)
            lines = [l for l in out.splitlines() if l.startswith("{")]
            if not lines:
                raise RuntimeError(f"stunflood failed: {err[:2000]}")
            r["flood"] = json.loads(lines[-1])
    finally:
        if flood and flood.poll() is None:
            flood.kill()
            flood.wait()
        server.stop()
    r["rate"] = rate
    r["ok"] = (r["loss_pct"] <= bench.LOSS_LIMIT_PCT and r["connected"] == viewers
               and (r.get("delivery_pct") or 0) >= bench.DELIVERY_MIN_PCT)
    bench.log(f"  flood {rate:7} checks/s (sent {r.get('flood', {}).get('pps', 0):.0f}/s): "
              f"loss {r['loss_pct']:.3f}% delivered {r.get('delivery_pct')}% "
              f"sfu cpu {r['sfu_cpu_pct']}% -> {'ok' if r['ok'] else 'loss'}")
    return r


def capacity(bins, rates=RATES, viewers=VIEWERS, duration=DURATION):
    """Raises the flood rate along `rates` until the viewers lose; returns the steps and the
    highest rate that passed (0 when even the lowest flood hurt)."""
    steps = []
    passed = 0
    generator_limited = False
    for rate in rates:
        r = flood_step(bins, rate, viewers, duration)
        steps.append(r)
        if not r["ok"]:
            break
        sent = (r.get("flood") or {}).get("pps") or 0
        passed = max(passed, sent)
        if sent < 0.9 * rate:
            # The flood tool's core (shared with the viewers) sends no faster: the server
            # was not overwhelmed by the most one generator core can send.
            generator_limited = True
            break
    return {"viewers": viewers, "steps": steps, "capacity_pps": round(passed),
            "beyond_ladder": generator_limited or passed >= 0.9 * rates[-1]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="directory with deadsfu and the load tools")
    ap.add_argument("--before", help="directory with an earlier build's deadsfu")
    ap.add_argument("--viewers", type=int, default=VIEWERS)
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    ap.add_argument("--out")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    results = {}
    builds = [("after", args.bin)]
    if args.before:
        # The earlier deadsfu beside this build's load tools.
        d = tempfile.mkdtemp()
        os.symlink(os.path.join(os.path.abspath(args.before), "deadsfu"),
                   os.path.join(d, "deadsfu"))
        for name in ("deadsfu-loadtest", "deadsfu-stunflood"):
            os.symlink(os.path.join(os.path.abspath(args.bin), name), os.path.join(d, name))
        builds.insert(0, ("before", d))
    for name, bins in builds:
        bench.log(f"STUN flood capacity, {name}")
        results[name] = capacity(bins, rates, args.viewers)
    print(json.dumps({k: {"capacity_pps": v["capacity_pps"],
                          "beyond_ladder": v["beyond_ladder"]} for k, v in results.items()}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
