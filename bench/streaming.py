#!/usr/bin/env python3
"""Streaming through the sidecar's S3 endpoint (OCIMODEL_S3_LISTEN) over an emulated far link.

    python3 bench/streaming.py                      # 8 shards x 128 MiB (1 GiB), 16 MiB/s per connection
    python3 bench/streaming.py --shard-size 16M     # quicker
    python3 bench/streaming.py --binary target/debug/ocimodel --runai-python /path/to/venv/bin/python

A model shaped like a Hugging Face checkpoint (config.json, tokenizer.json,
model.safetensors.index.json, 8 safetensors shards of incompressible bytes) is pushed as an ORAS
artifact (one layer per file) to docker-registry behind `bench/wan.py`. Then, one after another:
1. the pull alone: `ocimodel REF DEST`, the time to an installed, verified model;
2. the sidecar with `OCIMODEL_S3_LISTEN`, and boto3 started at the same moment, reading every
   file in `--range` ranges from `--threads` threads (listing the bucket first; 503 SlowDown, "not
   verified yet", is retried): the time until the reader holds every byte, and when the first byte
   of the first shard arrived.
   Before it, the same sidecar with no reader (its own cost); after it, when the Run:ai streamer's
   wheels are in `--runai-lib` (tests/streaming.rs installs them there), 3. the streamer's own S3
   client started with a fresh sidecar, reading every file (tests/support/runai_reader.py), optionally at
   a lower priority (`--runai-nice 19`) so that on a small machine the pull has the CPUs first.
Targets (issue #31): reader done <= 1.15x the pull alone; first byte of the first shard before
half the pull alone. With `--runai-python` (a Python with torch and runai-model-streamer[-s3]),
4. the Run:ai Model Streamer's SafetensorsStreamer, as vLLM's loader uses it, lists the bucket and
reads every shard through a fresh sidecar from its start, and its tensors are compared with the
files'.

On a machine with few CPUs the registry and the link emulator share them with the pull and the
reader, which they would not on a node: `--far-nice -10` lets them have the CPUs first, so that
the reader competes with the sidecar only (the pull alone runs under the same setting).

Writes bench/RESULTS-streaming.md.
"""
import argparse
import hashlib
import json
import os
import resource
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as suite  # noqa: E402
import wan  # noqa: E402

REPO = suite.REPO
MiB = suite.MiB
SHARDS = 8


def shard_name(i):
    return f"model-{i:05d}-of-{SHARDS:05d}.safetensors"


