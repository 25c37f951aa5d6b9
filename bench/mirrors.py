#!/usr/bin/env python3
"""One download per cluster: N nodes pulling the same 1 GiB model through a pull-through mirror.

    python3 bench/mirrors.py            # writes bench/RESULTS-mirrors.md (about 2 minutes)
    python3 bench/mirrors.py --quick    # 64 MiB, a smoke test of the harness

The "registry in the cloud" is Debian's docker-registry on loopback; the cluster's mirror is a
second docker-registry in pull-through proxy mode (`proxy: remoteurl`), the engine Harbor's and
distribution's proxy caches use. Each node is one ocimodel process with its own DEST and no node
cache, configured by a containerd `hosts.toml` (`OCIMODEL_HOSTS_DIR`) as a node's containerd is.
For N = 2 and 4 nodes at once:
- no mirror: every node pulls from the registry;
- through the mirror, cold (the mirror has nothing yet), then warm (another N nodes);
- through the mirror with a dead first mirror ahead of it (nothing listens; a node's Dragonfly
  that is down), as a `hosts.toml` lists them.
Egress is the bytes each registry's access log records for blob GETs, as a multiple of the model.
"""
import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as suite  # noqa: E402  (the main suite's helpers)
import node_cache  # noqa: E402  (LoggingRegistry)

REPO = suite.REPO
MiB = suite.MiB


def start_proxy(work, upstream):
    """A docker-registry in pull-through proxy mode, with its access log."""
    return node_cache.LoggingRegistry(work, extra=f"proxy: {{remoteurl: http://{upstream}}}\n")


def hosts_dir(work, upstream, mirrors):
    """containerd's certs.d for the registry: `mirrors` first, then the registry itself."""
    d = work / "certs.d"
    shutil.rmtree(d, ignore_errors=True)
    (d / upstream).mkdir(parents=True)
    text = f'server = "http://{upstream}"\n'
    for m in mirrors:
        text += f'\n[host."http://{m}"]\ncapabilities = ["pull", "resolve"]\ndial_timeout = "1s"\n'
    (d / upstream / "hosts.toml").write_text(text)
    return d


def nodes(ocimodel, uri, upstream, work, n, hosts):
    """n concurrent nodes, each pulling into its own DEST; returns their wall times."""
    env = {"PATH": "/usr/bin:/bin", "OCIMODEL_INSECURE_REGISTRIES": upstream, "OCIMODEL_LOG": "warn",
           "OCIMODEL_REGISTRIES_CONF": "off", "OCIMODEL_HOSTS_DIR": str(hosts) if hosts else "off"}
    return node_cache.concurrent(ocimodel, uri, work, n, env, "node")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", default="/tmp/ocimodel-bench-mirrors")
    ap.add_argument("--out", default=str(REPO / "bench/RESULTS-mirrors.md"))
    args = ap.parse_args()
    size = 64 * MiB if args.quick else 1024 * MiB
    work = Path(args.work)
    work = suite.fresh_dir(work)
    ocimodel = suite.release_binary()
    up = node_cache.LoggingRegistry(work / "upstream")
    mirrors = []
    try:
        model = work / "model"
        model.mkdir()
        suite.keystream(model / "weights.bin", size, "mirrors")
        out = subprocess.run([str(ocimodel), "push", str(model), f"{up.addr}/models/big:v1", "--format", "oras"],
                             env={"PATH": "/usr/bin:/bin", "OCIMODEL_INSECURE_REGISTRIES": up.addr},
                             check=True, capture_output=True, text=True)
        digest = out.stdout.split()[0]
        uri = f"{up.addr}/models/big@{digest}"
        dead = f"127.0.0.1:{suite.free_port()}"  # nothing listens there
        rows = []

        blob = suite.manifest(up, "models/big", digest)["layers"][0]["digest"]

        def settle(mirror):
            """Waits until the mirror has stored the blob: docker-registry's proxy writes
            its copy in the background, with a download of its own from the registry."""
            algo, hexd = blob.split(":")
            data = mirror.dir / "data/docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"
            for _ in range(600):
                if data.exists() and data.stat().st_size == size:
                    break
                time.sleep(0.1)
            time.sleep(1)  # the access log line follows the write

        def measure(label, n, hosts, mirror, wait=False):
            subprocess.run(["sync"], check=True)
            up_before = up.blob_bytes()
            mirror_before = mirror.blob_bytes() if mirror else 0
            walls = nodes(ocimodel, uri, up.addr, work, n, hosts)
            if wait:
                settle(mirror)
            up_egress = (up.blob_bytes() - up_before) / size
            mirror_egress = ((mirror.blob_bytes() - mirror_before) / size) if mirror else 0.0
            rows.append((n, label, up_egress, mirror_egress, walls[0], statistics.median(walls), walls[-1]))
            print(rows[-1], flush=True)

        for n in (2, 4):
            mirror = start_proxy(work / f"mirror-{n}", up.addr)
            mirrors.append(mirror)
            measure("no mirror", n, None, None)
            via = hosts_dir(work, up.addr, [mirror.addr])
            measure("pull-through mirror, cold", n, via, mirror, wait=True)
            measure("pull-through mirror, warm", n, via, mirror)
            measure("dead first mirror, then the warm one", n, hosts_dir(work, up.addr, [dead, mirror.addr]), mirror)
    finally:
        up.stop()
        for m in mirrors:
            m.stop()

    lines = [
        "# Registry mirrors: one download per cluster",
        "",
        f"`python3 bench/mirrors.py` on {suite.machine()}. Model: one {size // MiB} MiB incompressible file "
        "pushed as an ORAS artifact, pulled by digest. The registry and a pull-through mirror "
        "(docker-registry in proxy mode) both on loopback; each node is one ocimodel process with its own "
        "DEST, no node cache, its mirrors from a containerd `hosts.toml`. Nodes start together. "
        "Egress: the bytes each access log records for blob GETs, as a multiple of the model size. "
        "Times in seconds from the start of the batch to each node's exit.",
        "",
        "| nodes | path | registry egress | mirror egress | first node done | median node | last node |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, label, up_e, m_e, first, mid, last in rows:
        lines.append(f"| {n} | {label} | {up_e:.2f}× | {m_e:.2f}× | {first:.2f} | {mid:.2f} | {last:.2f} |")
    lines += [
        "",
        "Reading it: through a warm mirror the registry sends nothing, however many nodes pull. Cold, "
        "docker-registry's proxy (distribution 2.8) downloads the blob once in the background to store "
        "it and once more for every request that arrives before it is stored, hence N+1; warm the mirror "
        "with one pull first, or use an engine that coalesces concurrent misses. A dead first mirror "
        "costs nothing measurable: it is asked once, not retried, and not asked again. All nodes and "
        "both registries share this machine's 2 vCPUs, so the times say nothing about a fleet's; the "
        "egress columns do.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
