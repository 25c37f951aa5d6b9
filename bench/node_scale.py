#!/usr/bin/env python3
"""Node scale: a sharded model and one tar layer from a loopback registry onto local disk, ocimodel
against the floors over the same bytes, side by side in one run (adapted from the GPU-node
measurement that found one thread hashing every blob).

Cases: floors (parallel fetch+sha256, parallel fetch+sha256+write into DEST's filesystem with one
Python thread per shard, one stream of fetch+sha256 of the tar layer); ocimodel ORAS (one layer per
shard) from the registry and from an OCI layout; ocimodel modelcar (one uncompressed tar layer) from
the registry and from a layout. For every ocimodel run: wall time, CPU, peak RSS (wait4), and the
busiest thread's user CPU time sampled from /proc/PID/task/*/stat, against the CPU one core needs to
SHA-256 all the bytes (measured here with hashlib).

    python3 bench/node_scale.py                       # 8 x 128 MiB, on any machine
    SHARDS=8 SHARD_MB=2048 python3 bench/node_scale.py  # the 16 GiB GPU-node case

Env: SHARDS (8), SHARD_MB (128), BIN (release binary; built when missing), BASELINE (another
binary, e.g. an older release, run beside BIN in every ocimodel case), REGBIN (docker-registry),
WORK (registry storage; /dev/shm/ns), DEST_ROOT (/tmp/ns-dest), OUT (bench/, where
RESULTS-node-scale.json and a Markdown table go), ROUNDS (3; medians), ONE_CPU=1 (also every
ocimodel case under `taskset -c 0`).
"""
import concurrent.futures as cf, hashlib, http.client, json, os, platform, resource, shutil, socket
import statistics, struct, subprocess, sys, tarfile, threading, time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARDS = int(os.environ.get("SHARDS", 8))
SHARD = int(os.environ.get("SHARD_MB", 128)) << 20
REGBIN = os.environ.get("REGBIN") or shutil.which("docker-registry") or "docker-registry"
WORK = os.environ.get("WORK", "/dev/shm/ns")
DEST_ROOT = os.environ.get("DEST_ROOT", "/tmp/ns-dest")
OUT = os.environ.get("OUT", str(REPO / "bench"))
ROUNDS = int(os.environ.get("ROUNDS", 3))
T_START = time.monotonic()
R = {"shards": SHARDS, "shard_bytes": SHARD, "cpus": os.cpu_count(), "rounds": ROUNDS}


def log(*a):
    print(f"[{time.monotonic() - T_START:6.1f}s] " + " ".join(str(x) for x in a), flush=True)


def release_binary():
    b = os.environ.get("BIN")
    if b:
        return os.path.abspath(b)
    out = subprocess.run([str(REPO / "scripts/build-static.sh")], cwd=REPO, check=True,
                         stdout=subprocess.PIPE, text=True)
    return out.stdout.strip()


def cpuinfo():
    try:
        txt = open("/proc/cpuinfo").read()
        model = next((l.split(":", 1)[1].strip() for l in txt.splitlines() if l.startswith("model name")), "?")
        return model, (" sha_ni" in txt)
    except OSError:
        return "?", False


BASE = None


def make_shard(i):
    """A valid safetensors file: one U8 tensor of SHARD bytes; every 64 MiB chunk made unique."""
    global BASE
    if BASE is None:
        BASE = bytearray(os.urandom(min(64 << 20, SHARD)))
    name = f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors"
    hdr = json.dumps({"w": {"dtype": "U8", "shape": [SHARD], "data_offsets": [0, SHARD]}}).encode()
    hdr += b" " * (-len(hdr) % 8)
    path = os.path.join(WORK, "src", name)
    h = hashlib.sha256()
    with open(path, "wb", buffering=0) as f:
        head = struct.pack("<Q", len(hdr)) + hdr
        f.write(head); h.update(head)
        left, k = SHARD, 0
        while left:
            n = min(left, len(BASE))
            BASE[0:16] = struct.pack("<QQ", i, k)
            mv = memoryview(BASE)[:n]
            f.write(mv); h.update(mv)
            left -= n; k += 1
    return name, path, "sha256:" + h.hexdigest(), os.path.getsize(path)


