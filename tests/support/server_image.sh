#!/bin/sh
# The model servers' image for the pod end-to-end tests (tests/podman.rs), as
# a root filesystem tar for `podman import`: no base image can be pulled here,
# so it is made from what the machine can install. Debian bookworm from Debian's
# packages with debootstrap (minbase + python3), then from PyPI the OpenVINO
# runtime, KServe's Python model server and ONNX Runtime under /opt/site, and
# the two server scripts under /opt/serve.
#
# usage: server_image.sh OUT.tar   (as root; writes OUT.tar only when complete)
set -eu

out=$1
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "$out.work.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

# The machine's own Debian mirror, whichever apt source format it uses.
mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
if [ -z "$mirror" ]; then
    mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
fi
[ -n "$mirror" ] || { echo "server_image.sh: no Debian mirror in /etc/apt" >&2; exit 1; }

root=$work/root
# A mirror hiccup should not fail the suite: one more try from scratch.
for attempt in 1 2; do
    rm -rf "$root"
    if debootstrap --variant=minbase --include=python3 bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
        break
    fi
    [ "$attempt" = 2 ] && { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
done

# The wheels are cp311 manylinux, for bookworm's Python 3.11 and glibc 2.36;
# pip runs on the machine (its index settings and CA), installing into the tree.
python3 -m pip install -q --no-warn-script-location --root-user-action=ignore --target "$root/opt/site" \
    openvino==2026.4.1 kserve==0.21.0 onnxruntime==1.32.0

mkdir -p "$root/opt/serve"
cp "$here/openvino_classify.py" "$root/opt/serve/classify.py"
cp "$here/kserve_mnist.py" "$root/opt/serve/kserve_mnist.py"
chmod 0755 "$root/opt/serve" && chmod 0644 "$root/opt/serve/"*.py

# What a server never reads.
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* \
    "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/locale" \
    "$root/opt/site/bin"

tar --numeric-owner -C "$root" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$out"
