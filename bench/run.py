#!/usr/bin/env python3
"""ocimodel benchmark suite: pull + verify + install, against the tools users would pick instead.

    python3 bench/run.py                 # full suite (about 15 minutes), writes bench/RESULTS.md
    python3 bench/run.py --quick         # small fixtures, one round: a smoke test of the harness
    python3 bench/run.py --large         # 8 GiB cases only (memory check, about 8 minutes): RESULTS-large.md

What it does:
- builds ocimodel (release) and starts Debian's docker-registry on 127.0.0.1 (ephemeral port,
  storage in the work directory);
- makes deterministic, incompressible fixtures (AES-CTR keystream from openssl): one 1 GiB file;
  four 256 MiB shards; 2,000 files of 4-64 KiB;
- pushes them with `ocimodel push` (its output is checked against skopeo, the oras SDK and
  modelpack-client by the test suite) as modelcar images (uncompressed tar, gzip, zstd layers)
  and as ORAS artifacts;
- runs every tool on every case it applies to, interleaved round-robin, one warm-up round then
  --rounds measured rounds, each into a fresh directory after a `sync` (so no run pays for the
  previous one's writeback); the registry's blobs stay in the page cache;
- measures wall time, CPU (user+sys) and peak RSS with GNU time, and reports min/median/max,
  plus each tool's ratio to ocimodel in the same run.

Tools: ocimodel; KServe's own initializer (kserve-storage 0.21 from PyPI, in a venv beside the work
directory: `Storage.download("oci://…", out)` with `KSERVE_OCI_INSECURE_REGISTRY=true`; modelcar
cases); oras-py (`oras.client.OrasClient.pull`); skopeo copy to an OCI layout + `tar -x` of the
layers; podman pull; and the floors `curl -o` of the same blobs, `curl | openssl dgst -sha256`
(the honest verify floor: `sha256sum` has no SHA-NI here) and, for one-blob cases, `aria2c -x8`
(the parallel floor, unverified). Pinned to one CPU: bench/one_cpu.py.
"""
import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=True, **kw)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def keystream(path, size, seed):
    """Deterministic incompressible bytes: AES-256-CTR over zeros."""
    key = hashlib.sha256(f"ocimodel-bench-{seed}".encode()).hexdigest()
    with open(path, "wb") as out:
        enc = subprocess.Popen(
            ["openssl", "enc", "-aes-256-ctr", "-nosalt", "-K", key, "-iv", "0" * 32, "-in", "/dev/zero"],
            stdout=subprocess.PIPE,
        )
        left = size
        while left:
            chunk = enc.stdout.read(min(left, 4 * MiB))
            out.write(chunk)
            left -= len(chunk)
        enc.kill()
        enc.wait()


