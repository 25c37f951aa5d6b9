#!/usr/bin/env python3
"""A far registry: one blob through the WAN emulator (bench/wan.py), ocimodel against the floors.

    python3 bench/far.py                 # 1 GiB, 16 MiB/s per connection, 20 ms per connection and request
    python3 bench/far.py --size 128M     # quicker
    python3 bench/far.py --redirect      # blobs served by a redirected "object store"
    python3 bench/far.py --sweep         # also other range sizes and connection counts

Writes bench/RESULTS-far.md. Peers, run one after another on the same emulated link:
- `curl -o`, one stream: what a single connection can do (today's ocimodel should equal it);
- `aria2c -x8 -s8 -k8M`: the parallel floor (unverified, nothing unpacked);
- ocimodel on an ORAS artifact (one file) and on a modelcar image (one tar layer), both pulled by
  digest, every byte verified: over one stream (`OCIMODEL_RANGE_CONNECTIONS=1`, what it did before
  ranges) and with the defaults; with `--sweep`, other range sizes and connection counts (the
  measurements behind the defaults).
"""
import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as suite  # noqa: E402
import wan  # noqa: E402

REPO = suite.REPO
MiB = suite.MiB


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--rate", default="16M")
    ap.add_argument("--connect-delay", type=float, default=0.02)
    ap.add_argument("--rtt", type=float, default=0.02)
    ap.add_argument("--redirect", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--work", default="/tmp/ocimodel-bench-far")
    ap.add_argument("--out", default=str(REPO / "bench/RESULTS-far.md"))
    args = ap.parse_args()
    size = wan.parse_rate(args.size)
    rate = wan.parse_rate(args.rate)
    if not shutil.which("aria2c"):
        raise SystemExit("aria2c is missing: apt-get install -y aria2")
    work = suite.fresh_dir(args.work)
    ocimodel = suite.release_binary()
    reg = suite.Registry(work)
    link = wan.Wan(reg.addr, rate, args.connect_delay, args.redirect, rtt=args.rtt)
    rows = []
    try:
        (work / "model/models").mkdir(parents=True)
        suite.keystream(work / "model/models/weights.bin", size, "far")
        env = {"PATH": "/usr/bin:/bin", "OCIMODEL_INSECURE_REGISTRIES": reg.addr}
        refs = {}
        for fmt in ("oras", "modelcar"):
            out = subprocess.run([str(ocimodel), "push", str(work / "model/models"), f"{reg.addr}/far/{fmt}:v1", "--format", fmt],
                                 env=env, check=True, capture_output=True, text=True)
            refs[fmt] = out.stdout.split()[0]
        far = link.start()
        blob = suite.manifest(reg, "far/oras", refs["oras"])["layers"][0]["digest"]
        url = f"http://{far}/v2/far/oras/blobs/{blob}"
        pull_env = {"PATH": "/usr/bin:/bin", "OCIMODEL_INSECURE_REGISTRIES": far, "OCIMODEL_LOG": "warn"}

        def measure(label, cmd, env=None, clean=()):
            before = link.connections
            seconds, _cpu, rss = suite.timed(shlex.join(cmd), env)
            rows.append((label, seconds, link.connections - before, rss))
            print(rows[-1], flush=True)
            for p in map(Path, clean):
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)

        measure("curl -o, one stream", ["curl", "-sfL", "-o", str(work / "curl.bin"), url], clean=[work / "curl.bin"])
        measure("aria2c -x8 -s8 -k8M (parallel floor, unverified)",
                ["aria2c", "-q", "-x8", "-s8", "-k8M", "--allow-overwrite=true", "--auto-file-renaming=false",
                 "-d", str(work), "-o", "aria.bin", url], clean=[work / "aria.bin"])
        variants = [("one stream", {"OCIMODEL_RANGE_CONNECTIONS": "1"}), ("defaults: 8 × 2 MiB ranges", {})]
        if args.sweep:
            variants += [(f"{c} × {r} ranges", {"OCIMODEL_RANGE_CONNECTIONS": str(c), "OCIMODEL_RANGE_SIZE": r})
                         for c, r in ((4, "2M"), (8, "1M"), (8, "4M"), (16, "2M"))]
        for name, extra in variants:
            for fmt in ("oras", "modelcar"):
                if args.sweep and fmt == "modelcar" and extra and name != variants[1][0]:
                    continue  # the sweep is about the link: one format is enough
                dest = work / f"dest-{fmt}"
                measure(f"ocimodel, {fmt}, {name}", [str(ocimodel), f"{far}/far/{fmt}@{refs[fmt]}", str(dest)],
                        {**pull_env, **extra}, clean=[dest])
    finally:
        link.stop()
        reg.stop()

    one = rows[0][1]
    aria = rows[1][1]
    lines = [
        "# A far registry: one blob over an emulated WAN",
        "",
        f"`python3 bench/far.py{' --redirect' if args.redirect else ''}` on {suite.machine()}. "
        f"One {size // MiB} MiB incompressible file, as an ORAS artifact and as a modelcar image (one tar layer). "
        f"The registry (docker-registry) sits behind `bench/wan.py`: {rate // MiB} MiB/s per TCP connection, "
        f"{args.connect_delay * 1000:.0f} ms to set up each connection, {args.rtt * 1000:.0f} ms before each answer"
        + (", blob GETs redirected (307) to a second host serving the bytes, as presigned object-store URLs"
           if args.redirect else "")
        + ". Each peer runs once, one after another, on the same link.",
        "",
        "| peer | seconds | vs one stream (curl) | vs aria2c -x8 | connections | peak RSS (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for label, seconds, conns, rss in rows:
        lines.append(f"| {label} | {seconds:.2f} | {one / seconds:.2f}× | {aria / seconds:.2f}× | {conns} | {rss:.0f} |")
    lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
