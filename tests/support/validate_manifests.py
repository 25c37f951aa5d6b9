#!/usr/bin/env python3
"""Validate every YAML document under a manifests directory, recursively.

Kubernetes core objects with the `kubernetes-validate` package (strict: unknown fields fail);
KServe objects against KServe's own CRD schemas (tests/fixtures/kserve-crds, or $KSERVE_CRDS), made
strict the way the API server prunes: an object schema with properties and no
x-kubernetes-preserve-unknown-fields accepts no other keys. Every kustomization.yaml found must name
resources that exist (a file, or a folder with its own kustomization.yaml), and list every other
manifest in its folder; a folder without one (manifests/examples) is validated file by file.

usage: validate_manifests.py MANIFEST_DIR CRD_DIR   (prints one line per object, named by its path
under MANIFEST_DIR; exit 1 on error)
"""
import glob
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

KUSTOMIZE_FILES = ("kustomization.yaml", "kustomizeconfig.yaml")


def strict(schema):
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (schema.get("type") == "object" and "properties" in schema
                and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_schemas(crd_dir):
    out = {}
    for path in glob.glob(os.path.join(crd_dir, "*.yaml")):
        crd = yaml.safe_load(open(path))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            out[(f"{group}/{v['name']}", kind)] = strict(v["schema"]["openAPIV3Schema"])
    return out


def check_kustomization(manifest_dir, folder):
    """Problems with folder/kustomization.yaml, as lines."""
    rel = os.path.relpath(os.path.join(folder, "kustomization.yaml"), manifest_dir)
    k = yaml.safe_load(open(os.path.join(folder, "kustomization.yaml")))
    problems = []
    resources = k.get("resources") or []
    if not resources:
        problems.append(f"FAIL {rel}: no resources")
    for r in resources + (k.get("configurations") or []):
        path = os.path.join(folder, r)
        if os.path.isdir(path):
            if not os.path.exists(os.path.join(path, "kustomization.yaml")):
                problems.append(f"FAIL {rel}: {r}/ has no kustomization.yaml")
        elif not os.path.isfile(path):
            problems.append(f"FAIL {rel}: {r} does not exist")
    here = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.yaml"))
                  if os.path.basename(p) not in KUSTOMIZE_FILES)
    unlisted = [f for f in here if f not in resources]
    if unlisted:
        problems.append(f"FAIL {rel}: resources {sorted(resources)} leave out {unlisted}")
    return problems


def main():
    manifest_dir, crd_dir = sys.argv[1:3]
    schemas = crd_schemas(crd_dir)
    if not schemas:
        sys.exit(f"no CRDs found in {crd_dir}")
    failed = False
    paths = sorted(glob.glob(os.path.join(manifest_dir, "**", "*.yaml"), recursive=True))
    if not paths:
        sys.exit(f"no manifests in {manifest_dir}")
    for folder in sorted({os.path.dirname(p) for p in paths}):
        if os.path.exists(os.path.join(folder, "kustomization.yaml")):
            for line in check_kustomization(manifest_dir, folder):
                print(line)
                failed = True
    for path in paths:
        if os.path.basename(path) in KUSTOMIZE_FILES:
            continue
        name = os.path.relpath(path, manifest_dir)
        for doc in yaml.safe_load_all(open(path)):
            if not doc:
                continue
            what = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
            key = (doc["apiVersion"], doc["kind"])
            try:
                if key in schemas:
                    jsonschema.validate(doc, schemas[key])
                elif doc["apiVersion"].startswith("serving.kserve.io"):
                    raise ValueError(f"no CRD for {key}")
                else:
                    kubernetes_validate.validate(doc, "1.33", strict=True)
                print(f"ok   {what}")
            except Exception as e:  # report every failure, then exit 1
                msg = getattr(e, "message", str(e)).splitlines()[0]
                print(f"FAIL {what}: {msg}")
                failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
