#!/usr/bin/env python3
"""Compare two ocimodel builds side by side, on the suite's fixtures.

    python3 bench/ab.py OLD_BINARY NEW_BINARY [--cases oras-single,car-tar] [--rounds 5]

Same method as run.py (its registry, fixtures and timing): one warm-up round, then
--rounds rounds with the two builds alternating, `sync` before each run. Prints
min/median wall, median CPU and peak RSS per build and case, and NEW/OLD.
Used to decide whether a change to the hot path stays (bench/README.md).
"""
import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--cases", default="oras-single,car-tar,oras-shards")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--large", action="store_true", help="the 8 GiB fixtures instead (cases oras-8g, car-8g)")
    ap.add_argument("--work", default="/tmp/ocimodel-ab")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    builds = {"old": Path(args.old).resolve(), "new": Path(args.new).resolve()}
    reg = run.Registry(work)
    try:
        run.make_fixtures(work, args.quick, builds["new"], reg, args.large)
        results = {}
        for r in range(args.rounds + 1):
            for case in args.cases.split(","):
                for name, binary in builds.items():
                    out = work / "out"
                    if out.exists():
                        shutil.rmtree(out)
                    out.mkdir()
                    os.sync()
                    time.sleep(0.2)
                    got = run.timed(f"{binary} pull --insecure-registry {reg.addr} "
                                    f"{reg.addr}/bench/{case}:v1 {out}/m")
                    if r > 0:
                        results.setdefault((case, name), []).append(got)
        print("| case | build | wall min / median | CPU | peak RSS |")
        print("|---|---|---|---|---|")
        for case in args.cases.split(","):
            meds = {}
            for name in builds:
                rs = results[(case, name)]
                walls = sorted(w for w, _, _ in rs)
                meds[name] = statistics.median(walls)
                print(f"| {case} | {name} | {walls[0]:.2f} / {meds[name]:.2f} | "
                      f"{statistics.median(c for _, c, _ in rs):.2f} | {statistics.median(m for _, _, m in rs):.0f} |")
            print(f"| {case} | new/old | {meds['new'] / meds['old']:.2f} | | |")
    finally:
        reg.stop()


if __name__ == "__main__":
    main()
