#!/usr/bin/env python3
"""ocimodel against KServe's own OCI initializer, on two CPUs and pinned to one.

    python3 bench/one_cpu.py             # 512 MiB modelcar, 3 interleaved rounds; RESULTS-one-cpu.md
    python3 bench/one_cpu.py --size 64M --rounds 1

KServe's default storage-initializer limit is `cpuLimit: "1"`. The peer is kserve-storage 0.21
from PyPI (installed into a venv under --work), `Storage.download("oci://…", out)` with
`KSERVE_OCI_INSECURE_REGISTRY=true`: it streams the image's tar and extracts `/models`, checking no
digest. ocimodel pulls the same modelcar by digest and verifies the layer and every file. The
floor is `curl | openssl dgst -sha256` (download and hash, nothing written). Peers alternate
within each round; one CPU is `taskset -c 0` on the peer (the registry keeps the other).
"""
import argparse
import shlex
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as suite  # noqa: E402
import wan  # noqa: E402  (parse_rate)

REPO = suite.REPO
MiB = suite.MiB


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="512M")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="/tmp/ocimodel-bench-one-cpu")
    ap.add_argument("--out", default=str(REPO / "bench/RESULTS-one-cpu.md"))
    args = ap.parse_args()
    size = wan.parse_rate(args.size)
    work = suite.fresh_dir(args.work)
    kserve = suite.kserve_storage(work)
    ocimodel = suite.release_binary()
    reg = suite.Registry(work)
    times = {}
    peak = {}
    try:
        (work / "model").mkdir()
        suite.keystream(work / "model/model.bin", size, "one-cpu")
        out = subprocess.run([str(ocimodel), "push", str(work / "model"), f"{reg.addr}/bench/car:v1",
                              "--format", "modelcar"],
                             env={"PATH": "/usr/bin:/bin", "OCIMODEL_INSECURE_REGISTRIES": reg.addr},
                             check=True, capture_output=True, text=True)
        digest = out.stdout.split()[0]
        layer = max(suite.manifest(reg, "bench/car", digest)["layers"], key=lambda l: l["size"])["digest"]
        dest = work / "dest"
        peers = {
            "curl \\| openssl dgst -sha256 (floor)": (
                f"curl -sf http://{reg.addr}/v2/bench/car/blobs/{layer} | openssl dgst -sha256 >/dev/null", None),
            "kserve-storage 0.21 (oci://, no digest checked)": (
                f"{kserve} {shlex.quote(f'oci://{reg.addr}/bench/car@{digest}')} {shlex.quote(str(dest))}",
                dict(os.environ)),
            "ocimodel (layer and every file verified)": (
                shlex.join([str(ocimodel), f"{reg.addr}/bench/car@{digest}", str(dest)]),
                {"PATH": "/usr/bin:/bin", "OCIMODEL_INSECURE_REGISTRIES": reg.addr, "OCIMODEL_LOG": "warn",
                 # OCIMODEL_* settings in the benchmark's environment apply to ocimodel.
                 **{k: v for k, v in os.environ.items() if k.startswith("OCIMODEL_")}}),
        }
        for cpus in ("2 CPUs", "1 CPU"):
            for r in range(args.rounds):
                for name, (cmd, env) in peers.items():
                    if cpus == "1 CPU":
                        cmd = f"taskset -c 0 bash -c {shlex.quote(cmd)}"
                    shutil.rmtree(dest, ignore_errors=True)
                    subprocess.run(["sync"], check=True)
                    wall, _cpu, rss = suite.timed(cmd, env)
                    times.setdefault((cpus, name), []).append(wall)
                    peak[name] = max(peak.get(name, 0), rss)
                    print(cpus, name, f"{wall:.2f}", flush=True)
            shutil.rmtree(dest, ignore_errors=True)
    finally:
        reg.stop()

    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        "# One CPU: ocimodel against KServe's own OCI initializer",
        "",
        f"`python3 bench/one_cpu.py` on {suite.machine()}. A {size // MiB} MiB incompressible file as a "
        f"modelcar image (one tar layer, the file under `/models`), pulled by digest from docker-registry "
        f"on loopback. Median of {args.rounds} interleaved rounds; one CPU is `taskset -c 0` on the peer.",
        "",
        "| peer | 2 CPUs (s) | 1 CPU (s) | kserve-storage ÷ peer, 2 CPUs | kserve-storage ÷ peer, 1 CPU | peak RSS (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    ks = "kserve-storage 0.21 (oci://, no digest checked)"
    for name in peers:
        two, one = med[("2 CPUs", name)], med[("1 CPU", name)]
        lines.append(f"| {name} | {two:.2f} | {one:.2f} | {med[('2 CPUs', ks)] / two:.2f}× | "
                     f"{med[('1 CPU', ks)] / one:.2f}× | {peak[name]:.0f} |")
    lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
