#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need
# (Debian's registry, skopeo, htpasswd, containerd, zstd, openssl, curl, podman with runc,
# debootstrap; the oras Python SDK, modelpack-client, kubernetes-validate, model-signing, moto,
# model-registry, huggingface_hub, cargo-fuzz), then checks formatting
# and lints, then runs every test and a fuzzing smoke. It fails first when
# anything reads the shared folder beside the checkout, and last when the
# run left the work tree dirty.
set -euo pipefail
cd "$(dirname "$0")/.."

git rev-parse --is-inside-work-tree >/dev/null || {
  echo "scripts/test.sh runs in a git checkout (it checks what the run leaves in the work tree)" >&2
  exit 1
}
# What was already uncommitted when the run began, to tell it apart at the end.
dirty_before=$(git status --porcelain --untracked-files=all)

# A clone has nothing beside it: no test, script, benchmark or CI step may read
# the shared folder next to the checkout. (The pattern is built from pieces so
# that this file does not match it.)
beside="..""/shared"
rc=0
git grep --untracked -n -F "$beside" -- tests scripts bench .ci || rc=$?
case $rc in
  0) echo "the lines above name $beside, which a clone does not have: copy what they need into" \
          "the repository (tests/fixtures/, see its README.md)" >&2
     exit 1 ;;
  1) ;;
  *) echo "git grep failed ($rc)" >&2; exit 1 ;;
esac
scripts/check-structure.sh  # layers, circles, file lengths (see src/lib.rs)

missing=()
for tool in docker-registry:docker-registry skopeo:skopeo htpasswd:apache2-utils containerd:containerd \
            zstd:zstd openssl:openssl curl:curl chroot:coreutils podman:podman runc:runc catatonit:catatonit \
            debootstrap:debootstrap docker-credential-pass:golang-docker-credential-helpers pass:pass \
            gpg:gpg script:bsdutils mkfs.xfs:xfsprogs; do
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
# boto3: tests/streaming.rs reads the sidecar's S3 endpoint with it (moto brings it too).
python3 -c 'import boto3' 2>/dev/null || python3 -m pip install -q boto3
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

# Nothing a test writes may land in the work tree, where it could be committed
# by accident: everything goes to temp dirs or to ignored ones (target/, fuzz/artifacts/).
dirty=$(git status --porcelain --untracked-files=all)
if [ -n "$dirty" ]; then
  echo "the work tree is not clean after the run:" >&2
  echo "$dirty" >&2
  if [ -n "$dirty_before" ]; then
    echo "(it was not clean before the run either; commit or stash first, then rerun:" >&2
    echo "$dirty_before" >&2
    echo ")" >&2
  fi
  exit 1
fi
echo "work tree clean after the run"