def write_safetensors(path, tensor, size, seed):
    """A valid safetensors file holding one U8 tensor of incompressible bytes."""
    body = path.with_suffix(".body")
    suite.keystream(body, size, seed)
    header = json.dumps({tensor: {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as out, open(body, "rb") as data:
        out.write(struct.pack("<Q", len(header)))
        out.write(header)
        shutil.copyfileobj(data, out, 4 * MiB)
    body.unlink()


def make_model(root, shard_size):
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "tokenizer.json").write_text('{"version": "1.0"}')
    weight_map = {f"layers.{i}.weight": shard_name(i) for i in range(1, SHARDS + 1)}
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for i in range(1, SHARDS + 1):
        write_safetensors(root / shard_name(i), f"layers.{i}.weight", shard_size, f"shard{i}")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def read_everything(endpoint, bucket, rng, threads, first, start):
    """boto3 as a loader: list, then every file in ranges from `threads` threads."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError, EndpointConnectionError

    s3 = boto3.client("s3", endpoint_url="http://" + endpoint, region_name="us-east-1",
                      aws_access_key_id="anything", aws_secret_access_key="anything",
                      config=Config(retries={"max_attempts": 1}, read_timeout=120,
                                    max_pool_connections=2 * threads))
    lock = threading.Lock()
    out = {"first_byte": None, "hashes": {}, "key_done": {}}

    def retrying(call):
        while True:
            try:
                return call()
            except ClientError as e:
                if e.response["Error"]["Code"] in ("SlowDown", "503"):
                    time.sleep(0.05)
                    continue
                raise
            except EndpointConnectionError:  # the sidecar is still starting
                time.sleep(0.02)

    keys, token = [], None
    while True:
        kw = {"Bucket": bucket, **({"ContinuationToken": token} if token else {})}
        page = retrying(lambda: s3.list_objects_v2(**kw))
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            break
        token = page["NextContinuationToken"]

    ranges = ThreadPoolExecutor(threads)

    def get_range(key, a, b):
        def call():
            body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={a}-{b}")["Body"]
            parts = []
            while True:
                chunk = body.read(1 << 20)
                if not chunk:
                    break
                if key == first and out["first_byte"] is None:
                    with lock:
                        out["first_byte"] = out["first_byte"] or time.monotonic() - start
                parts.append(chunk)
            return b"".join(parts)
        return retrying(call)

    def read_key(key):
        size = retrying(lambda: s3.head_object(Bucket=bucket, Key=key))["ContentLength"]
        futs = [ranges.submit(get_range, key, a, min(a + rng, size) - 1) for a in range(0, size, rng)]
        h = hashlib.sha256()
        for f in futs:
            h.update(f.result())
        out["hashes"][key] = h.hexdigest()
        out["key_done"][key] = round(time.monotonic() - start, 2)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(read_key, keys))
    ranges.shutdown()
    out["done"] = time.monotonic() - start
    return out


RUNAI = r'''
import json, os, sys, time, torch
from runai_model_streamer import SafetensorsStreamer, list_safetensors
from safetensors.torch import load_file
source, local = sys.argv[1], sys.argv[2]
t0 = float(os.environ["T0"])
imported = time.monotonic() - t0
# As vLLM's runai_streamer loader: list the model's safetensors (a bucket, or a local directory
# as a storage-initializer leaves it), stream them all.
files = sorted(list_safetensors(source))
got, first = {}, None
with SafetensorsStreamer() as streamer:
    streamer.stream_files(files)
    for name, tensor in streamer.get_tensors():
        first = first or time.monotonic() - t0
        got[name] = tensor.clone()
done = time.monotonic() - t0
expected = {}
for f in files:
    expected.update(load_file(os.path.join(local, f.rsplit("/", 1)[1])))
assert got.keys() == expected.keys(), (sorted(got), sorted(expected))
for name, tensor in expected.items():
    assert torch.equal(got[name], tensor), name
print(json.dumps({"files": len(files), "tensors": len(got), "imported": imported, "first": first,
                  "done": done}))
'''


class Sidecar:
    """A fresh streaming sidecar on DEST `work/name/models`, started now (`t0`), stopped on exit."""

    def __init__(self, ocimodel, uri, work, pull_env, name):
        self.s3 = f"127.0.0.1:{suite.free_port()}"
        self.probes = f"127.0.0.1:{suite.free_port()}"
        env = {**pull_env, "OCIMODEL_S3_LISTEN": self.s3, "OCIMODEL_LISTEN": self.probes}
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([str(ocimodel), "sidecar", uri, str(work / name / "models")],
                                     env=env)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.proc.terminate()
        self.proc.wait()

    def wait_ready(self, limit=600):
        """Seconds from the start until `/readyz` said installed; None if it never did."""
        while self.proc.poll() is None and time.monotonic() - self.t0 < limit:
            try:
                if urllib.request.urlopen(f"http://{self.probes}/readyz", timeout=1).status == 200:
                    return time.monotonic() - self.t0
            except Exception:
                pass
            time.sleep(0.02)
        return None

    def served(self):
        """The bytes-served metric's lines."""
        return [l for l in urllib.request.urlopen(f"http://{self.probes}/metrics").read().decode()
                .splitlines() if l.startswith("ocimodel_s3_bytes_served_total")]

    def runai_env(self, work):
        """What an engine's Run:ai streamer is given to read this sidecar (T0: its start)."""
        return {"PATH": "/usr/bin:/bin", "HOME": str(work), "AWS_ENDPOINT_URL": f"http://{self.s3}",
                "AWS_ACCESS_KEY_ID": "anything", "AWS_SECRET_ACCESS_KEY": "anything",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0", "RUNAI_STREAMER_S3_TIMEOUT": "600",
                "T0": repr(self.t0)}


def safetensors_streamer(ocimodel, uri, work, pull_env, model, python, nice):
    """A fresh sidecar, and RUNAI (the Run:ai streamer's SafetensorsStreamer, with torch) started
    with it: when the first and the last tensor came, and that every tensor equals the file's."""
    with Sidecar(ocimodel, uri, work, pull_env, "torch") as side:
        wait_port(side.s3)
        r = subprocess.run([python, "-c", RUNAI, "s3://models/", str(model)], env=side.runai_env(work),
                           capture_output=True, text=True, preexec_fn=lambda: os.nice(nice))
        if r.returncode != 0:
            raise SystemExit(f"SafetensorsStreamer failed: {r.stdout}{r.stderr}")
        return json.loads(r.stdout.strip().splitlines()[-1])


def sidecar_alone(ocimodel, uri, work, pull_env):
    """Seconds until a streaming sidecar that nobody reads from is ready (installed)."""
    try:
        with Sidecar(ocimodel, uri, work, pull_env, "quiet") as side:
            return side.wait_ready() or sys.exit("the streaming sidecar did not get ready")
    finally:
        shutil.rmtree(work / "quiet", ignore_errors=True)


def stream_with_runai(ocimodel, uri, work, pull_env, model, names, lib, rng, nice):
    """A fresh sidecar, and tests/support/runai_reader.py started with it on every file (as vLLM reads
    once it has listed the bucket): when each file and all were in the client's hands."""
    with Sidecar(ocimodel, uri, work, pull_env, "runai") as side:
        wait_port(side.s3)
        files = [f"{n}:{(model / n).stat().st_size}" for n in names]
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        reader = subprocess.Popen([sys.executable, str(REPO / "tests/support/runai_reader.py"), lib, "models",
                                   str(rng), *files], env=side.runai_env(work), stdout=subprocess.PIPE,
                                  text=True, preexec_fn=lambda: os.nice(nice))
        got = json.loads(reader.communicate()[0])
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        got["cpu"] = {"sidecar": cpu_seconds(side.proc.pid),
                      "reader": after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime}
        got["served"] = side.served()
        assert not got["errors"], got["errors"]
        for n in names:
            assert got["hashes"][n] == sha256(model / n), f"{n}: wrong bytes"
        return got


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(addr, limit=30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(tuple(addr.rsplit(":", 1)), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listens on {addr}")


def command_args(argv):
    """`argv` without `--out FILE` (where the results went is not how they were measured)."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            kept.append(a)
    return kept


def renice(pid, niceness):
    """Every thread of `pid` at `niceness` (on Linux a process's threads each have their own; the
    ones it starts later take their starter's)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.setpriority(os.PRIO_PROCESS, int(task.name), niceness)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shard-size", default="128M")
    ap.add_argument("--rate", default="16M")
    ap.add_argument("--connect-delay", type=float, default=0.02)
    ap.add_argument("--rtt", type=float, default=0.02)
    ap.add_argument("--range", default="8M")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--binary", help="an ocimodel binary (default: build the release one)")
    ap.add_argument("--runai-python", help="a Python with torch and runai-model-streamer-s3")
    ap.add_argument("--runai-lib", default=str(REPO / "target/test-deps/runai-model-streamer-0.17.1"),
                    help="the Run:ai streamer's wheels installed with --no-deps --target (as "
                         "tests/streaming.rs leaves them); its S3 client reads in a third run")
    ap.add_argument("--runai-nice", type=int, default=0,
                    help="run that client at this niceness: on a machine with few CPUs, 19 lets the "
                         "pull have the CPUs it needs first, as on a node where the engine has its own")
    ap.add_argument("--far-nice", type=int, default=0,
                    help="run the registry and the link emulator at this niceness (negative: first "
                         "to the CPUs; they stand for machines off the node, whose CPUs neither the "
                         "pull nor the reader share)")
    ap.add_argument("--work", default="/tmp/ocimodel-bench-streaming")
    ap.add_argument("--out", default=str(REPO / "bench/RESULTS-streaming.md"))
    args = ap.parse_args()
    shard_size = wan.parse_rate(args.shard_size)
    rate = wan.parse_rate(args.rate)
    rng = wan.parse_rate(args.range)
    work = suite.fresh_dir(args.work)
    ocimodel = Path(args.binary).resolve() if args.binary else suite.release_binary()
    reg = suite.Registry(work)
    # The link runs in its own process: in this one, its relay threads would share the GIL with
    # the boto3 reader, and a busy reader would slow the "network" (a real link is not slowed by
    # its client's interpreter).
    link = subprocess.Popen([sys.executable, str(REPO / "bench/wan.py"), "--upstream", reg.addr,
                             "--rate", str(rate), "--connect-delay", str(args.connect_delay),
                             "--rtt", str(args.rtt)], stdout=subprocess.PIPE, text=True)
    if args.far_nice:
        for pid in (reg.proc.pid, link.pid):
            renice(pid, args.far_nice)
    model = work / "model"
    make_model(model, shard_size)
    names = sorted(p.name for p in model.iterdir())
    total = sum((model / n).stat().st_size for n in names)
    env = {"PATH": "/usr/bin:/bin", "OCIMODEL_INSECURE_REGISTRIES": reg.addr}
    out = subprocess.run([str(ocimodel), "push", str(model), f"{reg.addr}/stream/llm:v1", "--format", "oras"],
                         env=env, check=True, capture_output=True, text=True)
    ref = out.stdout.split()[0]
    far = link.stdout.readline().split()[-1]
    pull_env = {"PATH": "/usr/bin:/bin", "OCIMODEL_INSECURE_REGISTRIES": far, "OCIMODEL_LOG": "warn"}
    # Settings to compare (OCIMODEL_CONCURRENCY, OCIMODEL_RANGE_CONNECTIONS, ...) apply to both runs.
    pull_env.update({k: v for k, v in os.environ.items() if k.startswith("OCIMODEL_") and k not in pull_env})
    uri = f"{far}/stream/llm@{ref}"
    results = {}
    runai = None
    try:
        # 1. The pull alone.
        dest = work / "alone" / "models"
        t0 = time.monotonic()
        subprocess.run([str(ocimodel), uri, str(dest)], env=pull_env, check=True)
        results["pull"] = time.monotonic() - t0
        print(f"pull alone: {results['pull']:.2f}s", flush=True)
        if args.runai_python:
            # Today's way: the engine loads the installed files once the pull is done.
            r = subprocess.run([args.runai_python, "-c", RUNAI, str(dest), str(model)],
                               env={"PATH": "/usr/bin:/bin", "HOME": str(work), "T0": repr(t0)},
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"SafetensorsStreamer on local files failed: {r.stdout}{r.stderr}")
            results["local_load"] = json.loads(r.stdout.strip().splitlines()[-1])
            print("pull, then SafetensorsStreamer on the files:", results["local_load"], flush=True)
        shutil.rmtree(work / "alone")

        # 1b. The streaming sidecar with no reader: its own cost, apart from a reader's CPU.
        results["sidecar_alone"] = sidecar_alone(ocimodel, uri, work, pull_env)
        print(f"streaming sidecar, no reader: {results['sidecar_alone']:.2f}s", flush=True)

        # 2. The sidecar and a reader started together.
        # Where the CPU goes while the sidecar pulls and serves and the reader reads: on a machine
        # with few CPUs the reader's share comes out of the pull's (and the registry's and link's).
        cpu0 = {"registry": cpu_seconds(reg.proc.pid), "link": cpu_seconds(link.pid),
                "reader": time.process_time(), "idle": int(open("/proc/stat").readline().split()[4])}
        with Sidecar(ocimodel, uri, work, pull_env, "sidecar") as side:
            installed = {}
            # When the sidecar's pull (verify + install) ended: what is left after it is the tail.
            watch = threading.Thread(target=lambda: installed.update(at=side.wait_ready()), daemon=True)
            watch.start()
            got = read_everything(side.s3, "models", rng, args.threads, shard_name(1), side.t0)
            results["cpu"] = {
                "sidecar": cpu_seconds(side.proc.pid),
                "reader (boto3)": time.process_time() - cpu0["reader"],
                "registry": cpu_seconds(reg.proc.pid) - cpu0["registry"],
                "link emulator": cpu_seconds(link.pid) - cpu0["link"],
                "idle": (int(open("/proc/stat").readline().split()[4]) - cpu0["idle"]) / os.sysconf("SC_CLK_TCK"),
            }
            for n in names:
                assert got["hashes"].get(n) == sha256(model / n), f"{n}: wrong bytes"
            results["reader"] = got["done"]
            results["first_byte"] = got["first_byte"]
            results["key_done"] = got["key_done"]
            watch.join(120)
            results["installed"] = installed["at"]
            results["served"] = side.served()
            print(results, flush=True)

        # 3. The sidecar and the Run:ai streamer's own S3 client started together.
        if Path(args.runai_lib, "runai_model_streamer").is_dir():
            results["runai"] = stream_with_runai(ocimodel, uri, work, pull_env, model, names,
                                                 args.runai_lib, rng, args.runai_nice)
            print("runai client:", {k: v for k, v in results["runai"].items() if k != "hashes"},
                  flush=True)

        # 4. The sidecar and vLLM's loader path with torch (SafetensorsStreamer) started together.
        if args.runai_python:
            runai = safetensors_streamer(ocimodel, uri, work, pull_env, model, args.runai_python,
                                         args.runai_nice)
            print("SafetensorsStreamer:", runai, flush=True)
    finally:
        link.terminate()
        link.wait()
        reg.stop()

    pull, reader, first = results["pull"], results["reader"], results["first_byte"]
    binary = "release" if not args.binary else shlex.quote(args.binary)
    lines = [
        "# Streaming through the S3 endpoint",
        "",
        f"`python3 bench/streaming.py {shlex.join(command_args(sys.argv[1:]))}` "
        f"({binary} binary) on {suite.machine()}. "
        "Other load on the machine is not controlled: the ratios (both runs on the same link, one after "
        "the other) are what counts.",
        "",
        f"Model: config.json, tokenizer.json, model.safetensors.index.json and {SHARDS} safetensors shards of "
        f"{shard_size // MiB} MiB ({total / MiB:.0f} MiB in all), one ORAS layer per file, pulled by digest from "
        f"docker-registry behind `bench/wan.py` ({rate // MiB} MiB/s per connection, {args.connect_delay * 1000:.0f} ms "
        f"per connection, {args.rtt * 1000:.0f} ms per request). The reader is boto3, {args.threads} threads, "
        f"{rng // MiB} MiB ranges, started with the sidecar.",
        "",
        "| measurement | seconds | ratio to the pull alone | target |",
        "|---|---|---|---|",
        f"| pull alone (`ocimodel REF DEST`) | {pull:.2f} | 1.00 | |",
        f"| streaming sidecar, no reader: installed (`/readyz`) | {results['sidecar_alone']:.2f} | "
        f"{results['sidecar_alone'] / pull:.2f} | |",
        f"| sidecar + boto3: every byte in the reader's hands | {reader:.2f} | {reader / pull:.2f} | <= 1.15 "
        f"{'(met)' if reader / pull <= 1.15 else '(**missed**)'} |",
        f"| sidecar + boto3: first byte of the first shard | {first:.2f} | {first / pull:.2f} | < 0.50 "
        f"{'(met)' if first / pull < 0.5 else '(**missed**)'} |",
        f"| sidecar + boto3: the sidecar's install done (`/readyz`) | {results['installed']:.2f} | "
        f"{results['installed'] / pull:.2f} | |",
        "",
        "Each file in the reader's hands at (s): " + ", ".join(f"{k} {v:.2f}" for k, v in results["key_done"].items()) + ".",
        "",
        "CPU seconds while the sidecar pulled and the reader read ("
        + ", ".join(f"{k} {v:.2f}" for k, v in results["cpu"].items()) + f"; {os.cpu_count()} CPUs).",
        "",
        f"Bytes served (metric): `{'; '.join(results['served'])}`.",
        "",
    ]
    if "runai" in results:
        r = results["runai"]
        done, first_shard = r["done"], r["first"][shard_name(1)]
        lines += [
            f"The Run:ai Model Streamer's own S3 client (`tests/support/runai_reader.py`, runai-model-streamer-s3 "
            f"0.17.1, every file asked for at once in {rng // MiB} MiB ranges, started with a fresh sidecar"
            f"{f', at niceness {args.runai_nice}' if args.runai_nice else ''}): "
            f"every byte at {done:.2f} s (**{done / pull:.2f}×** the pull alone), the first range of the "
            f"first shard at {first_shard:.2f} s ({first_shard / pull:.2f}×); CPU seconds: sidecar "
            f"{r['cpu']['sidecar']:.2f}, reader {r['cpu']['reader']:.2f}; bytes served "
            f"`{'; '.join(r['served'])}`.", ""]
    if runai:
        lines += [f"vLLM's loader path with torch (`SafetensorsStreamer` of runai-model-streamer 0.17.1, "
                  f"{args.runai_python}; listing the bucket, then streaming every shard), started with a fresh "
                  f"sidecar{f', at niceness {args.runai_nice}' if args.runai_nice else ''}: {runai['tensors']} "
                  f"tensors of {runai['files']} files, each equal to the file's; torch and the streamer imported at "
                  f"{runai['imported']:.2f} s, the first tensor at {runai['first']:.2f} s "
                  f"({runai['first'] / pull:.2f}×), the last at {runai['done']:.2f} s (**{runai['done'] / pull:.2f}×** "
                  "the pull alone)."]
        if "local_load" in results:
            local = results["local_load"]
            lines += [f"Today's way for comparison, the same script on the installed files once the pull alone "
                      f"was done (from the pull's start): the first tensor at {local['first']:.2f} s, the last at "
                      f"{local['done']:.2f} s (**{local['done'] / pull:.2f}×**)."]
        lines += [""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
