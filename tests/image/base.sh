#!/usr/bin/env bash
# A local stand-in for the Dockerfile's base image, python:3.11-slim, for a machine that
# reaches Debian's mirror but no container registry: a Debian bookworm root made with
# debootstrap (minbase), plus python3 (3.11), python3-venv and a `python` link, as the
# official image has. Tagged under the base's own name, so `buildah bud --pull=never`
# builds the Dockerfile unchanged; kept in buildah's storage between runs.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "base image: $BASE_IMAGE already built (buildah rmi $BASE_IMAGE to rebuild)"
  exit 0
fi

echo "base image: debootstrap bookworm into a new $BASE_IMAGE (a few minutes, once)"
ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
root=$(buildah mount "$ctr")
# ca-certificates: pip reaches PyPI over TLS in the builder stage, as it does on the real image.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$MIRROR" > /tmp/trengo-base-debootstrap.log 2>&1 \
  || { tail -20 /tmp/trengo-base-debootstrap.log; exit 1; }
ln -sf python3 "$root/usr/bin/python"
# This machine's own extra CAs (a TLS-inspecting egress proxy reaches PyPI for it), so the builder's
# pip reaches PyPI as the host's does. Debian's pip and the env below read the system bundle.
extra_cas=(/usr/local/share/ca-certificates/*.crt)
if [[ -e ${extra_cas[0]} ]]; then
  cp "${extra_cas[@]}" "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates > /dev/null 2>&1
fi
# What the real slim image leaves out too: apt lists, caches, docs and man pages.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
"$root/usr/bin/python" --version
buildah umount "$ctr" >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt --cmd python3 "$ctr"
buildah commit --quiet "$ctr" "$BASE_IMAGE" >/dev/null
echo "base image: $BASE_IMAGE built ($(buildah images --format '{{.Size}}' "$BASE_IMAGE"))"
