#!/usr/bin/env python3
"""One download per node: N pods on one node pulling the same 1 GiB model.

    python3 bench/node_cache.py            # writes bench/RESULTS-node-cache.md (about 3 minutes)
    python3 bench/node_cache.py --quick    # 64 MiB, a smoke test of the harness
    python3 bench/node_cache.py --warm-installs [--quick] [--rounds N]
                                           # root: XFS and ext4 loop images (clone vs copy);
                                           # writes its own section of the results

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

--warm-installs (issue #30): a 1 GiB model of 4 shards, the node cache and the pods' DESTs on one
loop-mounted XFS image (`mkfs.xfs -m reflink=1`), then on ext4. After a cold pod fills the cache,
four pods (other UIDs in group 0) install one after another: seconds to a durable install (the run,
then `sync -f`), and the filesystem's growth (statvfs after the sync). Then, in alternating rounds
on the same image, a warm pod with cloning (the default) against today's verified copy
(OCIMODEL_CLONE=off). And what bounds a warm install: reading a fresh clone vs hashing (one core).
Its section of RESULTS-node-cache.md is replaced; the rest is kept (and the default run keeps it).
"""
import argparse
import hashlib
import os
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


WARM_SECTION = "## Warm installs: cloned from the node cache"


class LoopImage:
    """A filesystem image on a loop device, mounted under `work`; removed on exit."""

    def __init__(self, work, kind, size):
        self.dir = suite.fresh_dir(work / f"image-{kind}")
        os.chmod(work, 0o755)
        os.chmod(self.dir, 0o755)
        img = self.dir / "image"
        with open(img, "wb") as f:
            f.truncate(size)
        self.dev = subprocess.run(["losetup", "-f", "--show", str(img)], check=True,
                                  capture_output=True, text=True).stdout.strip()
        self.mnt = self.dir / "mnt"
        self.mounted = False
        try:
            mkfs = ["mkfs.xfs", "-q", "-m", "reflink=1"] if kind == "xfs" else ["mkfs.ext4", "-q"]
            subprocess.run(mkfs + [self.dev], check=True)
            self.mnt.mkdir()
            subprocess.run(["mount", self.dev, str(self.mnt)], check=True)
            self.mounted = True
            os.chmod(self.mnt, 0o777)
        except BaseException:
            self.close()
            raise

    def sync(self):
        subprocess.run(["sync", "-f", str(self.mnt)], check=True)

    def used(self):
        self.sync()
        st = os.statvfs(self.mnt)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def settle(self):
        """Waits until space freed by removed files is counted: XFS frees in the background,
        after `sync -f` returns."""
        last, deadline = self.used(), time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.used()
            if now == last:
                return
            last = now

    def close(self):
        if self.mounted:
            if subprocess.run(["umount", str(self.mnt)]).returncode != 0:
                subprocess.run(["umount", "-l", str(self.mnt)])
            self.mounted = False
        subprocess.run(["losetup", "-d", self.dev])
        shutil.rmtree(self.dir, ignore_errors=True)


def warm_pod(ocimodel, uri, reg, image, dest, uid, clone=True):
    """One pod (uid in group 0) installing from the node cache on `image`: seconds to a durable
    install (the run, then `sync -f`), the filesystem's growth, and the log's count of blobs
    cloned and copied."""
    env = {"PATH": "/usr/bin:/bin", "OCIMODEL_INSECURE_REGISTRIES": reg.addr, "OCIMODEL_LOG": "info",
           "OCIMODEL_CACHE_DIR": str(image.mnt / "cache"), "HOME": "/tmp"}
    if not clone:
        env["OCIMODEL_CLONE"] = "off"
    shutil.rmtree(dest, ignore_errors=True)
    before = image.used()
    t = time.monotonic()
    run = subprocess.run([str(ocimodel), uri, str(dest)], env=env, capture_output=True, text=True,
                         user=uid, group=0, extra_groups=[], cwd="/tmp")
    if run.returncode != 0:
        raise SystemExit(f"pod {uid} failed: {run.stderr[-800:]}")
    image.sync()
    seconds = time.monotonic() - t
    grew = image.used() - before
    log = run.stderr
    return seconds, grew, log.count("from the node cache, cloned"), log.count("from the node cache, copied")


