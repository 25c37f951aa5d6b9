#!/usr/bin/env python3
"""What tests/manifests.rs checks about the manifests, read out of them as JSON.

usage: manifest_facts.py MANIFEST_DIR
Prints {"kustomize": {FOLDER: [resource, ...]}, "applied": [kind/name, ...] (what
`kubectl apply -k MANIFEST_DIR` creates, following resources into folders),
"objects": [{"file", "kind", "name"}], "digests": [every sha256:<64 hex> in any
file's text], "models": [{"file", "object", "ref", "require_digest", "by"}] (each model
reference with what installs it: the ClusterStorageContainer KServe picks by prefix
and workload type, or the container whose args name it), "ovms": [{"file", "object",
"refs"}] (OpenVINO Model Server, a container run with --model_path or an
InferenceService on runtime kserve-ovms, with the models installed for it),
"hostpaths": [{"file", "object", "path", "type", "writable"}] (hostPath volumes an
ocimodel container mounts)}.
"""
import glob
import json
import os
import re
import sys

import yaml

root = sys.argv[1]
paths = sorted(glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True))
docs = []  # (file, doc)
digests, kustomize = set(), {}
for p in paths:
    rel = os.path.relpath(p, root)
    text = open(p).read()
    digests.update(re.findall(r"sha256:[0-9a-f]{64}", text))
    if os.path.basename(p) == "kustomization.yaml":
        kustomize[os.path.dirname(rel) or "."] = yaml.safe_load(text).get("resources", [])
        continue
    if os.path.basename(p) == "kustomizeconfig.yaml":
        continue
    docs += [(rel, d) for d in yaml.safe_load_all(text) if d]

by_file = {}
for rel, d in docs:
    by_file.setdefault(rel, []).append(d)


def applied(folder):
    out = []
    for r in kustomize.get(folder, []):
        sub = os.path.normpath(os.path.join(folder, r))
        if sub in kustomize:
            out += applied(sub)
        else:
            out += [f"{d['kind']}/{d['metadata']['name']}" for d in by_file.get(sub, [])]
    return out


def env_true(container, name):
    return any(e.get("name") == name and e.get("value") == "true" for e in container.get("env", []))


cscs = [d for _, d in docs if d["kind"] == "ClusterStorageContainer"]


def csc_for(uri, workload):
    """KServe's choice: a CSC of this workload type whose prefix the URI starts with."""
    best = None
    for c in cscs:
        if c["spec"].get("workloadType", "initContainer") != workload:
            continue
        for f in c["spec"].get("supportedUriFormats", []):
            if uri.startswith(f.get("prefix", "\0")) and (best is None or len(f["prefix"]) > best[0]):
                best = (len(f["prefix"]), c)
    return best[1] if best else None


def pod_specs(d):
    if d["kind"] == "Pod":
        return [d["spec"]]
    if d["kind"] == "LLMInferenceService":
        return [d["spec"][k] for k in ("template", "worker") if k in d["spec"]]
    return []


def ocimodel_containers(spec):
    return [c for c in spec.get("initContainers", []) + spec.get("containers", [])
            if "ocimodel" in c.get("image", "")]


def refs_of(container):
    return [a for a in container.get("args", []) if "://" in a]


models, ovms, hostpaths = [], [], []
for rel, d in docs:
    name = f"{d['kind']}/{d['metadata']['name']}"
    uris = []
    if d["kind"] == "InferenceService":
        p = d["spec"]["predictor"]
        uris = [p["model"]["storageUri"]] if "storageUri" in p.get("model", {}) else []
        uris += [s["uri"] for s in p.get("storageUris", [])]
        for u in uris:
            c = csc_for(u, "initContainer")
            models.append({"file": rel, "object": name, "ref": u,
                           "by": c and f"ClusterStorageContainer/{c['metadata']['name']}",
                           "require_digest": bool(c and env_true(c["spec"]["container"], "OCIMODEL_REQUIRE_DIGEST"))})
        if p.get("model", {}).get("runtime") == "kserve-ovms":
            ovms.append({"file": rel, "object": name, "refs": uris})
    if d["kind"] == "LocalModelCache":
        u = d["spec"]["sourceModelUri"]
        c = csc_for(u, "localModelDownloadJob")
        models.append({"file": rel, "object": name, "ref": u,
                       "by": c and f"ClusterStorageContainer/{c['metadata']['name']}",
                       "require_digest": bool(c and env_true(c["spec"]["container"], "OCIMODEL_REQUIRE_DIGEST"))})
    for spec in pod_specs(d):
        installed = []
        for c in ocimodel_containers(spec):
            for u in refs_of(c):
                installed.append(u)
                models.append({"file": rel, "object": name, "ref": u, "by": f"container {c['name']}",
                               "require_digest": env_true(c, "OCIMODEL_REQUIRE_DIGEST")})
            for m in c.get("volumeMounts", []):
                for v in spec.get("volumes", []):
                    if v["name"] == m["name"] and "hostPath" in v:
                        hostpaths.append({"file": rel, "object": name, "path": v["hostPath"]["path"],
                                          "type": v["hostPath"].get("type", ""),
                                          "writable": not m.get("readOnly", False)})
        for c in spec.get("containers", []):
            if "--model_path" in c.get("args", []):
                ovms.append({"file": rel, "object": name, "refs": installed})

print(json.dumps({
    "kustomize": kustomize,
    "applied": applied("."),
    "objects": [{"file": rel, "kind": d["kind"], "name": d["metadata"]["name"]} for rel, d in docs],
    "digests": sorted(digests),
    "models": models,
    "ovms": ovms,
    "hostpaths": hostpaths,
}, indent=1))
