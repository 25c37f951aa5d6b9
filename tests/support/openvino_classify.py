#!/usr/bin/env python3
"""The model server's side of the pod e2e: OpenVINO (`openvino` on PyPI) loads
the model ocimodel installed and classifies three digits drawn here (the seed's
MNIST network: input [1,28,28] in 0..1, output ten scores).

It takes OpenVINO Model Server's own arguments (`--model_path DIR --model_name
N --port P`, as the manifests run `docker.io/openvino/model_server`, which
cannot be pulled here) and finds the model the way OVMS does: DIR holds
numeric version folders (`1/`, `2/`, ...), the highest is served, and the
model file is the `.onnx` in it; anything else in DIR is ignored, and no
numeric folder is an error, as OVMS gives. `MODEL_DIR` alone is accepted too.

usage: openvino_classify.py --model_path DIR [--model_name N] [--port P] | MODEL_DIR
Prints {"0": d0, "1": d1, "7": d7} with the digits it read; exits 1 unless each
is right. A model that does not load fails with OpenVINO's own error.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np
import openvino as ov


def digits():
    one = np.zeros((28, 28), np.float32)
    one[4:24, 13:16] = 1
    yy, xx = np.mgrid[:28, :28]
    r = np.sqrt((yy - 14) ** 2 + ((xx - 14) * 1.3) ** 2)
    zero = ((r > 6) & (r < 10)).astype(np.float32)
    seven = np.zeros((28, 28), np.float32)
    seven[5:8, 7:21] = 1
    for i in range(8, 24):
        c = 20 - (i - 8) // 2
        seven[i, c - 1:c + 2] = 1
    return {"0": zero, "1": one, "7": seven}


def model_file(model_dir):
    """OVMS's layout rule: the highest numeric version folder, its .onnx."""
    versions = [int(v) for v in os.listdir(model_dir) if v.isdigit() and int(v) > 0
                and os.path.isdir(os.path.join(model_dir, v))]
    if not versions:
        sys.exit(f"no version folder (1/, 2/, ...) in {model_dir}: {sorted(os.listdir(model_dir))}")
    version = os.path.join(model_dir, str(max(versions)))
    found = glob.glob(os.path.join(version, "*.onnx"))
    if len(found) != 1:
        sys.exit(f"expected one .onnx in {version}: {sorted(os.listdir(version))}")
    return found[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", nargs="?")
    parser.add_argument("--model_path")
    parser.add_argument("--model_name")
    parser.add_argument("--port")
    args = parser.parse_args()
    model_dir = args.model_path or args.model_dir
    if not model_dir:
        parser.error("--model_path DIR or MODEL_DIR")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model_file(model_dir)), "CPU")
    read = {}
    for want, image in digits().items():
        scores = compiled(image.reshape(1, 28, 28))[compiled.output(0)]
        read[want] = int(np.argmax(scores))
    print(json.dumps(read, sort_keys=True), flush=True)
    return 0 if all(str(v) == k for k, v in read.items()) else 1


if __name__ == "__main__":
    sys.exit(main())
