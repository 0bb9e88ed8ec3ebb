#!/usr/bin/env bash
# Build a local Debian bookworm base image with Python 3.11 (no registry needed):
# debootstrap a minbase root, add this machine's CA bundle (so pip inside a build
# reaches the package index through the host network, proxies included) and
# `docker import` it. The tests use it as BASE_IMAGE; an air-gapped site uses its own.
#   tests/docker/make-base-image.sh TAG [DEBIAN_MIRROR]
set -euo pipefail
tag=${1:?usage: make-base-image.sh TAG [DEBIAN_MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
docker=${DOCKER:-/usr/bin/docker}
work=$(mktemp -d /var/tmp/mobilenet-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase \
  --include=python3,python3-venv,python-is-python3,ca-certificates \
  bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -30 "$work/debootstrap.log" >&2; exit 1; }
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$work/root/etc/ssl/certs/ca-certificates.crt"
fi
# Smaller image: no apt lists, caches, docs or man pages.
rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/"*.bin \
  "$work/root/var/cache/apt/archives/"*.deb "$work/root/usr/share/doc/"* \
  "$work/root/usr/share/man/"* "$work/root/usr/share/locale/"*
tar -C "$work/root" --numeric-owner -c . | "$docker" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$tag" >/dev/null
echo "$tag"