class Store:
    """docker-registry's filesystem layout, written directly (blobs moved in, no copy)."""

    def __init__(self, root):
        self.v2 = os.path.join(root, "docker", "registry", "v2")

    def blob_path(self, dig):
        hx = dig.split(":")[1]
        return os.path.join(self.v2, "blobs", "sha256", hx[:2], hx, "data")

    def put_blob_file(self, repo, dig, path):
        p = self.blob_path(dig)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        os.replace(path, p)
        self.link(repo, dig)

    def put_blob_bytes(self, repo, data):
        dig = "sha256:" + hashlib.sha256(data).hexdigest()
        p = self.blob_path(dig)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "wb").write(data)
        self.link(repo, dig)
        return dig

    def link(self, repo, dig):
        d = os.path.join(self.v2, "repositories", repo, "_layers", "sha256", dig.split(":")[1])
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "link"), "w").write(dig)

    def put_manifest(self, repo, tag, data):
        dig = self.put_blob_bytes(repo, data)
        hx = dig.split(":")[1]
        base = os.path.join(self.v2, "repositories", repo, "_manifests")
        for d in (os.path.join(base, "revisions", "sha256", hx), os.path.join(base, "tags", tag, "current"),
                  os.path.join(base, "tags", tag, "index", "sha256", hx)):
            os.makedirs(d, exist_ok=True)
            open(os.path.join(d, "link"), "w").write(dig)
        return dig


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch_hash(addr, repo, dig, want_hash=True, write_to=None):
    host, port = addr.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    c.request("GET", f"/v2/{repo}/blobs/{dig}")
    r = c.getresponse()
    assert r.status == 200, r.status
    h = hashlib.sha256()
    buf = bytearray(4 << 20)
    n = 0
    out = open(write_to, "wb", buffering=0) if write_to else None
    while True:
        k = r.readinto(buf)
        if not k:
            break
        n += k
        if want_hash:
            h.update(memoryview(buf)[:k])
        if out:
            out.write(memoryview(buf)[:k])
    c.close()
    if out:
        out.close()
    if want_hash:
        assert "sha256:" + h.hexdigest() == dig, "floor: digest mismatch"
    return n