def read_and_hash(image, blobs):
    """Seconds to read fresh clones of `blobs` (not in the page cache: new inodes) without
    hashing, and seconds for SHA-256 (hashlib, one core) over the same bytes in memory."""
    clones = []
    for i, b in enumerate(blobs):
        c = image.mnt / f"readtest{i}"
        subprocess.run(["cp", "--reflink=always", str(b), str(c)], check=True)
        clones.append(c)
    image.sync()
    t = time.monotonic()
    total = 0
    for c in clones:
        with open(c, "rb", buffering=0) as f:
            while chunk := f.read(4 * MiB):
                total += len(chunk)
    read = time.monotonic() - t
    buf = open(clones[0], "rb").read()
    t = time.monotonic()
    hashlib.sha256(buf).digest()
    hashed = (time.monotonic() - t) * total / len(buf)
    for c in clones:
        c.unlink()
    return total, read, hashed


def warm_installs(args):
    if os.geteuid() != 0:
        raise SystemExit("--warm-installs needs root (loop devices, mount, other UIDs)")
    size = 64 * MiB if args.quick else 1024 * MiB
    shards = 4
    work = suite.fresh_dir(Path(args.work + "-warm"))
    ocimodel = suite.release_binary()
    reg = LoggingRegistry(work)
    results = {}
    try:
        model = work / "model"
        model.mkdir()
        for i in range(shards):
            suite.keystream(model / f"model-{i + 1:05}-of-{shards:05}.safetensors", size // shards,
                            f"warm-{i}")
        out = subprocess.run([str(ocimodel), "push", str(model), f"{reg.addr}/models/sharded:v1",
                              "--format", "oras"],
                             env={"PATH": "/usr/bin:/bin", "OCIMODEL_INSECURE_REGISTRIES": reg.addr},
                             check=True, capture_output=True, text=True)
        uri = f"{reg.addr}/models/sharded@{out.stdout.split()[0]}"
        for kind in ("xfs", "ext4"):
            image = LoopImage(work, kind, 8 * size + 1024 * MiB)
            try:
                cold = warm_pod(ocimodel, uri, reg, image, image.mnt / "pod0", 2000)
                pods = [warm_pod(ocimodel, uri, reg, image, image.mnt / f"pod{i}", 2000 + i)
                        for i in range(1, 5)]
                for i in range(1, 5):
                    shutil.rmtree(image.mnt / f"pod{i}")
                image.settle()
                rounds = []
                for r in range(args.rounds):
                    copy = warm_pod(ocimodel, uri, reg, image, image.mnt / "copy", 2010, clone=False)
                    shutil.rmtree(image.mnt / "copy")
                    image.settle()
                    clone = warm_pod(ocimodel, uri, reg, image, image.mnt / "clone", 2011)
                    shutil.rmtree(image.mnt / "clone")
                    image.settle()
                    rounds.append((copy, clone))
                    print(kind, r, copy, clone, flush=True)
                blobs = sorted((image.mnt / "cache/blobs/sha256").iterdir())
                blobs = [b for b in blobs if b.stat().st_size == size // shards]
                rh = read_and_hash(image, blobs) if kind == "xfs" else None
                results[kind] = (cold, pods, rounds, rh)
            finally:
                image.close()
    finally:
        reg.stop()

    med = statistics.median
    mib = lambda b: b / MiB  # noqa: E731
    lines = [
        WARM_SECTION,
        "",
        f"`python3 bench/node_cache.py --warm-installs` on {suite.machine()}; the 2 vCPUs were shared "
        f"with other builds while it ran, so it alternates the two ways in {args.rounds} rounds. "
        f"Model: {size // MiB} MiB in {shards} incompressible shards (ORAS, one whole-file layer each), "
        "pulled by digest. The node cache and every DEST on one loop-mounted image "
        "(`mkfs.xfs -m reflink=1`, then `mkfs.ext4`); each pod another UID in group 0. Seconds: the "
        "run, then `sync -f`, so the install is on disk. Disk: the filesystem's growth (statvfs after "
        "the sync), as a share of the model.",
        "",
        "Four pods one after another, after a cold pod filled the cache:",
        "",
        "| filesystem | pod | seconds (durable) | disk growth | blobs cloned / copied (log) |",
        "|---|---|---|---|---|",
    ]
    for kind, (cold, pods, _, _) in results.items():
        s, g, _, _ = cold
        lines.append(f"| {kind} | cold (downloads into the cache, writes DEST) | {s:.2f} | "
                     f"{mib(g):.1f} MiB ({100 * g / size:.0f}%) | - |")
        for i, (s, g, cl, co) in enumerate(pods, 1):
            lines.append(f"| {kind} | warm {i} | {s:.2f} | {mib(g):.2f} MiB ({100 * g / size:.2f}%) | "
                         f"{cl} / {co} |")
    lines += [
        "",
        "A warm pod, cloning (the default) vs today's verified copy (`OCIMODEL_CLONE=off`), on the "
        "same image, alternating:",
        "",
        "| filesystem | round | copy: seconds | copy: disk | clone: seconds | clone: disk | clone / copy |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, (_, _, rounds, _) in results.items():
        for r, (copy, clone) in enumerate(rounds, 1):
            lines.append(f"| {kind} | {r} | {copy[0]:.2f} | {mib(copy[1]):.0f} MiB | {clone[0]:.2f} | "
                         f"{mib(clone[1]):.2f} MiB | {clone[0] / copy[0]:.2f}× |")
        cm, km = med([c[0][0] for c in rounds]), med([c[1][0] for c in rounds])
        lines.append(f"| {kind} | median | {cm:.2f} | | {km:.2f} | | {km / cm:.2f}× |")
    total, read, hashed = results["xfs"][3]
    cores = os.cpu_count()
    lines += [
        "",
        "What bounds a warm install (xfs): reading fresh clones of the 4 cached shards "
        f"({mib(total):.0f} MiB, new inodes, so not in the page cache) took {read:.2f} s "
        f"({mib(total) / read:.0f} MiB/s); SHA-256 of the same bytes in memory on one core "
        f"(hashlib) {hashed:.2f} s ({mib(total) / hashed:.0f} MiB/s). Each blob is hashed on its "
        f"own thread (a CPU slot per chunk), so {shards} shards on {cores} cores hash in about "
        f"{hashed / min(cores, shards):.2f} s.",
        "",
        "The image's backing file is a file in /tmp, so its blocks sit in the host's page cache: "
        "`sync -f` makes the install durable on the loop device, and reads come at memory speed, "
        "not a disk's. Each number is one run on a machine whose load it does not control; the "
        "medians of the alternating rounds are the comparison.",
        "",
    ]
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    head = old.split("\n" + WARM_SECTION)[0].rstrip("\n")
    out.write_text(head + "\n\n" + "\n".join(lines))
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", default="/tmp/ocimodel-bench-node-cache")
    ap.add_argument("--out", default=str(REPO / "bench/RESULTS-node-cache.md"))
    ap.add_argument("--warm-installs", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.warm_installs:
        return warm_installs(args)
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
    out = Path(args.out)
    # The --warm-installs section is its own run's: kept.
    kept = out.read_text().split("\n" + WARM_SECTION, 1) if out.exists() else []
    if len(kept) == 2:
        lines += [WARM_SECTION + kept[1]]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
