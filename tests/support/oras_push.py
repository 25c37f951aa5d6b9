#!/usr/bin/env python3
"""Push files as an ORAS artifact with the oras Python SDK, shaped like `oras push`.

Used by the integration tests as an independent client. The SDK names a layer
by its basename and writes no artifactType, so this script sets titles through
the SDK's own annotation file and adds artifactType (and the empty config
descriptor `oras push` uses) when the manifest is uploaded.

usage: oras_push.py REGISTRY REPO:TAG SPEC.json
SPEC: {"artifactType": str, "annotations": {..},
       "files": [{"path": local, "title": str, "mediaType": str, "annotations": {..}}]}
Env: ORAS_USER / ORAS_PASSWORD for Basic auth. Prints the manifest digest.
"""
import hashlib
import json
import os
import sys
import tempfile

import oras.client

EMPTY = {
    "mediaType": "application/vnd.oci.empty.v1+json",
    "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    "size": 2,
    "data": "e30=",
}


def main():
    registry, target, spec_path = sys.argv[1:4]
    spec = json.load(open(spec_path))
    client = oras.client.OrasClient(hostname=registry, insecure=True)
    if os.environ.get("ORAS_USER"):
        client.login(
            username=os.environ["ORAS_USER"],
            password=os.environ["ORAS_PASSWORD"],
            hostname=registry,
            insecure=True,
        )
    remote = client
    uploaded = {}

    original_upload_manifest = remote.upload_manifest

    def upload_manifest(manifest, container):
        if spec.get("artifactType"):
            manifest["artifactType"] = spec["artifactType"]
            manifest["config"] = dict(EMPTY)
        body = json.dumps(manifest, separators=(",", ":")).encode()
        uploaded["digest"] = "sha256:" + hashlib.sha256(body).hexdigest()
        uploaded["manifest"] = manifest
        return original_upload_manifest(manifest, container)

    remote.upload_manifest = upload_manifest

    annotations = {}
    files = []
    for f in spec["files"]:
        a = {"org.opencontainers.image.title": f["title"]}
        a.update(f.get("annotations", {}))
        annotations[f["path"]] = a
        files.append(f["path"] + (":" + f["mediaType"] if f.get("mediaType") else ""))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as af:
        json.dump(annotations, af)
    # The empty config blob must exist in the registry when artifactType is set.
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as cf:
        cf.write(b"{}")
    try:
        remote.push(
            target=f"{registry}/{target}",
            files=files,
            annotation_file=af.name,
            manifest_annotations=spec.get("annotations") or None,
            manifest_config=cf.name + ":application/vnd.oci.empty.v1+json",
            disable_path_validation=True,
            quiet=True,
        )
    finally:
        os.unlink(af.name)
        os.unlink(cf.name)
    # The registry digests the bytes it received; ask it rather than guess.
    manifest = remote.get_manifest(f"{registry}/{target}")
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
