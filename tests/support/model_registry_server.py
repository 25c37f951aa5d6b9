#!/usr/bin/env python3
"""A small Kubeflow Model Registry REST server for the tests.

It implements the calls of the registry's OpenAPI description
(kubeflow/model-registry's api/openapi/model-registry.yaml, read at bd07139a; base path
/api/model_registry/v1alpha3, and /v1 as the current client calls it) that the `model-registry` Python client makes
to register a model and that a `model-registry://` storage initializer makes
to resolve one, keeping everything in memory:

    POST  /registered_models                      create a RegisteredModel
    GET   /registered_models                      list (the initializer's host probe)
    GET   /registered_model?name=                 find by name
    GET   /registered_models/{id}                 get
    POST  /registered_models/{id}/versions        create a ModelVersion
    GET   /registered_models/{id}/versions        list (sortOrder)
    POST  /model_versions                         create a ModelVersion
    GET   /model_version?name=&parentResourceId=  find by name
    GET   /model_versions/{id}                    get
    POST  /model_versions/{id}/artifacts          create or update an artifact
    GET   /model_versions/{id}/artifacts          list (orderBy, sortOrder)
    GET   /model_artifact?name=&parentResourceId=, GET /model_artifacts/{id}
    PATCH any of the above by id                  merge fields

Every request is appended to REQUESTS (served at GET /requests) so a test
can see what the initializer asked; " [bearer]" follows one that carried an
`Authorization: Bearer` header.

With --token TOKEN, the API answers 401 (the spec's Unauthorized response,
as the registry behind OpenShift's proxy does) unless a request carries
`Authorization: Bearer TOKEN`, as the Python client sends its user token.

usage: model_registry_server.py [--token TOKEN]   (prints its port, then serves)
"""
import http.server
import itertools
import json
import sys
import time
import urllib.parse

# v1alpha3 as the spec here has it; v1 as the current Python client calls it.
BASES = ("/api/model_registry/v1alpha3", "/api/model_registry/v1")
IDS = itertools.count(1)
MODELS, VERSIONS, ARTIFACTS = {}, {}, {}
VERSION_ARTIFACTS = {}
REQUESTS = []
TOKEN = None


def now():
    return str(int(time.time() * 1000))


def created(kind, body, extra=None):
    obj = dict(body)
    obj["id"] = str(next(IDS))
    obj.setdefault("customProperties", {})
    obj["createTimeSinceEpoch"] = obj["lastUpdateTimeSinceEpoch"] = now()
    if kind in ("model", "version"):
        obj.setdefault("state", "LIVE")
    obj.update(extra or {})
    return obj


def page(items):
    return {"items": items, "size": len(items), "pageSize": max(len(items), 1), "nextPageToken": ""}


def order(items, query):
    desc = query.get("sortOrder", ["ASC"])[0].upper() == "DESC"
    return sorted(items, key=lambda o: int(o["id"]), reverse=desc)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def not_found(self, what):
        self.reply(404, {"code": "404", "message": f"{what} not found"})

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}") if n else {}

    def route(self):
        url = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(url.query)
        if url.path == "/requests":
            return self.reply(200, REQUESTS)
        auth = self.headers.get("Authorization") or ""
        REQUESTS.append(f"{self.command} {self.path}" + (" [bearer]" if auth.startswith("Bearer ") else ""))
        base = next((b for b in BASES if url.path.startswith(b + "/")), None)
        if base is None:
            return self.not_found(url.path)
        if TOKEN is not None and auth != f"Bearer {TOKEN}":
            return self.reply(401, {"code": "401", "message": "Unauthorized"})
        parts = [p for p in url.path[len(base):].split("/") if p]
        m, body = self.command, (self.body() if self.command in ("POST", "PATCH") else None)
        first = lambda key: q.get(key, [None])[0]  # noqa: E731

        if parts == ["registered_models"]:
            if m == "POST":
                obj = created("model", body)
                MODELS[obj["id"]] = obj
                return self.reply(201, obj)
            return self.reply(200, page(order(MODELS.values(), q)))
        if parts == ["registered_model"]:
            hit = [o for o in MODELS.values() if o["name"] == first("name")]
            return self.reply(200, hit[0]) if hit else self.not_found("registered model")
        if len(parts) >= 2 and parts[0] == "registered_models":
            model = MODELS.get(parts[1])
            if not model:
                return self.not_found("registered model")
            if len(parts) == 2:
                if m == "PATCH":
                    model.update(body)
                return self.reply(200, model)
            if parts[2] == "versions":
                if m == "POST":
                    obj = created("version", body, {"registeredModelId": model["id"]})
                    VERSIONS[obj["id"]] = obj
                    return self.reply(201, obj)
                mine = [v for v in VERSIONS.values() if v["registeredModelId"] == model["id"]]
                return self.reply(200, page(order(mine, q)))
        if parts == ["model_versions"]:
            if m == "POST":
                obj = created("version", body)
                VERSIONS[obj["id"]] = obj
                return self.reply(201, obj)
            return self.reply(200, page(order(VERSIONS.values(), q)))
        if parts == ["model_version"]:
            hit = [v for v in VERSIONS.values()
                   if v["name"] == first("name") and v.get("registeredModelId") == first("parentResourceId")]
            return self.reply(200, hit[0]) if hit else self.not_found("model version")
        if len(parts) >= 2 and parts[0] == "model_versions":
            version = VERSIONS.get(parts[1])
            if not version:
                return self.not_found("model version")
            if len(parts) == 2:
                if m == "PATCH":
                    version.update(body)
                return self.reply(200, version)
            if parts[2] == "artifacts":
                if m == "POST":
                    if body.get("id") in ARTIFACTS:
                        ARTIFACTS[body["id"]].update(body)
                        return self.reply(200, ARTIFACTS[body["id"]])
                    obj = created("artifact", body)
                    ARTIFACTS[obj["id"]] = obj
                    VERSION_ARTIFACTS.setdefault(version["id"], []).append(obj["id"])
                    return self.reply(201, obj)
                mine = [ARTIFACTS[i] for i in VERSION_ARTIFACTS.get(version["id"], [])]
                return self.reply(200, page(order(mine, q)))
        if parts == ["model_artifact"]:
            parent = first("parentResourceId")
            hit = [ARTIFACTS[i] for i in VERSION_ARTIFACTS.get(parent, []) if ARTIFACTS[i].get("name") == first("name")]
            return self.reply(200, hit[0]) if hit else self.not_found("model artifact")
        if len(parts) == 2 and parts[0] in ("model_artifacts", "artifacts"):
            a = ARTIFACTS.get(parts[1])
            if not a:
                return self.not_found("artifact")
            if m == "PATCH":
                a.update(body)
            return self.reply(200, a)
        return self.not_found(url.path)

    do_GET = do_POST = do_PATCH = route


def main():
    global TOKEN
    if sys.argv[1:2] == ["--token"]:
        TOKEN = sys.argv[2]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
