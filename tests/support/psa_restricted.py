#!/usr/bin/env python3
"""Checks the Pods in a YAML file against Pod Security Standards "restricted"
(kubernetes.io/docs/concepts/security/pod-security-standards): allowed volume
types only (no hostPath), runAsNonRoot, no privilege escalation, capabilities
drop ALL, seccomp RuntimeDefault or Localhost. Prints one line per problem;
exit 1 if any.

usage: psa_restricted.py FILE
"""
import sys
import yaml

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}
problems = []
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc or doc.get("kind") != "Pod":
        continue
    name = doc["metadata"]["name"]
    spec = doc["spec"]
    psc = spec.get("securityContext", {})
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"{name}: volume {v['name']} is {sorted(kinds)}")
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        sc = c.get("securityContext", {})
        where = f"{name}/{c['name']}"
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
            problems.append(f"{where}: runAsNonRoot is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities do not drop ALL")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile is {seccomp}")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            problems.append(f"{where}: runs as UID 0")
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
