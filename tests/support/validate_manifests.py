#!/usr/bin/env python3
"""Validate every YAML document in manifests/.

Kubernetes core objects with the `kubernetes-validate` package (strict: unknown fields fail);
KServe objects against KServe's own CRD schemas (tests/fixtures/kserve-crds, or $KSERVE_CRDS), made
strict the way the API server prunes: an object schema with properties and no
x-kubernetes-preserve-unknown-fields accepts no other keys. The kustomization must list every
manifest and nothing else.

usage: validate_manifests.py MANIFEST_DIR CRD_DIR   (prints one line per object; exit 1 on error)
"""
import glob
import os
import sys

import jsonschema
import kubernetes_validate
import yaml


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


def main():
    manifest_dir, crd_dir = sys.argv[1:3]
    schemas = crd_schemas(crd_dir)
    if not schemas:
        sys.exit(f"no CRDs found in {crd_dir}")
    failed = False
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(manifest_dir, "*.yaml")))
    kustomization = yaml.safe_load(open(os.path.join(manifest_dir, "kustomization.yaml")))
    expected = sorted(f for f in files if f not in ("kustomization.yaml", "kustomizeconfig.yaml"))
    if sorted(kustomization["resources"]) != expected:
        print(f"FAIL kustomization.yaml: resources {sorted(kustomization['resources'])} != files {expected}")
        failed = True
    for name in expected:
        for doc in yaml.safe_load_all(open(os.path.join(manifest_dir, name))):
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
