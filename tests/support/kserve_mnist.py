#!/usr/bin/env python3
"""The seed 000 workflow's server: KServe's own Python model server (`kserve`
on PyPI) with ONNX Runtime, serving the MNIST model ocimodel installed, over
KServe's Open Inference Protocol (V2) on HTTP.

usage: kserve_mnist.py MODEL_FILE --http_port PORT --enable_grpc false
POST /v2/models/mnist/infer with one FP32 input of shape [1, 28, 28] (values
0..1) answers one INT64 output `digit`. A model that does not load makes the
server exit with ONNX Runtime's error before it listens.
"""
import sys

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class Mnist(Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        first = self.session.get_inputs()[0]
        self.input = first.name
        # The seed's network takes doubles ("tensor(double)").
        self.dtype = np.float64 if "double" in first.type else np.float32
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy().astype(self.dtype).reshape(1, 28, 28)
        scores = self.session.run(None, {self.input: x})[0]
        digit = int(np.argmax(scores))
        return InferResponse(
            response_id=payload.id or "0",
            model_name=self.name,
            infer_outputs=[InferOutput("digit", [1], "INT64", data=[digit])],
        )


if __name__ == "__main__":
    model_file = sys.argv[1]
    ModelServer().start([Mnist("mnist", model_file)])
