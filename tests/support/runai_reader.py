#!/usr/bin/env python3
"""The Run:ai Model Streamer's own S3 client (its C++ libstreamer with the S3 backend, what vLLM's
`--load-format runai_streamer` reads with) reading files through an S3 endpoint: every file asked
for at once, in ranges, into host memory. Used by tests/streaming.rs and bench/streaming.py.

    python3 tests/support/runai_reader.py LIB BUCKET RANGE NAME:SIZE...

LIB holds the `runai-model-streamer` and `runai-model-streamer-s3` wheels installed with
`pip install --no-deps --target LIB`; only the C++ client and the package's ctypes wrapper are
used, so torch (which the package's top module imports) is not needed and not loaded. The
endpoint comes from AWS_ENDPOINT_URL. With RELEASE_URL, once every range of the file RELEASE_WHEN
has arrived, that URL is asked for, RELEASE_AFTER seconds later (default 0). Prints JSON: seconds
from T0 (a `time.monotonic()` value, the same clock in every process; default: this one's start)
until each file's first and last range arrived and until all did, each file's error if any, and
the SHA-256 of what arrived.
"""
import ctypes
import hashlib
import json
import os
import sys
import threading
import time
import types
import urllib.request

lib, bucket, rng = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = [(n, int(s)) for n, s in (a.rsplit(":", 1) for a in sys.argv[4:])]
# The package's top module imports torch for its tensor layer; the client does not need it.
package = types.ModuleType("runai_model_streamer")
package.__path__ = [os.path.join(lib, "runai_model_streamer")]
sys.modules["runai_model_streamer"] = package
sys.path.insert(0, lib)
from runai_model_streamer.libstreamer.libstreamer import (  # noqa: E402
    runai_end, runai_request, runai_response, runai_response_str, runai_start)

buffers = [(ctypes.c_char * max(size, 1))() for _, size in files]
paths, counts, offsets, lengths, dsts = [], [], [], [], []
for (name, size), buf in zip(files, buffers):
    paths.append(f"s3://{bucket}/{name}")
    starts = list(range(0, size, rng)) or [0]
    counts.append(len(starts))
    for a in starts:
        offsets.append(a)
        lengths.append(min(rng, size - a))
        dsts.append(ctypes.addressof(buf) + a)
start = float(os.environ.get("T0", time.monotonic()))
streamer = runai_start()
runai_request(streamer, paths, counts, offsets, lengths, dsts)
left = list(counts)
out = {"first": {}, "done_at": {}, "errors": {}}
for _ in range(len(offsets)):
    code, _, f, _, _ = runai_response(streamer, 600_000)
    name = files[f][0]
    now = time.monotonic() - start
    out["first"].setdefault(name, now)
    if code != 0:
        out["errors"][name] = runai_response_str(code).decode()
        continue
    left[f] -= 1
    if left[f] == 0:
        out["done_at"][name] = now
        if name == os.environ.get("RELEASE_WHEN") and os.environ.get("RELEASE_URL"):
            threading.Timer(float(os.environ.get("RELEASE_AFTER", "0")),
                            lambda: urllib.request.urlopen(os.environ["RELEASE_URL"]).read()).start()
out["done"] = time.monotonic() - start
runai_end(streamer)
out["hashes"] = {name: hashlib.sha256(bytes(buf)[:size]).hexdigest()
                 for (name, size), buf in zip(files, buffers)}
print(json.dumps(out))
