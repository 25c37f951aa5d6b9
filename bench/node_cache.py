#!/usr/bin/env python3
"""One download per node: N pods on one node pulling the same 1 GiB model.

    python3 bench/node_cache.py            # writes bench/RESULTS-node-cache.md (about 3 minutes)
    python3 bench/node_cache.py --quick    # 64 MiB, a smoke test of the harness

For N = 1, 4, 8 concurrent `ocimodel` processes (each a pod's init container with its own
emptyDir DEST), against Debian's docker-registry on loopback with its access log on:
- without a node cache (today's default): registry egress and wall time;
- with one shared OCIMODEL_CACHE_DIR, cold: the same;
then, for one more pod on the node:
- installing from the warm cache (a verified copy, no network) vs from the registry;
- the shared read-only tree: the model installed once into a node directory that every pod
  mounts read-only (a LocalModelCache PVC, or a hostPath with subPathExpr): a later pod's
  ocimodel only checks the tree (or the pod runs no ocimodel at all).
Registry egress is the sum of the bytes the registry's access log records for blob GETs.
"""
import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as suite  # noqa: E402  (the main suite's helpers)

REPO = suite.REPO
MiB = suite.MiB


class LoggingRegistry(suite.Registry):
    """The suite's registry with its access log, to count egress."""

    def __init__(self, work, extra=""):
        super().__init__(work, accesslog=True, extra=extra)

    def blob_bytes(self):
        """Bytes sent for blob GETs so far (combined log format: status then bytes)."""
        total = 0
        for line in self.log.read_text(errors="replace").splitlines():
            m = re.search(r'"GET /v2/[^ ]*/blobs/[^ ]* HTTP/[0-9.]+" (\d{3}) (\d+)', line)
            if m:
                total += int(m.group(2))
        return total


def pods(ocimodel, uri, reg, work, n, cache):
    """n concurrent pulls, each into its own DEST; returns per-pod wall times."""
    env = {"PATH": "/usr/bin:/bin", "OCIMODEL_INSECURE_REGISTRIES": reg.addr, "OCIMODEL_LOG": "warn"}
    if cache:
        env["OCIMODEL_CACHE_DIR"] = str(cache)
    return concurrent(ocimodel, uri, work, n, env, "pod")


def concurrent(ocimodel, uri, work, n, env, name):
    """n ocimodel processes started together, each pulling `uri` into its own DEST
    (work/<name><i>, removed after); returns their wall times, sorted."""
    procs = []
    start = time.monotonic()
    for i in range(n):
        dest = work / f"{name}{i}"
        shutil.rmtree(dest, ignore_errors=True)
        procs.append(subprocess.Popen([str(ocimodel), uri, str(dest)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    walls = []
    pending = set(range(n))
    while pending:
        for i in list(pending):
            if procs[i].poll() is not None:
                if procs[i].returncode != 0:
                    raise SystemExit(f"{name} {i} failed: {procs[i].stderr.read().decode()[-800:]}")
                walls.append(time.monotonic() - start)
                pending.discard(i)
        time.sleep(0.005)
    for i in range(n):
        shutil.rmtree(work / f"{name}{i}", ignore_errors=True)
    return sorted(walls)


def one(ocimodel, uri, reg, dest, cache=None, recheck=None):
    env = {"PATH": "/usr/bin:/bin", "OCIMODEL_INSECURE_REGISTRIES": reg.addr, "OCIMODEL_LOG": "warn"}
    if cache:
        env["OCIMODEL_CACHE_DIR"] = str(cache)
    if recheck:
        env["OCIMODEL_RECHECK"] = recheck
    subprocess.run(["sync"], check=True)
    t = time.monotonic()
    subprocess.run([str(ocimodel), uri, str(dest)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", default="/tmp/ocimodel-bench-node-cache")
    ap.add_argument("--out", default=str(REPO / "bench/RESULTS-node-cache.md"))
    args = ap.parse_args()
    size = 64 * MiB if args.quick else 1024 * MiB
    work = Path(args.work)
    work = suite.fresh_dir(work)
    ocimodel = suite.release_binary()
    reg = LoggingRegistry(work)
    try:
        model = work / "model"
        model.mkdir()
        suite.keystream(model / "weights.bin", size, "node-cache")
        out = subprocess.run([str(ocimodel), "push", str(model), f"{reg.addr}/models/big:v1", "--format", "oras"],
                             env={"PATH": "/usr/bin:/bin", "OCIMODEL_INSECURE_REGISTRIES": reg.addr},
                             check=True, capture_output=True, text=True)
        digest = out.stdout.split()[0]
        uri = f"{reg.addr}/models/big@{digest}"
        rows = []
        for n in (1, 4, 8):
            for cached in (False, True):
                cache = work / f"cache-{n}" if cached else None
                if cache:
                    shutil.rmtree(cache, ignore_errors=True)
                subprocess.run(["sync"], check=True)
                before = reg.blob_bytes()
                walls = pods(ocimodel, uri, reg, work, n, cache)
                egress = reg.blob_bytes() - before
                rows.append((n, cached, egress / size, walls[0], statistics.median(walls), walls[-1]))
                print(rows[-1], flush=True)
        # One more pod on a node whose cache is warm, vs one fetching from the registry.
        warm = work / "cache-8"
        from_cache = [one(ocimodel, uri, reg, work / f"c{i}", cache=warm) for i in range(3)]
        from_registry = [one(ocimodel, uri, reg, work / f"r{i}") for i in range(3)]
        for i in range(3):
            shutil.rmtree(work / f"c{i}", ignore_errors=True)
            shutil.rmtree(work / f"r{i}", ignore_errors=True)
        # The shared tree: installed once; a later pod's ocimodel finds it complete.
        shared = work / "node-models" / "key"
        one(ocimodel, uri, reg, shared, cache=warm)
        size_check = [one(ocimodel, uri, reg, shared) for _ in range(3)]
        digest_check = [one(ocimodel, uri, reg, shared, recheck="digest") for _ in range(3)]
    finally:
        reg.stop()

    med = statistics.median
    lines = [
        "# Node cache: one download per node",
        "",
        f"`python3 bench/node_cache.py` on {suite.machine()}. Model: one {size // MiB} MiB incompressible file "
        "pushed as an ORAS artifact, pulled by digest. N concurrent ocimodel processes on one node, each "
        "installing into its own DEST (a pod's emptyDir). Egress: the bytes the registry's access log "
        "records for blob GETs, as a multiple of the model size. Times in seconds from the start of the "
        "batch to each pod's exit.",
        "",
        "| pods | node cache | registry egress | first pod done | median pod | last pod |",
        "|---|---|---|---|---|---|",
    ]
    for n, cached, egress, first, mid, last in rows:
        lines.append(f"| {n} | {'yes' if cached else 'no'} | {egress:.2f}× | {first:.2f} | {mid:.2f} | {last:.2f} |")
    lines += [
        "",
        "One more pod on the node (median of 3, after `sync`):",
        "",
        "| how | seconds |",
        "|---|---|",
        f"| from the registry (no cache) | {med(from_registry):.2f} |",
        f"| from the warm node cache (a copy, every byte re-hashed; no network) | {med(from_cache):.2f} |",
        f"| shared read-only tree, ocimodel checks sizes (`OCIMODEL_RECHECK=size`) | {med(size_check):.3f} |",
        f"| shared read-only tree, ocimodel re-hashes (`OCIMODEL_RECHECK=digest`) | {med(digest_check):.2f} |",
        "| shared read-only tree mounted by a pod with no ocimodel (LocalModelCache's `pvc://`) | 0 |",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
