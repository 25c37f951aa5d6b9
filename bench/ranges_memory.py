#!/usr/bin/env python3
"""Peak RSS of a big blob fetched in parallel ranges, at several connection counts.

    python3 bench/ranges_memory.py            # 4 GiB; writes bench/RESULTS-ranges-memory.md
    python3 bench/ranges_memory.py --size 1G

On loopback one connection keeps up, so ocimodel would take the rest of a blob as one stream;
`OCIMODEL_SPLIT_BELOW=1T` forces ranges (2 MiB each, the default) so that the 32 MiB window, the
buffer pool and the hand-off are what is measured, as an ORAS artifact and as a modelcar, with
8, 16 and 64 connections (`OCIMODEL_HOST_CONNECTIONS=64` lets 64 through). The times only show
that forcing 2 MiB ranges on loopback costs the registry a request each; they are not a target.
"""
import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as suite  # noqa: E402
import wan  # noqa: E402  (parse_rate)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="4G")
    ap.add_argument("--work", default="/tmp/ocimodel-bench-ranges-memory")
    ap.add_argument("--out", default=str(suite.REPO / "bench/RESULTS-ranges-memory.md"))
    args = ap.parse_args()
    size = wan.parse_rate(args.size)
    work = suite.fresh_dir(args.work)
    ocimodel = suite.release_binary()
    reg = suite.Registry(work)
    rows = []
    try:
        (work / "model").mkdir()
        suite.keystream(work / "model/model.bin", size, "ranges-memory")
        env = {"PATH": "/usr/bin:/bin", "OCIMODEL_INSECURE_REGISTRIES": reg.addr}
        refs = {}
        for fmt in ("oras", "modelcar"):
            out = subprocess.run([str(ocimodel), "push", str(work / "model"), f"{reg.addr}/big/{fmt}:v1",
                                  "--format", fmt], env=env, check=True, capture_output=True, text=True)
            refs[fmt] = out.stdout.split()[0]
        for conns in ("8", "16", "64"):
            for fmt in ("oras", "modelcar"):
                pull_env = dict(env, OCIMODEL_LOG="warn", OCIMODEL_SPLIT_BELOW="1T",
                                OCIMODEL_RANGE_CONNECTIONS=conns, OCIMODEL_HOST_CONNECTIONS="64")
                seconds, _cpu, rss = suite.timed(f"{ocimodel} {reg.addr}/big/{fmt}@{refs[fmt]} {work}/dest", pull_env)
                rows.append((fmt, conns, seconds, rss))
                print(rows[-1], flush=True)
                shutil.rmtree(work / "dest")
    finally:
        reg.stop()
    lines = [
        "# Parallel ranges: peak RSS",
        "",
        f"`python3 bench/ranges_memory.py` on {suite.machine()}. One {size >> 20} MiB incompressible file "
        "pulled by digest from docker-registry on loopback with ranges forced (`OCIMODEL_SPLIT_BELOW=1T`, "
        "2 MiB ranges). Target: peak RSS ≤ 64 MiB at every size and connection count.",
        "",
        "| format | connections | seconds | peak RSS (MiB) |",
        "|---|---|---|---|",
    ] + [f"| {f} | {c} | {s:.1f} | {r:.0f} |" for f, c, s, r in rows] + [""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
