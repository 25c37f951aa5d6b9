#!/usr/bin/env python3
"""What checking an OpenSSF model signature costs, against checking it afterwards with the tool.

    python3 bench/model_signature.py             # 512 MiB model, 3 rounds; RESULTS-model-signature.md
    python3 bench/model_signature.py --size 64M --rounds 1

A model of three incompressible files (half, a quarter and a quarter of --size) is signed with
`model_signing sign key` (model-signing 1.1.1, files/sha256), pushed as a modelcar (one tar layer)
and as ModelPack (one raw layer a file) to docker-registry on loopback, and installed by digest:
- ocimodel with no model signature policy (the baseline);
- ocimodel with `OCIMODEL_MODEL_KEY` (the staged tree checked before the swap);
- ocimodel with no policy, then `model_signing verify key` on the installed tree (what a user
  would do without ocimodel's check; model_signing reads every file again).
Peers alternate within each round, on two CPUs and pinned to one (`taskset -c 0`).
"""
import argparse
import os
import shlex
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
    ap.add_argument("--work", default="/tmp/ocimodel-bench-model-signature")
    ap.add_argument("--out", default=str(REPO / "bench/RESULTS-model-signature.md"))
    args = ap.parse_args()
    size = wan.parse_rate(args.size)
    work = suite.fresh_dir(args.work)
    ocimodel = suite.release_binary()
    reg = suite.Registry(work)
    times = {}
    try:
        model = work / "model"
        (model / "weights").mkdir(parents=True)
        suite.keystream(model / "weights/part-1.bin", size // 2, "oms-1")
        suite.keystream(model / "weights/part-2.bin", size // 4, "oms-2")
        suite.keystream(model / "extra.bin", size // 4, "oms-3")
        suite.sh(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(work / "k.key")])
        suite.sh(["openssl", "ec", "-in", str(work / "k.key"), "-pubout", "-out", str(work / "k.pub")],
                 stderr=subprocess.DEVNULL)
        suite.sh([sys.executable, "-m", "model_signing", "sign", "key", "--private_key", str(work / "k.key"),
                  "--signature", str(model / "model.sig"), str(model)], stdout=subprocess.DEVNULL)
        env = {"PATH": "/usr/bin:/bin", "OCIMODEL_INSECURE_REGISTRIES": reg.addr, "OCIMODEL_LOG": "warn"}
        refs = {}
        for fmt in ("modelcar", "modelpack"):
            out = subprocess.run([str(ocimodel), "push", str(model), f"{reg.addr}/bench/{fmt}:v1", "--format", fmt],
                                 env=env, check=True, capture_output=True, text=True)
            refs[fmt] = f"{reg.addr}/bench/{fmt}@{out.stdout.split()[0]}"
        dest = work / "dest"
        pull = lambda fmt: shlex.join([str(ocimodel), refs[fmt], str(dest)])  # noqa: E731
        tool = shlex.join([sys.executable, "-m", "model_signing", "verify", "key", "--public_key",
                           str(work / "k.pub"), "--signature", str(dest / "model.sig"),
                           "--ignore-paths", str(dest / ".ocimodel.json"), "--ignore-paths",
                           str(dest / ".ocimodel"), str(dest)])
        keyed = {**env, "OCIMODEL_MODEL_KEY": str(work / "k.pub")}
        peers = {}
        for fmt in ("modelcar", "modelpack"):
            peers[(fmt, "ocimodel, no model policy")] = (pull(fmt), env)
            peers[(fmt, "ocimodel, OCIMODEL_MODEL_KEY")] = (pull(fmt), keyed)
            peers[(fmt, "ocimodel, then model_signing verify")] = (f"{pull(fmt)} && {tool}",
                                                                   {**env, "PATH": os.environ["PATH"]})
        for cpus in ("2 CPUs", "1 CPU"):
            for r in range(args.rounds):
                for key, (cmd, penv) in peers.items():
                    if cpus == "1 CPU":
                        cmd = f"taskset -c 0 bash -c {shlex.quote(cmd)}"
                    shutil.rmtree(dest, ignore_errors=True)
                    subprocess.run(["sync"], check=True)
                    wall, _cpu, _rss = suite.timed(cmd, penv)
                    times.setdefault((cpus, *key), []).append(wall)
                    print(cpus, *key, f"{wall:.2f}", flush=True)
        shutil.rmtree(dest, ignore_errors=True)
    finally:
        reg.stop()

    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        "# Model signatures: the cost of checking one",
        "",
        f"`python3 bench/model_signature.py` on {suite.machine()}. A {size // MiB} MiB model (three "
        f"incompressible files) signed with `model_signing sign key` (files/sha256), pulled by digest "
        f"from docker-registry on loopback. Median of {args.rounds} interleaved rounds; one CPU is "
        f"`taskset -c 0` on the peer.",
        "",
        "| format | peer | 2 CPUs (s) | 1 CPU (s) | ÷ no policy, 2 CPUs | ÷ no policy, 1 CPU |",
        "|---|---|---|---|---|---|",
    ]
    for (fmt, name) in peers:
        two, one = med[("2 CPUs", fmt, name)], med[("1 CPU", fmt, name)]
        base2 = med[("2 CPUs", fmt, "ocimodel, no model policy")]
        base1 = med[("1 CPU", fmt, "ocimodel, no model policy")]
        lines.append(f"| {fmt} | {name} | {two:.2f} | {one:.2f} | {two / base2:.2f}× | {one / base1:.2f}× |")
    lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
