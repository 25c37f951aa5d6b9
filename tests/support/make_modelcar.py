#!/usr/bin/env python3
"""Build a KServe "modelcar" container image as an OCI layout, independently of ocimodel.

usage: make_modelcar.py OUTDIR TAG MODEL_FILE [--evil] [--index] [--no-zstd]

Layers (python tarfile; gzip from the gzip module; zstd from the zstd CLI):
  1. tar       models/1/model.onnx (MODEL_FILE), models/config.json, models/old.txt,
               models/run.sh (0755), models/private.bin (0600), models/tokenizer/vocab.txt,
               etc/hostname (outside /models)
  2. tar+gzip  models/.wh.old.txt (whiteout), models/latest -> 1/model.onnx,
               models/abs -> /models/config.json, models/setuid.bin (04755)
  3. tar+zstd  models/tokenizer/.wh..wh..opq (opaque), models/tokenizer/merges.txt,
               models/extra/weights.bin (64 KiB), models/hard.onnx (hard link to layer 1's file)
--evil adds a fourth, uncompressed layer with a '../escape' entry.
--no-zstd gzips layer 3 instead (Docker schema2 has no zstd media type).
--index tags an image index instead: linux/amd64 -> the image above, linux/arm64 -> an image
whose only file is models/arch.txt ("arm64\n"). Prints the tagged digest.
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

CONFIG_JSON = b'{"name": "mnist", "version": 1}\n'
WEIGHTS = bytes((i * 7 + 3) % 251 for i in range(65536))


def tar_bytes(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for e in entries:
            info = tarfile.TarInfo(e["name"])
            info.mtime = 1700000000
            info.mode = e.get("mode", 0o644)
            kind = e.get("type", "file")
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = e.get("mode", 0o755)
                t.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = e["target"]
                t.addfile(info)
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = e["target"]
                t.addfile(info)
            else:
                data = e["data"]
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest


def main():
    out, tag, model_file = sys.argv[1:4]
    evil = "--evil" in sys.argv[4:]
    index = "--index" in sys.argv[4:]
    no_zstd = "--no-zstd" in sys.argv[4:]
    os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)
    model = open(model_file, "rb").read()

    l1 = tar_bytes([
        {"name": "etc/hostname", "data": b"modelcar\n"},
        {"name": "models", "type": "dir"},
        {"name": "models/1", "type": "dir", "mode": 0o700},
        {"name": "models/1/model.onnx", "data": model},
        {"name": "models/config.json", "data": CONFIG_JSON},
        {"name": "models/old.txt", "data": b"removed by layer 2\n"},
        {"name": "models/run.sh", "data": b"#!/bin/sh\necho hi\n", "mode": 0o755},
        {"name": "models/private.bin", "data": b"secret-ish\n", "mode": 0o600},
        {"name": "models/tokenizer", "type": "dir"},
        {"name": "models/tokenizer/vocab.txt", "data": b"hidden by opaque whiteout\n"},
    ])
    l2 = tar_bytes([
        {"name": "models/.wh.old.txt", "data": b""},
        {"name": "models/latest", "type": "symlink", "target": "1/model.onnx"},
        {"name": "models/abs", "type": "symlink", "target": "/models/config.json"},
        {"name": "models/setuid.bin", "data": b"suid\n", "mode": 0o4755},
    ])
    l3 = tar_bytes([
        {"name": "models/tokenizer", "type": "dir"},
        {"name": "models/tokenizer/.wh..wh..opq", "data": b""},
        {"name": "models/tokenizer/merges.txt", "data": b"a b\n"},
        {"name": "models/extra", "type": "dir"},
        {"name": "models/extra/weights.bin", "data": WEIGHTS},
        {"name": "models/hard.onnx", "type": "hardlink", "target": "models/1/model.onnx"},
    ])
    layers = [
        (l1, l1, "application/vnd.oci.image.layer.v1.tar"),
        (l2, gzip.compress(l2, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"),
        (l3, gzip.compress(l3, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip") if no_zstd else
        (l3, subprocess.run(["zstd", "-q", "-c", "-3"], input=l3, check=True,
                            stdout=subprocess.PIPE).stdout,
         "application/vnd.oci.image.layer.v1.tar+zstd"),
    ]
    if evil:
        bad = tar_bytes([{"name": "../escape", "data": b"escaped\n"}])
        layers.append((bad, bad, "application/vnd.oci.image.layer.v1.tar"))

    amd64, amd64_size = image(out, layers)
    tagged = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
              "digest": amd64, "size": amd64_size}
    if index:
        arm = tar_bytes([{"name": "models/arch.txt", "data": b"arm64\n"}])
        arm64, arm64_size = image(out, [(arm, arm, "application/vnd.oci.image.layer.v1.tar")], "arm64")
        body = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": [
                               {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "digest": arm64, "size": arm64_size,
                                "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
                               dict(tagged, platform={"architecture": "amd64", "os": "linux"}),
                           ]}).encode()
        tagged = {"mediaType": "application/vnd.oci.image.index.v1+json",
                  "digest": write_blob(out, body), "size": len(body)}
    with open(os.path.join(out, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [
            dict(tagged, annotations={"org.opencontainers.image.ref.name": tag})]}, f)
    print(tagged["digest"])


def image(out, layers, arch="amd64"):
    descs, diff_ids = [], []
    for raw, blob, mt in layers:
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        descs.append({"mediaType": mt, "digest": write_blob(out, blob), "size": len(blob)})
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": write_blob(out, config), "size": len(config)},
        "layers": descs,
    }).encode()
    return write_blob(out, manifest), len(manifest)


if __name__ == "__main__":
    main()