def thread_cpu(pid):
    """{tid: (user s, user+sys s)} of the live threads of pid."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        try:
            f = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[t] = (int(f[11]) / tick, (int(f[11]) + int(f[12])) / tick)
    return out


def run_ocimodel(binary, ref, dest, env, taskset=False):
    """Wall s, CPU s, peak RSS MiB (VmHWM), busiest thread's user s, busiest thread's user+sys s."""
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["sync"])
    cmd = [binary, ref, dest]
    if taskset:
        cmd = ["taskset", "-c", "0"] + cmd
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = {}
    hwm = [0]
    done = threading.Event()

    def sample():
        # Peak RSS from the process's own high-water mark: wait4's ru_maxrss
        # also counts the Python parent's pages the child had before exec.
        while not done.is_set():
            seen.update(thread_cpu(p.pid))
            try:
                for line in open(f"/proc/{p.pid}/status"):
                    if line.startswith("VmHWM:"):
                        hwm[0] = max(hwm[0], int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.005)

    th = threading.Thread(target=sample)
    th.start()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    done.set()
    th.join()
    err = p.stderr.read().decode(errors="replace")
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"ocimodel rc={p.returncode}: {err[-800:]}")
    busiest_user = max((u for u, _ in seen.values()), default=0.0)
    busiest_all = max((a for _, a in seen.values()), default=0.0)
    return wall, ru.ru_utime + ru.ru_stime, hwm[0] / 1024, busiest_user, busiest_all


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    os.makedirs(OUT, exist_ok=True)
    binary = release_binary()
    baseline = os.environ.get("BASELINE")
    model, sha_ni = cpuinfo()
    R.update(cpu_model=model, sha_ni=sha_ni, kernel=platform.release(), binary=binary, baseline=baseline)
    log("cpus", os.cpu_count(), model, "sha_ni" if sha_ni else "no sha_ni")
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(os.path.join(WORK, "src"))
    os.makedirs(DEST_ROOT, exist_ok=True)

    blob = os.urandom(256 << 20)
    t0 = time.thread_time(); hashlib.sha256(blob).digest(); sha_rate = len(blob) / (time.thread_time() - t0)
    del blob
    R["sha256_one_core_GBps"] = round(sha_rate / 1e9, 2)
    log("sha256 one core GB/s", R["sha256_one_core_GBps"])

    with cf.ProcessPoolExecutor(min(SHARDS, os.cpu_count())) as ex:
        shards = list(ex.map(make_shard, range(SHARDS)))
    total = sum(s[3] for s in shards)
    R["model_bytes"] = total
    log(f"generated {SHARDS} shards, {total / 2**30:.2f} GiB")

    tar_path = os.path.join(WORK, "src", "layer.tar")
    h = hashlib.sha256()
    with open(tar_path, "wb", buffering=0) as out:
        def put(b):
            out.write(b); h.update(b)
        ti = tarfile.TarInfo("models"); ti.type = tarfile.DIRTYPE; ti.mode = 0o755
        put(ti.tobuf(format=tarfile.PAX_FORMAT))
        buf = bytearray(16 << 20)
        for name, path, _, size in shards:
            ti = tarfile.TarInfo("models/" + name); ti.size = size; ti.mode = 0o644
            put(ti.tobuf(format=tarfile.PAX_FORMAT))
            with open(path, "rb", buffering=0) as f:
                while True:
                    k = f.readinto(buf)
                    if not k:
                        break
                    put(memoryview(buf)[:k])
            put(b"\0" * (-size % 512))
        put(b"\0" * 1024)
    tar_dig, tar_size = "sha256:" + h.hexdigest(), os.path.getsize(tar_path)

    store = Store(os.path.join(WORK, "reg"))
    empty = store.put_blob_bytes("ns/oras", b"{}")
    layers = []
    for name, path, dig, size in shards:
        store.put_blob_file("ns/oras", dig, path)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": dig, "size": size,
                       "annotations": {"org.opencontainers.image.title": name}})
    oras = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "artifactType": "application/vnd.unknown.artifact.v1",
                       "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
                       "layers": layers}).encode()
    oras_dig = store.put_manifest("ns/oras", "v1", oras)
    store.put_blob_file("ns/car", tar_dig, tar_path)
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                      "rootfs": {"type": "layers", "diff_ids": [tar_dig]}}).encode()
    cfg_dig = store.put_blob_bytes("ns/car", cfg)
    car = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_dig, "size": len(cfg)},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": tar_dig, "size": tar_size}]}).encode()
    car_dig = store.put_manifest("ns/car", "v1", car)

    lay = os.path.join(WORK, "layout")
    os.makedirs(os.path.join(lay, "blobs", "sha256"))
    digs = [l["digest"] for l in layers]
    for d in digs + [empty, oras_dig, tar_dig, cfg_dig, car_dig]:
        os.link(store.blob_path(d), os.path.join(lay, "blobs", "sha256", d.split(":")[1]))
    open(os.path.join(lay, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
    mf = "application/vnd.oci.image.manifest.v1+json"
    open(os.path.join(lay, "index.json"), "w").write(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": mf, "digest": oras_dig, "size": len(oras), "annotations": {"org.opencontainers.image.ref.name": "oras"}},
        {"mediaType": mf, "digest": car_dig, "size": len(car), "annotations": {"org.opencontainers.image.ref.name": "car"}}]}))

    port = free_port()
    addr = f"127.0.0.1:{port}"
    cfgp = os.path.join(WORK, "config.yml")
    open(cfgp, "w").write(f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {WORK}/reg}}}}\n"
                          f"http: {{addr: {addr}}}\n")
    reg = subprocess.Popen([REGBIN, "serve", cfgp], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    rows = {}
    try:
        for _ in range(100):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1); c.request("GET", "/v2/"); c.getresponse(); break
            except OSError:
                time.sleep(0.1)
        env = dict(os.environ, OCIMODEL_INSECURE_REGISTRIES=addr, OCIMODEL_TERMINATION_LOG=os.path.join(WORK, "tl"))

        def floor_parallel(write):
            wdir = os.path.join(DEST_ROOT, "floor")
            shutil.rmtree(wdir, ignore_errors=True); os.makedirs(wdir)
            subprocess.run(["sync"])
            t0 = time.monotonic()
            list(cf.ThreadPoolExecutor(len(digs)).map(
                lambda d: fetch_hash(addr, "ns/oras", d, True, os.path.join(wdir, d[7:19]) if write else None), digs))
            t = time.monotonic() - t0
            shutil.rmtree(wdir, ignore_errors=True)
            return t

        def floor_tar():
            t0 = time.monotonic(); fetch_hash(addr, "ns/car", tar_dig, True); return time.monotonic() - t0

        cases = [
            ("floor: fetch+sha256, one Python thread per shard", lambda: floor_parallel(False), total, None),
            ("floor: fetch+sha256+write, one Python thread per shard", lambda: floor_parallel(True), total, None),
            ("floor: fetch+sha256 of the tar layer, one stream", floor_tar, tar_size, None),
        ]
        bins = [("ocimodel", binary)] + ([("baseline", os.path.abspath(baseline))] if baseline else [])
        pulls = [
            ("ORAS, one layer per shard", f"ocimodel://{addr}/ns/oras@{oras_dig}", total),
            ("ORAS from an OCI layout", f"oci-layout://{lay}:oras", total),
            ("modelcar, one tar layer", f"ocimodel://{addr}/ns/car@{car_dig}", tar_size),
            ("modelcar from an OCI layout", f"oci-layout://{lay}:car", tar_size),
        ]
        cpu_modes = [False] + ([True] if os.environ.get("ONE_CPU") == "1" else [])
        for one in cpu_modes:
            for case, ref, nbytes in pulls:
                for label, b in bins:
                    name = f"{label}: {case}" + (" (taskset 1 CPU)" if one else "")
                    cases.append((name, (lambda b=b, ref=ref, one=one: run_ocimodel(b, ref, os.path.join(DEST_ROOT, "m"), env, one)), nbytes, label))
        # Round 0 warms the page cache and this VM's memory and is not counted.
        for rnd in range(-1, ROUNDS):
            for name, fn, nbytes, label in cases:
                try:
                    r = fn()
                    if rnd < 0:
                        continue
                except Exception as e:  # one failure must not lose the other figures
                    log(name, "FAILED", e)
                    rows.setdefault(name, {"bytes": nbytes, "runs": [], "error": str(e)[:300]})
                    continue
                rows.setdefault(name, {"bytes": nbytes, "runs": []})["runs"].append(r if isinstance(r, tuple) else (r,))
                log(f"round {rnd + 1} {name}: {(r[0] if isinstance(r, tuple) else r):.2f}s")
    finally:
        reg.terminate()
        reg.wait()
        shutil.rmtree(WORK, ignore_errors=True)
        shutil.rmtree(DEST_ROOT, ignore_errors=True)

    sha_cpu_all = total / sha_rate
    table = []
    for name, r in rows.items():
        runs = r["runs"]
        if not runs:
            table.append({"case": name, "error": r.get("error")})
            continue
        row = {"case": name, "s": round(median([x[0] for x in runs]), 2)}
        row["GBps"] = round(r["bytes"] / row["s"] / 1e9, 2)
        if len(runs[0]) > 1:
            row["cpu_s"] = round(median([x[1] for x in runs]), 2)
            row["peak_rss_MiB"] = round(max(x[2] for x in runs), 1)
            row["busiest_user_s"] = round(median([x[3] for x in runs]), 2)
            row["busiest_user_x_sha_all"] = round(row["busiest_user_s"] / (r["bytes"] / sha_rate), 2)
            row["busiest_all_s"] = round(median([x[4] for x in runs]), 2)
        table.append(row)
    R["rows"] = table
    floors = {t["case"]: t.get("s") for t in table}
    f_write = floors.get("floor: fetch+sha256+write, one Python thread per shard")
    f_tar = floors.get("floor: fetch+sha256 of the tar layer, one stream")
    for t in table:
        if "s" in t and f_write and "ORAS" in t["case"]:
            t["x_floor"] = round(f_write / t["s"], 2)
        if "s" in t and f_tar and "modelcar" in t["case"]:
            t["x_floor"] = round(f_tar / t["s"], 2)
        if "s" in t and "modelcar from an OCI layout" in t["case"]:
            t["x_sha256_one_core"] = round((t["bytes"] if "bytes" in t else tar_size) / t["s"] / sha_rate, 2)
    json.dump(R, open(os.path.join(OUT, "RESULTS-node-scale.json"), "w"), indent=1)
    lines = [f"{os.cpu_count()} CPUs ({model}, {'SHA-NI' if sha_ni else 'no SHA-NI'}), kernel {platform.release()}; "
             f"{SHARDS} shards x {SHARD >> 20} MiB = {total / 2**30:.2f} GiB; SHA-256 on one core {R['sha256_one_core_GBps']} GB/s; "
             f"median of {ROUNDS} interleaved rounds.", "",
             "| case | s | GB/s | x floor | CPU s | peak RSS MiB | busiest thread user s (x one-core SHA-256 of the bytes) |",
             "|---|---|---|---|---|---|---|"]
    for t in table:
        if "error" in t:
            lines.append(f"| {t['case']} | failed: {t['error']} | | | | | |")
            continue
        busy = f"{t['busiest_user_s']} ({t['busiest_user_x_sha_all']}x)" if "busiest_user_s" in t else ""
        lines.append(f"| {t['case']} | {t['s']} | {t['GBps']} | {t.get('x_floor', '')} | {t.get('cpu_s', '')} | "
                     f"{t.get('peak_rss_MiB', '')} | {busy} |")
    text = "\n".join(lines) + "\n"
    open(os.path.join(OUT, "RESULTS-node-scale.table.md"), "w").write(text)
    print(text)
    log("done in", round(time.monotonic() - T_START, 1), "s")


if __name__ == "__main__":
    main()
