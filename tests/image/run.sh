#!/usr/bin/env bash
# `make test-image`: build the image from the Dockerfile, unchanged, and run it for real.
#
#   1. a local python:3.11-slim (tests/image/base.sh), kept between runs;
#   2. buildah bud --isolation chroot --pull=never of the Dockerfile;
#   3. the image's own files: its size, and no compiler nor grpcio-tools inside;
#   4. its entrypoint started as its user (10001) with `buildah run --isolation chroot`, host
#      network, the token from a mounted file, against the simulator run on the host
#      (tests/image/check.py: health, one Track, /metrics, the token in no output).
#
# buildah and debootstrap come from Debian: installed with apt when missing and run as root.
# No container engine nor registry is needed (podman cannot run containers on these machines:
# crun cannot set rlimits there; buildah's chroot isolation needs neither).
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${IMAGE:-localhost/trengo-sidecar:test}
# The ceiling for the built image. Measured: see docs/image.md.
MAX_IMAGE_MB=${MAX_IMAGE_MB:-400}

need=()
for tool in buildah debootstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "make test-image: needs ${need[*]} (apt-get install ${need[*]}) and root to run them" >&2
    exit 2
  fi
  echo "test-image: installing ${need[*]} with apt"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "make test-image: buildah's chroot isolation and debootstrap need root" >&2
  exit 2
fi

started=$SECONDS
dockerfile_sum=$(sha256sum < Dockerfile)
bash tests/image/base.sh

echo "test-image: buildah bud --isolation chroot --pull=never -t $IMAGE ."
# --layers: an unchanged Dockerfile step (the tools venv, the dependencies) is reused next time.
buildah bud --quiet --isolation chroot --pull=never --layers -t "$IMAGE" . > /tmp/trengo-image-build.log 2>&1 \
  || { tail -40 /tmp/trengo-image-build.log; exit 1; }
[[ $(sha256sum < Dockerfile) == "$dockerfile_sum" ]] || { echo "test-image: the Dockerfile changed during the test" >&2; exit 1; }

"$PWD/.venv/bin/python" -m tests.image.inspect "$IMAGE" --max-mb "$MAX_IMAGE_MB"
"$PWD/.venv/bin/python" -m tests.image.check "$IMAGE"
echo "test-image: passed in $((SECONDS - started)) s"
