#!/usr/bin/env python3
"""A far registry on loopback: a WAN emulator in user space (this kernel has no netem).

    python3 bench/wan.py --upstream 127.0.0.1:5000 [--rate 16M] [--connect-delay 0.02] [--redirect]

Serves the registry at `--upstream` on a new loopback port (printed on stdout, one line
`wan <addr>`) the way a far one behaves:
- each TCP connection's download is capped at `--rate` bytes per second (object stores and CDNs
  give each connection a share: hence parallel ranged GETs);
- each new connection costs `--connect-delay` seconds before its first byte (TCP + TLS setup
  across a continent), and each request `--rtt` seconds before its answer starts (one round trip:
  small ranges pay it often);
- with `--redirect`, blob GETs are answered `307` with a Location on a second loopback host, the
  "object store", which serves the bytes (with `Range`) under the same caps, as registries
  redirect to presigned S3/GCS/Azure URLs. Like a presigned URL, the store refuses a request that
  carries `Authorization` (400), and the URL expires after `--expires` seconds (403).

Importable: `Wan(upstream, rate, connect_delay, redirect, expires, rtt).start()` returns the address; `.stop()`.
Counters (`.connections`, `.bytes_sent`) let a benchmark say how many connections a pull opened.
"""
import argparse
import http.client
import http.server
import threading
import time
import urllib.parse

# Relayed in pieces of this size, read into one buffer per connection: the emulator shares the
# machine's CPUs with the pull it measures, so its own cost per byte must stay small (1 GiB in
# 64 KiB `read()`s cost it ~2.4 CPU-seconds on 2 vCPUs; a real link costs the node none).
CHUNK = 256 * 1024
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "host"}


def parse_rate(s):
    mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(s[-1:].upper())
    return int(float(s[:-1]) * mult) if mult else int(s)


class Wan:
    def __init__(self, upstream, rate=16 * 1024 ** 2, connect_delay=0.02, redirect=False, expires=600, rtt=0.02):
        self.upstream = upstream
        self.rtt = rtt
        self.rate = rate
        self.connect_delay = connect_delay
        self.redirect = redirect
        self.expires = expires
        self.connections = 0
        self.bytes_sent = 0
        self.lock = threading.Lock()
        self.servers = []

    def start(self):
        self.store = self._serve(store=True) if self.redirect else None
        self.front = self._serve(store=False)
        return self.addr

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.front.server_address[1]

    def stop(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()

    def _count(self, connections=0, sent=0):
        with self.lock:
            self.connections += connections
            self.bytes_sent += sent

    def _serve(self, store):
        wan = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                wan._count(connections=1)
                time.sleep(wan.connect_delay)  # the connection is "set up" only now
                self.started = None
                self.sent = 0

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.relay_quietly()

            def do_HEAD(self):
                self.relay_quietly()

            def relay_quietly(self):
                try:
                    self.relay()
                except (BrokenPipeError, ConnectionResetError):
                    # The client hung up (aria2c drops a segment's connection when
                    # another covers it; a killed pull); nothing to report.
                    self.close_connection = True

            def relay(self):
                path = self.path
                time.sleep(wan.rtt)  # the request travels there and the answer back
                if store:
                    if self.headers.get("Authorization"):
                        return self.answer(400, b"object store: Authorization header not allowed with a signed URL")
                    url = urllib.parse.urlsplit(path)
                    q = urllib.parse.parse_qs(url.query)
                    if float(q.get("expires", ["0"])[0]) < time.time():
                        return self.answer(403, b"object store: request has expired")
                    path = url.path
                elif wan.redirect and self.command == "GET" and "/blobs/sha256:" in path:
                    # The registry answers blob GETs (after its own auth) with a redirect.
                    # (A HEAD carrying the client's Range answers 206: the blob is there.)
                    probe = self.forward("HEAD", path, body=False)
                    probe.conn.close()
                    if probe.status not in (200, 206):
                        return self.answer(probe.status, b"")
                    location = "http://127.0.0.1:%d%s?expires=%.3f" % (
                        wan.store.server_address[1], path.split("?")[0], time.time() + wan.expires)
                    return self.answer(307, b"", [("Location", location)])
                self.pass_through(self.forward(self.command, path, body=self.command == "GET"))

            def forward(self, method, path, body):
                conn = http.client.HTTPConnection(wan.upstream, timeout=60)
                # Header by header: a client may send several Accept lines.
                conn.putrequest(method, path, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    if k.lower() not in HOP_BY_HOP:
                        conn.putheader(k, v)
                conn.endheaders()
                resp = conn.getresponse()
                resp.conn = conn
                return resp

            def pass_through(self, resp):
                self.started, self.sent = None, 0  # each response gets the connection's share
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                if resp.getheader("Content-Length") is None and self.command != "HEAD":
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if self.command != "HEAD":
                    buf = bytearray(CHUNK)
                    view = memoryview(buf)
                    while True:
                        n = resp.readinto(buf)
                        if not n:
                            break
                        self.capped_write(view[:n])
                resp.conn.close()

            def answer(self, status, body, headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def capped_write(self, chunk):
                if self.started is None:
                    self.started = time.monotonic()
                self.wfile.write(chunk)
                self.sent += len(chunk)
                wan._count(sent=len(chunk))
                ahead = self.sent / wan.rate - (time.monotonic() - self.started)
                if ahead > 0:
                    time.sleep(ahead)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers.append(server)
        return server


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="host:port of the registry (plain http)")
    ap.add_argument("--rate", default="16M", help="bytes per second per connection (16M)")
    ap.add_argument("--connect-delay", type=float, default=0.02, help="seconds per new connection")
    ap.add_argument("--redirect", action="store_true", help="blob GETs redirect to an object store")
    ap.add_argument("--expires", type=float, default=600, help="seconds a redirect URL stays valid")
    ap.add_argument("--rtt", type=float, default=0.02, help="seconds per request before its answer")
    args = ap.parse_args()
    wan = Wan(args.upstream, parse_rate(args.rate), args.connect_delay, args.redirect, args.expires, args.rtt)
    print("wan", wan.start(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        wan.stop()


if __name__ == "__main__":
    main()
