#!/usr/bin/env python3
"""The model server's side of the pod e2e: OpenVINO (`openvino` on PyPI) loads
the model ocimodel installed, in OpenVINO Model Server's versioned layout
(MODEL_DIR/1/model.onnx), and classifies three digits drawn here (the seed's
MNIST network: input [1,28,28] in 0..1, output ten scores).

usage: openvino_classify.py MODEL_DIR
Prints {"0": d0, "1": d1, "7": d7} with the digits it read; exits 1 unless each
is right. A model that does not load fails with OpenVINO's own error.
"""
import json
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


def main():
    model_dir = sys.argv[1]
    core = ov.Core()
    compiled = core.compile_model(core.read_model(f"{model_dir}/1/model.onnx"), "CPU")
    read = {}
    for want, image in digits().items():
        scores = compiled(image.reshape(1, 28, 28))[compiled.output(0)]
        read[want] = int(np.argmax(scores))
    print(json.dumps(read, sort_keys=True), flush=True)
    return 0 if all(str(v) == k for k, v in read.items()) else 1


if __name__ == "__main__":
    sys.exit(main())