class Registry:
    def __init__(self, work, accesslog=False, extra=""):
        """`extra`: more of docker-registry's YAML config (e.g. `proxy: {remoteurl: …}`)."""
        self.dir = work / "registry"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.addr = f"127.0.0.1:{free_port()}"
        cfg = self.dir / "config.yml"
        cfg.write_text(
            f"version: 0.1\nlog: {{level: error, accesslog: {{disabled: {'false' if accesslog else 'true'}}}}}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.dir / 'data'}}}}}\n"
            f"http: {{addr: {self.addr}}}\n" + extra
        )
        self.log = self.dir / "registry.log"
        out = open(self.log, "wb") if accesslog else subprocess.DEVNULL
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=out,
                                     stderr=subprocess.STDOUT)
        for _ in range(100):
            try:
                socket.create_connection(tuple(self.addr.split(":")), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("docker-registry did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def manifest(reg, repo, tag="v1"):
    import urllib.request
    req = urllib.request.Request(f"http://{reg.addr}/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    return json.load(urllib.request.urlopen(req))


def make_fixtures(work, quick, ocimodel, reg, large=False):
    big = 64 * MiB if quick else 1024 * MiB
    shard = big // 4
    small_n = 200 if quick else 2000
    fx = work / "fixtures"
    if fx.exists():
        shutil.rmtree(fx)
    fx.mkdir(parents=True)
    env = dict(os.environ, OCIMODEL_INSECURE_REGISTRIES=reg.addr)
    if large:
        # 8 GiB of zeros: sparse on the fixture side ("sparse-friendly"); the
        # registry and DEST hold real bytes. It measures memory, not speed.
        (fx / "large").mkdir()
        with open(fx / "large/model.bin", "wb") as f:
            f.truncate(8 * 1024 * MiB)
        for repo, flags in [("oras-8g", ["--format", "oras"]), ("car-8g", ["--format", "modelcar"])]:
            print(f"  pushing {repo}", flush=True)
            sh([str(ocimodel), "push", str(fx / "large"), f"{reg.addr}/bench/{repo}:v1", *flags], env=env,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return {"big": big, "shard": shard, "small_n": small_n}
    (fx / "single").mkdir()
    keystream(fx / "single/model.bin", big, "single")
    (fx / "shards").mkdir()
    for i in range(4):
        keystream(fx / f"shards/model-{i + 1:05d}-of-00004.safetensors", shard, f"shard{i}")
    (fx / "small").mkdir()
    rng = random.Random(42)
    pool = fx / "pool.bin"
    keystream(pool, 64 * 1024 * small_n // 2 + 64 * 1024, "small")
    data = pool.read_bytes()
    off = 0
    for i in range(small_n):
        n = rng.randint(4 * 1024, 64 * 1024)
        (fx / "small" / f"f{i:05d}.bin").write_bytes(data[off:off + n])
        off = (off + n) % (len(data) - 64 * 1024)
    pool.unlink()

    pushes = [
        ("single", "car-tar", ["--format", "modelcar"]),
        ("single", "car-gzip", ["--format", "modelcar", "--compress", "gzip"]),
        ("single", "car-zstd", ["--format", "modelcar", "--compress", "zstd"]),
        ("single", "oras-single", ["--format", "oras"]),
        ("shards", "oras-shards", ["--format", "oras"]),
        ("small", "oras-small", ["--format", "oras"]),
        ("small", "car-small", ["--format", "modelcar"]),
    ]

    for src, repo, flags in pushes:
        print(f"  pushing {repo}", flush=True)
        sh([str(ocimodel), "push", str(fx / src), f"{reg.addr}/bench/{repo}:v1", *flags], env=env,
           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {"big": big, "shard": shard, "small_n": small_n}


def timed(cmd, env=None):
    """Runs cmd (shell string) under GNU time; returns wall s, cpu s, peak RSS MiB."""
    fmt = "%e %U %S %M"
    p = subprocess.run(["/usr/bin/time", "-f", fmt, "bash", "-c", cmd], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = p.stderr.strip().splitlines()[-1]
    if p.returncode != 0:
        raise RuntimeError(f"{cmd}: exit {p.returncode}: {p.stderr[-800:]}")
    wall, user, sys_, rss = last.split()
    return float(wall), float(user) + float(sys_), int(rss) / 1024


KSERVE_STORAGE = "kserve-storage==0.21.0"
KSERVE_DOWNLOAD = "import sys\nfrom kserve_storage import Storage\nStorage.download(sys.argv[1], sys.argv[2])\n"


def kserve_storage(work):
    """A command prefix running KServe's initializer code: `PREFIX oci://REF OUT` (installs
    kserve-storage into a venv beside `work` the first time)."""
    venv = Path(work).parent / "ocimodel-bench-kserve-venv"
    if not (venv / "bin/python").exists():
        print(f"installing {KSERVE_STORAGE} into {venv}", flush=True)
        sh([sys.executable, "-m", "venv", str(venv)])
        sh([str(venv / "bin/pip"), "install", "-q", KSERVE_STORAGE])
    script = Path(work) / "kserve_download.py"
    script.write_text(KSERVE_DOWNLOAD)
    return f"KSERVE_OCI_INSECURE_REGISTRY=true {venv}/bin/python {script}"


def tools_for(case, reg, work, ocimodel, podman, kserve=None):
    """name -> (setup, command) for this case; each command writes into a fresh OUT."""
    repo = f"bench/{case}"
    ref = f"{reg.addr}/{repo}:v1"
    m = manifest(reg, repo)
    blobs = [l["digest"] for l in m["layers"]]
    out = work / "out"
    tools = {}
    tools["ocimodel"] = f"{ocimodel} pull --insecure-registry {reg.addr} {ref} {out}/ocimodel"
    large = case.endswith("-8g")  # memory check: ocimodel and the floors only
    if case.startswith("oras") and not large:
        tools["oras-py"] = (f"python3 -c \"import oras.client; oras.client.OrasClient(hostname='{reg.addr}', "
                            f"insecure=True).pull(target='{ref}', outdir='{out}/oras')\" >/dev/null 2>&1")
    if case.startswith("car") and not large and kserve:
        tools["kserve-storage"] = f"{kserve} oci://{ref} {out}/kserve >/dev/null 2>&1"
    if case.startswith("car") and not large:
        tools["skopeo+tar"] = (
            f"skopeo copy -q --src-tls-verify=false --dest-oci-accept-uncompressed-layers docker://{ref} "
            f"oci:{out}/layout:v1 && mkdir -p {out}/skopeo && for b in {' '.join(d.split(':')[1] for d in blobs)}; "
            f"do tar -xf {out}/layout/blobs/sha256/$b -C {out}/skopeo; done")
        if podman:
            tools["podman pull"] = f"{podman} pull -q --tls-verify=false {ref} >/dev/null && {podman} rmi -f {ref} >/dev/null"
    # Floors: the same blobs, no verification or unpacking at all. (A config
    # file and a URL list: 2,000 URLs do not fit on a command line.)
    cfg = work / f"curl-{case}.cfg"
    cfg.write_text("".join(f'url = "http://{reg.addr}/v2/{repo}/blobs/{d}"\noutput = "{out}/curl/b{i}"\n'
                           for i, d in enumerate(blobs)))
    url_list = work / f"urls-{case}.txt"
    url_list.write_text("".join(f"http://{reg.addr}/v2/{repo}/blobs/{d}\n" for d in blobs))
    parallel = "--parallel --parallel-max 8 " if len(blobs) > 1 else ""
    tools["curl -o (floor)"] = f"mkdir -p {out}/curl && curl -sf {parallel}-K {cfg}"
    tools["curl + sha256 (floor)"] = f"while read -r u; do curl -sf $u | openssl dgst -sha256 >/dev/null; done < {url_list}"
    if len(blobs) == 1 and shutil.which("aria2c"):
        tools["aria2c -x8 (floor)"] = (f"aria2c -q -x8 -s8 -k8M -d {out} -o aria.bin "
                                       f"http://{reg.addr}/v2/{repo}/blobs/{blobs[0]}")
    return tools


def versions(podman):
    def v(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except Exception:
            return "n/a"
    return {
        "ocimodel": v(f"{REPO}/target/static/linux-*/ocimodel --version"),
        "oras-py": v("python3 -c 'import importlib.metadata as m; print(m.version(\"oras\"))'"),
        "kserve-storage": KSERVE_STORAGE,
        "aria2c": v("aria2c --version"),
        "skopeo": v("skopeo --version"),
        "podman": v("podman --version") if podman else "not available",
        "curl": v("curl --version"),
        "openssl": v("openssl version"),
        "tar": v("tar --version"),
        "registry": v("docker-registry --version"),
    }


def release_binary():
    """Builds ocimodel (release) and returns its path."""
    print("building ocimodel (release)", flush=True)
    out = subprocess.run([str(REPO / "scripts/build-static.sh")], cwd=REPO, check=True,
                         stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip())


def fresh_dir(path):
    """`path` emptied (or created) for a benchmark's files."""
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
    mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
    return (f"{cpu}, {os.cpu_count()} vCPU ({'SHA-NI' if 'sha_ni' in flags else 'no SHA-NI'}), "
            f"{int(mem) // 1024 // 1024} GiB RAM, Linux {platform.release()}, registry and client on loopback, "
            f"warm page cache")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small fixtures, one round (smoke test)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default=None, help="default /tmp/ocimodel-bench (-large with --large)")
    ap.add_argument("--out", default=None, help="default bench/RESULTS.md (bench/RESULTS-large.md with --large)")
    ap.add_argument("--cases", default="car-tar,oras-single,oras-shards,oras-small,car-small,car-gzip,car-zstd")
    ap.add_argument("--large", action="store_true",
                    help="only the 8 GiB cases (ORAS and modelcar; ocimodel and the floors), a memory check, "
                         "written to bench/RESULTS-large.md; run apart, as 16 GiB of blobs would crowd the "
                         "page cache of the other cases")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    if args.work is None:
        args.work = "/tmp/ocimodel-bench" + ("-large" if args.large else "")
    if args.out is None:
        args.out = str(REPO / ("bench/RESULTS-large.md" if args.large else "bench/RESULTS.md"))

    ocimodel = release_binary()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    podman = None
    if shutil.which("podman") and os.geteuid() == 0:
        conf = work / "containers.conf"
        conf.write_text('[containers]\ndefault_ulimits = ["nofile=4096:4096","nproc=4096:4096"]\n')
        os.environ["CONTAINERS_CONF"] = str(conf)
        podman = f"podman --root {work}/podman/root --runroot {work}/podman/run --runtime runc --cgroup-manager=cgroupfs"
    reg = Registry(work)
    try:
        print("making and pushing fixtures", flush=True)
        sizes = make_fixtures(work, args.quick, ocimodel, reg, args.large)
        cases = ["oras-8g", "car-8g"] if args.large else args.cases.split(",")
        results = {}  # (case, tool) -> [(wall, cpu, rss)]
        kserve = None if args.large else kserve_storage(work)
        plan = {c: tools_for(c, reg, work, ocimodel, podman, kserve) for c in cases}
        for r in range(rounds + 1):
            label = "warm-up" if r == 0 else f"round {r}/{rounds}"
            print(label, flush=True)
            for case in cases:
                for tool, cmd in plan[case].items():
                    out = work / "out"
                    if out.exists():
                        shutil.rmtree(out)
                    out.mkdir()
                    # Flush the previous run's writeback so no tool pays for it.
                    os.sync()
                    time.sleep(0.2)
                    got = timed(cmd)
                    if r > 0:
                        results.setdefault((case, tool), []).append(got)
                    print(f"  {case:12} {tool:22} {got[0]:7.2f}s cpu {got[1]:6.2f}s rss {got[2]:7.1f} MiB", flush=True)
        write_report(args, results, cases, plan, sizes, rounds, podman)
    finally:
        reg.stop()


def write_report(args, results, cases, plan, sizes, rounds, podman):
    big = sizes["big"] // MiB
    titles = {
        "car-tar": f"modelcar image, one {big} MiB file, uncompressed tar layer",
        "oras-single": f"ORAS artifact, one {big} MiB file",
        "oras-shards": f"ORAS artifact, 4 x {sizes['shard'] // MiB} MiB shards",
        "oras-small": f"ORAS artifact, {sizes['small_n']} files of 4-64 KiB",
        "car-small": f"modelcar image, {sizes['small_n']} files of 4-64 KiB",
        "car-gzip": f"modelcar image, one {big} MiB file, gzip layer",
        "car-zstd": f"modelcar image, one {big} MiB file, zstd layer",
        "oras-8g": "ORAS artifact, one 8 GiB file (memory check)",
        "car-8g": "modelcar image, one 8 GiB file, uncompressed tar layer (memory check)",
    }
    lines = [
        "# Benchmark results",
        "",
        f"Made by `python3 bench/run.py{' --quick' if args.quick else ''}{' --large' if args.large else ''}` on {time.strftime('%Y-%m-%d')}.",
        f"Machine: {machine()}.",
        f"{rounds} measured round(s) after one warm-up, tools interleaved round-robin, `sync` before each run. Wall and CPU",
        "(user+sys) in seconds, peak RSS in MiB, medians unless marked. Ratio: the tool's median wall",
        "time over ocimodel's in the same run (above 1 means slower than ocimodel).",
        "",
        "Versions: " + "; ".join(f"{k} {v}" for k, v in versions(podman).items()),
        "",
    ]
    for case in cases:
        lines += [f"## {titles.get(case, case)}", "",
                  "| tool | wall min / median / max | CPU | peak RSS | ratio to ocimodel |",
                  "|---|---|---|---|---|"]
        base = statistics.median(w for w, _, _ in results[(case, "ocimodel")])
        for tool in plan[case]:
            rs = results[(case, tool)]
            walls = sorted(w for w, _, _ in rs)
            med = statistics.median(walls)
            lines.append(
                f"| {tool} | {walls[0]:.2f} / {med:.2f} / {walls[-1]:.2f} | {statistics.median(c for _, c, _ in rs):.2f} "
                f"| {statistics.median(m for _, _, m in rs):.0f} | {med / base:.2f}x |")
        lines.append("")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
