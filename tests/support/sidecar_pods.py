#!/usr/bin/env python3
"""The kubelet's part for a native sidecar, under podman 4.3 (tests/podman.rs).

podman runs no restartable init containers (an init container with
`restartPolicy: Always`, Kubernetes 1.29+): it refuses probes on init
containers and would wait for the sidecar to exit. The kubelet starts such a
sidecar, runs its startupProbe, and starts the pod's containers only once the
probe succeeds. So this splits a Pod manifest in two: SIDECAR.yaml, a pod with
the sidecar as an ordinary container (probes removed: the test runs the
startupProbe printed here, as the kubelet would), and SERVERS.yaml, a pod with
the manifest's containers, which the test plays only after the probe said 200.
Everything else comes from the manifest unchanged but for what the test must
adapt: images, the model reference, the registry, the probe port, the models
volume (a hostPath both pods share, as the pod's emptyDir would be), and the
server's image, command and UID (its args stay as the manifest has them).

usage: sidecar_pods.py MANIFEST ADAPT.json SIDECAR.yaml SERVERS.yaml
ADAPT.json: {"images": {from: to}, "model": [from, to], "registry": host:port,
             "port": N, "models": host dir, "server": {image, command, env},
             "server_uid": N}
Prints the startupProbe as JSON: {"path", "port", "periodSeconds", "failureThreshold"}.
"""
import json
import sys

import yaml

manifest, adapt_file, sidecar_out, servers_out = sys.argv[1:5]
pod = yaml.safe_load(open(manifest))
adapt = json.load(open(adapt_file))
spec = pod["spec"]

sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
if len(sidecars) != 1:
    sys.exit(f"{manifest}: expected one init container with restartPolicy: Always, found {len(sidecars)}")
sidecar = sidecars[0]
if len(spec["initContainers"]) != 1:
    sys.exit(f"{manifest}: other init containers are not handled here")

for c in [sidecar] + spec["containers"]:
    c["image"] = adapt["images"].get(c["image"], c["image"])
sidecar["args"] = [a.replace(*adapt["model"]) for a in sidecar["args"]]
env = [e for e in sidecar.get("env", []) if e["name"] != "OCIMODEL_LISTEN"]
env += [
    {"name": "OCIMODEL_LISTEN", "value": f"127.0.0.1:{adapt['port']}"},
    {"name": "OCIMODEL_INSECURE_REGISTRIES", "value": adapt["registry"]},
]
sidecar["env"] = env

probe = sidecar.pop("startupProbe")
for other in ("readinessProbe", "livenessProbe"):
    sidecar.pop(other, None)
del sidecar["restartPolicy"]
ports = {p["name"]: p["containerPort"] for p in sidecar.get("ports", [])}
probe_port = probe["httpGet"]["port"]
if ports.get(probe_port, probe_port) not in ports.values():
    sys.exit(f"{manifest}: the startupProbe's port {probe_port} is not the sidecar's")
# With hostNetwork (the registry is on the host's loopback) podman takes no
# port mappings: the sidecar listens on the host's port itself.
for c in [sidecar] + spec["containers"]:
    c.pop("ports", None)

models = {"name": "models", "hostPath": {"path": adapt["models"], "type": "Directory"}}
volumes = [models if v["name"] == "models" else v for v in spec["volumes"]]


def pod_of(name, containers, extra_volumes=()):
    used = {m["name"] for c in containers for m in c.get("volumeMounts", [])}
    out = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "hostNetwork": True,
            "restartPolicy": "Never",
            "securityContext": spec["securityContext"],
            "containers": containers,
            "volumes": [v for v in volumes if v["name"] in used] + list(extra_volumes),
        },
    }
    return yaml.safe_dump(out, sort_keys=False)


name = pod["metadata"]["name"]
open(sidecar_out, "w").write(pod_of(name, [sidecar]))

servers = []
for c in spec["containers"]:
    c = dict(c, **adapt["server"])  # the manifest's args stay: the stand-in takes them
    c["volumeMounts"] = c.get("volumeMounts", []) + [{"name": "tmp", "mountPath": "/tmp"}]
    c["securityContext"] = dict(c.get("securityContext", {}), runAsUser=adapt["server_uid"], runAsGroup=0)
    servers.append(c)
open(servers_out, "w").write(
    pod_of(f"{name}-servers", servers, [{"name": "tmp", "emptyDir": {}}])
)

print(json.dumps({
    "path": probe["httpGet"]["path"],
    "port": adapt["port"],
    "periodSeconds": probe.get("periodSeconds", 10),
    "failureThreshold": probe.get("failureThreshold", 3),
}))
