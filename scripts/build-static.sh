#!/usr/bin/env bash
# Builds ocimodel as one static executable (glibc, static-pie) that runs in
# an empty root (FROM scratch), and prints its path.
#   scripts/build-static.sh [--debug] [--target TRIPLE] [--out FILE]
# TRIPLE: x86_64-unknown-linux-gnu or aarch64-unknown-linux-gnu (the -musl
# ones work too where a musl C compiler for them exists). Without --target,
# the image's architecture (TARGETARCH: amd64, arm64) when set, else this
# machine's. A plain `cargo build` / `cargo install --path .` builds for the
# host instead (macOS and arm64 included); only this script and the
# Containerfile make the static binary.
#
# Another architecture than this machine's is cross-compiled: rustup adds
# the target's standard library, and the C parts (ring, zstd) and the link
# use <arch>-linux-gnu-gcc (Debian: gcc-aarch64-linux-gnu and
# libc6-dev-arm64-cross, or gcc-x86-64-linux-gnu and libc6-dev-amd64-cross).
#
# The flags go to the target only (cargo keeps RUSTFLAGS off build scripts
# and proc-macros when --target is given): +crt-static, and getrandom
# pinned to the syscall, since a static glibc binary cannot dlsym it and a
# scratch image may have no /dev/urandom.
# Release builds are also copied to target/static/linux-<arch>/ocimodel,
# where the Containerfile's prebuilt form takes them from.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: $0 [--debug] [--target x86_64-unknown-linux-gnu|aarch64-unknown-linux-gnu] [--out FILE]"
profile=release
out=
triple=
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) profile=debug ;;
    --out) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; out="$2"; shift ;;
    --target) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; triple="$2"; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$triple" ]; then
  case "${TARGETARCH:-$(uname -m)}" in
    amd64|x86_64) triple=x86_64-unknown-linux-gnu ;;
    arm64|aarch64) triple=aarch64-unknown-linux-gnu ;;
    *) echo "build-static.sh: no static build for architecture '${TARGETARCH:-$(uname -m)}' (amd64 or arm64)" >&2; exit 1 ;;
  esac
fi
case "$triple" in
  x86_64-unknown-linux-gnu|x86_64-unknown-linux-musl) arch=amd64 cpu=x86_64 ;;
  aarch64-unknown-linux-gnu|aarch64-unknown-linux-musl) arch=arm64 cpu=aarch64 ;;
  *) echo "build-static.sh: no static build for target '$triple' ($usage)" >&2; exit 1 ;;
esac
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$triple"; then
  rustup target add "$triple" >&2
fi
if [ "$cpu" != "$(uname -m)" ] && [ "${triple%-gnu}" != "$triple" ]; then
  # Cross: the target's C compiler builds the C parts and links.
  cc="${cpu//_/-}-linux-gnu-gcc"
  command -v "$cc" >/dev/null || {
    echo "build-static.sh: cross-compiling for $triple needs $cc (Debian: gcc-${cpu//_/-}-linux-gnu and libc6-dev-$arch-cross)" >&2
    exit 1
  }
  upper=$(echo "$triple" | tr 'a-z-' 'A-Z_')
  export "CARGO_TARGET_${upper}_LINKER=$cc" "CC_${triple//-/_}=$cc" "AR_${triple//-/_}=${cpu//_/-}-linux-gnu-ar"
fi
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
