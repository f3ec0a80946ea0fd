#!/usr/bin/env python3
"""Two deadsfu builds in one sitting, on the same machine and load generator: viewers per core
at < 0.1% loss (the capacity ladder of bench.py) and CPU per forwarded packet at the highest
passing step, plus the raw, fan-out and sealed fan-out send rates of step (1).

    bench/compare.py --before DIR --after DIR --loadtest DIR
(DIR: a directory with a release `deadsfu`; the load generator's from --loadtest.)
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def bins_for(deadsfu_dir, loadtest_dir, tmp):
    """bench.py finds every binary in one directory: put them side by side."""
    d = tempfile.mkdtemp(dir=tmp)
    os.symlink(os.path.join(deadsfu_dir, "deadsfu"), os.path.join(d, "deadsfu"))
    for name in ("deadsfu-loadtest", "deadsfu-udprate", "deadsfu-stunflood"):
        os.symlink(os.path.join(loadtest_dir, name), os.path.join(d, name))
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--loadtest", required=True)
    ap.add_argument("--ladder", default="1500,2000,2250,2500,2750,3000")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    results = {}
    try:
        results["udprate"] = bench.udprate(bins_for(args.after, args.loadtest, tmp), 3)
        ladder = [int(n) for n in args.ladder.split(",")]
        for name, d in (("before", args.before), ("after", args.after)):
            bins = bins_for(d, args.loadtest, tmp)
            bench.log(f"{name}: {d}")
            points, good = bench.capacity(bins, "deadsfu", None, ladder, 10, 2)
            r = {"points": points, "capacity": good}
            if good:
                r["viewers"] = good["viewers"]
                r["pps"] = good["pps"]
                r["sfu_cpu_pct"] = good["sfu_cpu_pct"]
                r["ns_per_packet"] = good["sfu_cpu_pct"] / 100 / good["pps"] * 1e9
            results[name] = r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {k: {kk: v for kk, v in r.items() if kk not in ("points", "capacity")}
               for k, r in results.items() if k != "udprate"}
    summary["sealed_fanout_pps"] = results["udprate"].get("fanout_gso_sealed_pps")
    summary["fanout_pps"] = results["udprate"].get("fanout_gso_pps")
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
