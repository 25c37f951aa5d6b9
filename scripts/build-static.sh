#!/usr/bin/env bash
# Builds ocimodel as one static executable (glibc, static-pie) that runs in
# an empty root (FROM scratch), and prints its path.
#   scripts/build-static.sh [--debug] [--out FILE]
# The architecture is the image's (TARGETARCH: amd64, arm64) when set, else
# this machine's. A plain `cargo build` / `cargo install --path .` builds for
# the host instead (macOS and arm64 included); only this script and the
# Containerfile make the static binary.
#
# The flags go to the target only (cargo keeps RUSTFLAGS off build scripts
# and proc-macros when --target is given): +crt-static, and getrandom
# pinned to the syscall, since a static glibc binary cannot dlsym it and a
# scratch image may have no /dev/urandom.
# Release builds are also copied to target/static/linux-<arch>/ocimodel,
# where the Containerfile's prebuilt form takes them from.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
out=
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) profile=debug ;;
    --out) out="$2"; shift ;;
    *) echo "usage: $0 [--debug] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done
arch="${TARGETARCH:-$(uname -m)}"
case "$arch" in
  amd64|x86_64) arch=amd64 triple=x86_64-unknown-linux-gnu ;;
  arm64|aarch64) arch=arm64 triple=aarch64-unknown-linux-gnu ;;
  *) echo "build-static.sh: no static build for architecture '$arch' (amd64 or arm64)" >&2; exit 1 ;;
esac
flags=(--locked --target "$triple" --bin ocimodel)
[ "$profile" = release ] && flags+=(--release)
RUSTFLAGS="-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\"" \
  cargo build "${flags[@]}" >&2
bin="target/$triple/$profile/ocimodel"
if [ "$profile" = release ]; then
  mkdir -p "target/static/linux-$arch"
  cp "$bin" "target/static/linux-$arch/ocimodel"
fi
if [ -n "$out" ]; then
  cp "$bin" "$out"
  bin="$out"
fi
echo "$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
