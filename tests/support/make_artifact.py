#!/usr/bin/env python3
"""Build an OCI artifact as an OCI image layout, exactly as a format's spec shows it.

Used where no independent client for the format installs here (KitOps, Docker model,
legacy ModelPack, ORAS directories, signatures, unknown types). Layers are built with
python's tarfile/gzip and the zstd CLI; the layout is then pushed with skopeo.

usage: make_artifact.py OUTDIR SPEC.json      (prints the manifest digest)
SPEC: {"tag": "v1", "artifactType": str?, "annotations": {..}?, "subject": descriptor?,
       "config": {"mediaType": str, "json": any?},          # no json: the 2-byte empty blob
       "layers": [{"mediaType": str, "annotations": {..}?,
                   "data": str | "file": path |                          # raw bytes
                   "tar": [{"name", "data"|"file", "type"?: "dir"|"file"}],
                   "compress": "gzip"|"zstd"?,
                   "oras_dir": true?}]}                                 # add io.deis.oras.content.*
In config JSON, the string "$digest:N" becomes layer N's digest.
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile


def tar_bytes(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for e in entries:
            info = tarfile.TarInfo(e["name"])
            info.mtime = 0
            info.uid, info.gid = 1000, 0
            if e.get("type") == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                t.addfile(info)
                continue
            data = open(e["file"], "rb").read() if "file" in e else e["data"].encode()
            info.mode = 0o644
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest


def substitute(value, digests):
    if isinstance(value, str) and value.startswith("$digest:"):
        return digests[int(value.split(":", 1)[1])]
    if isinstance(value, list):
        return [substitute(v, digests) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, digests) for k, v in value.items()}
    return value


def main():
    out, spec_path = sys.argv[1:3]
    spec = json.load(open(spec_path))
    os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)
    layers, digests = [], []
    for l in spec["layers"]:
        annotations = dict(l.get("annotations", {}))
        if "tar" in l:
            raw = tar_bytes(l["tar"])
            if l.get("oras_dir"):
                annotations["io.deis.oras.content.digest"] = "sha256:" + hashlib.sha256(raw).hexdigest()
                annotations["io.deis.oras.content.unpack"] = "true"
            if l.get("compress") == "gzip":
                blob = gzip.compress(raw, mtime=0)
            elif l.get("compress") == "zstd":
                blob = subprocess.run(["zstd", "-q", "-c"], input=raw, check=True,
                                      stdout=subprocess.PIPE).stdout
            else:
                blob = raw
        elif "file" in l:
            blob = open(l["file"], "rb").read()
        else:
            blob = l["data"].encode()
        digest = write_blob(out, blob)
        digests.append(digest)
        desc = {"mediaType": l["mediaType"], "digest": digest, "size": len(blob)}
        if annotations:
            desc["annotations"] = annotations
        layers.append(desc)
    cfg = spec["config"]
    if "json" in cfg:
        config = json.dumps(substitute(cfg["json"], digests)).encode()
    else:
        config = b"{}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": cfg["mediaType"], "digest": write_blob(out, config), "size": len(config)},
        "layers": layers,
    }
    if spec.get("artifactType"):
        manifest["artifactType"] = spec["artifactType"]
    if spec.get("annotations"):
        manifest["annotations"] = spec["annotations"]
    if spec.get("subject"):
        manifest["subject"] = spec["subject"]
    body = json.dumps(manifest).encode()
    mdigest = write_blob(out, body)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": mdigest, "size": len(body),
            "annotations": {"org.opencontainers.image.ref.name": spec.get("tag", "v1")}}]}, f)
    print(mdigest)


if __name__ == "__main__":
    main()
