# syntax=docker/dockerfile:1
# trengo-sidecar: a gRPC sidecar that delivers customer events to Trengo.
#
#   docker build -t trengo-sidecar .
#   docker run --rm -p 50052:50052 -p 9090:9090 \
#     -e TRENGO_API_TOKEN_FILE=/run/secrets/trengo -v "$PWD/token:/run/secrets/trengo:ro" \
#     -e TRENGO_CHANNEL_ID=12345 trengo-sidecar
#
# The API listens on the container's loopback: a pod's app reaches it over
# 127.0.0.1. To publish it (docker -p 50051:50051), set SIDECAR_LISTEN=0.0.0.0:50051
# and SIDECAR_AUTH_TOKEN_FILE (or mTLS): the sidecar refuses an open API without
# caller auth unless SIDECAR_ALLOW_UNAUTHENTICATED=true.
#
# Two stages. The builder generates the Python stubs from protos/ (the exact
# command of the Makefile's `proto` target; tests/project/test_manifests.py checks they
# stay the same) and installs the package into /opt/venv. The runtime stage is
# a clean python:3.11-slim with that venv only: no compiler, no grpcio-tools,
# no source tree. No secret is baked in: the Trengo token comes at run time
# (TRENGO_API_TOKEN_FILE, a mounted file, or TRENGO_API_TOKEN).
#
# Health: grpc.health.v1 is served alone on healthListen (50052); Kubernetes
# probes it natively with `grpc: {port: 50052, service: readiness}` (and
# `liveness`; see deploy/kubernetes/), so no probe binary is shipped.
# "trengo.sidecar.v1.TrengoSidecar" (and "") say whether a call can succeed now.
#
# `make test-image` builds this file unchanged with buildah and runs the image
# (tests/image/): its health, a Track, /metrics, its size and contents.

FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
# Everything installed below is pinned, with hashes, by uv.lock: uv itself (pinned with hashes in
# tools/uv-requirements.txt) exports the lock's pins as requirements files for pip.
COPY tools/uv-requirements.txt tools/
COPY uv.lock pyproject.toml ./
COPY clients/python/pyproject.toml clients/python/
RUN python -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-deps --require-hashes -r tools/uv-requirements.txt \
 && /opt/uv/bin/uv export --frozen --only-group generate --no-emit-project -o /tmp/generate.txt \
 && /opt/uv/bin/uv export --frozen --no-dev --no-emit-workspace -o /tmp/runtime.txt

# Code generators, in their own venv: they never reach the runtime image.
RUN python -m venv /opt/tools \
 && /opt/tools/bin/pip install --require-hashes -r /tmp/generate.txt

COPY protos/ protos/
# Same command as `make proto`, with $(BIN) = /opt/tools/bin.
RUN /opt/tools/bin/python -m grpc_tools.protoc -I protos --python_out=. --grpc_python_out=. \
      --plugin=protoc-gen-mypy=/opt/tools/bin/protoc-gen-mypy --mypy_out=. \
      --plugin=protoc-gen-mypy_grpc=/opt/tools/bin/protoc-gen-mypy_grpc --mypy_grpc_out=. \
      protos/trengo/sidecar/v1/sidecar.proto \
 && touch trengo/__init__.py trengo/sidecar/__init__.py trengo/sidecar/v1/__init__.py

# No README.md: it is only the package's long description, and setuptools builds without it.
COPY sidecar/ sidecar/
# The runtime's packages from the lock (so grpcio and protobuf are the versions the
# generators were locked with), then the package itself without its dependencies.
# Smoke check at the end: -I, so the installed package is imported, not ./sidecar.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes -r /tmp/runtime.txt \
 && /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/trengo-sidecar --help > /dev/null \
 && /opt/venv/bin/python -I -c "import trengo.sidecar.v1.sidecar_pb2_grpc, sidecar.api.app"


FROM python:3.11-slim

# The API on loopback (a pod's app calls it there); health and metrics on
# 0.0.0.0, where kubelet's gRPC probes and Prometheus reach the pod IP.
# Environment, not CMD flags: flags beat the environment and the config file, so
# they would hide `docker run -e SIDECAR_LISTEN=...`. These beat a --config
# file's listen/metricsListen/logFormat too; `-e SIDECAR_LISTEN=` (empty) unsets
# one so the file's value applies, and flags after the image name beat them all.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIDECAR_LISTEN=127.0.0.1:50051 \
    SIDECAR_HEALTH_LISTEN=0.0.0.0:50052 \
    SIDECAR_METRICS_LISTEN=0.0.0.0:9090 \
    SIDECAR_LOG_FORMAT=json

RUN groupadd --system --gid 10001 sidecar \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin sidecar

# Same path as in the builder: the venv's scripts point at /opt/venv/bin/python.
COPY --from=builder /opt/venv /opt/venv

# Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001

# 50052: grpc.health.v1 alone (healthListen); 9090: Prometheus /metrics. The API
# (50051: TrengoSidecar, grpc.health.v1, reflection) is on loopback, not exposed.
EXPOSE 50052 9090

ENTRYPOINT ["trengo-sidecar"]
CMD []
