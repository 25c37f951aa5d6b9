#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need
# (Debian's registry, skopeo, umoci, htpasswd, containerd, zstd, openssl, curl, podman with runc,
# debootstrap; the oras Python SDK, modelpack-client, kubernetes-validate, model-signing, moto,
# model-registry, huggingface_hub, cargo-fuzz), then checks formatting
# and lints, then runs every test and a fuzzing smoke.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in docker-registry:docker-registry skopeo:skopeo umoci:umoci htpasswd:apache2-utils containerd:containerd \
            zstd:zstd openssl:openssl curl:curl chroot:coreutils podman:podman runc:runc catatonit:catatonit \
            debootstrap:debootstrap; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -c 'import oras' 2>/dev/null || python3 -m pip install -q 'oras>=0.2.40,<0.3'
python3 -c 'import modelpack_client' 2>/dev/null || python3 -m pip install -q 'modelpack-client>=0.1,<0.2'
python3 -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null || python3 -m pip install -q kubernetes-validate jsonschema pyyaml
# model-signing's wheel does not declare pyopenssl, which its certificate verifier imports.
python3 -c 'import model_signing, OpenSSL' 2>/dev/null || python3 -m pip install -q 'model-signing==1.1.1' pyopenssl
# moto answers AWS's STS and ECR APIs for the cloud credential tests (botocore comes with it).
python3 -c 'import moto.server, flask, botocore' 2>/dev/null || python3 -m pip install -q 'moto[server]==5.2.5'
# Kubeflow Model Registry's Python client registers the models the model-registry:// tests resolve.
python3 -c 'import model_registry' 2>/dev/null || python3 -m pip install -q 'model-registry==0.3.18'
# huggingface_hub reads the Hugging Face cache layout OCIMODEL_HF_REPO installs (tests/local.rs).
python3 -c 'import huggingface_hub' 2>/dev/null || python3 -m pip install -q 'huggingface_hub==0.36.0'
# The pod tests' model servers (OpenVINO, KServe) run in an image that
# tests/support/server_image.sh makes from debootstrap and PyPI on first use.

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
# A short fuzzing smoke of every target (10 s each), on every run; cargo-fuzz
# is installed on first use (cached in ~/.cargo/bin afterwards).
cargo fuzz --version >/dev/null 2>&1 || cargo install --locked --quiet cargo-fuzz --version 0.13.2
scripts/fuzz.sh 10
