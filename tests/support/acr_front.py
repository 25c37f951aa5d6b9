#!/usr/bin/env python3
"""An HTTPS front that plays an Azure Container Registry host for the tests.

ACR serves the registry API, its token service and the AAD token exchange on
one host name. Here docker-registry (plain HTTP, `auth: token`) and the tests'
token issuer serve the first two, and this front adds the exchange:

    POST /oauth2/exchange  grant_type=access_token&service=…&tenant=…&access_token=…
        → {"refresh_token": REFRESH} when access_token == AAD_TOKEN, else 401
    /oauth2/token …        forwarded to the token issuer
    anything else          forwarded to the registry

usage: acr_front.py CERT KEY REGISTRY_ADDR ISSUER_ADDR AAD_TOKEN REFRESH
Prints the port it listens on (127.0.0.1), then serves until killed.
"""
import http.client
import http.server
import json
import ssl
import sys
import urllib.parse

CERT, KEY, REGISTRY, ISSUER, AAD_TOKEN, REFRESH = sys.argv[1:7]
SEEN = []


class Front(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def answer(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def forward(self, addr, data):
        conn = http.client.HTTPConnection(addr, timeout=30)
        # Header by header: a request may carry several Accept headers.
        conn.putrequest(self.command, self.path, skip_accept_encoding=True)
        for k, v in self.headers.items():
            if k.lower() not in ("host", "connection", "content-length"):
                conn.putheader(k, v)
        if data:
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data or None)
        resp = conn.getresponse()
        payload = resp.read()
        keep = [(k, v) for k, v in resp.getheaders()
                if k.lower() not in ("content-length", "connection", "transfer-encoding")]
        # The registry's own absolute URLs name its plain address; none are
        # needed for a pull by digest.
        self.answer(resp.status, payload, keep)

    def handle_any(self):
        data = self.body()
        path = urllib.parse.urlparse(self.path).path
        if path == "/oauth2/exchange":
            form = dict(urllib.parse.parse_qsl(data.decode()))
            ok = (self.command == "POST" and form.get("grant_type") == "access_token"
                  and form.get("access_token") == AAD_TOKEN and form.get("service") and form.get("tenant"))
            if not ok:
                self.answer(401, json.dumps({"errors": [{"code": "UNAUTHORIZED"}]}).encode(),
                            [("Content-Type", "application/json")])
                return
            self.answer(200, json.dumps({"refresh_token": REFRESH}).encode(),
                        [("Content-Type", "application/json")])
            return
        if path.startswith("/oauth2/token"):
            self.forward(ISSUER, data)
            return
        self.forward(REGISTRY, data)

    do_GET = do_HEAD = do_POST = handle_any


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Front)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CERT, KEY)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
