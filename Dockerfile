# syntax=docker/dockerfile:1.7
# gridcharge container image: one image for every service.
#
#   docker build -t gridcharge:dev .                                     # whole workspace (all services + CLI)
#   docker build --build-arg UV_PACKAGE=gridcharge-gateway -t gridcharge-gateway:dev .   # one service only
#   docker run --rm -e GRIDCHARGE_SERVICE=gateway -p 9000:9000 -p 8080:8080 gridcharge:dev
#   docker run --rm -e GRIDCHARGE_SERVICE=cli gridcharge:dev demo      # the `gridcharge` command
#
# GRIDCHARGE_SERVICE selects what starts: gateway | telemetry | forecasting | allocation | controlbox | gridsignals |
# simulator
# (`python -m gridcharge.<service>`) or cli (the `gridcharge` console script). Arguments after the
# image name are passed through. Not built in this repository's CI (no container engine there):
# `deploy/scripts/check-deploy.sh` lints it with hadolint instead.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

# ---------------------------------------------------------------- uv binary
FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder
# gridcharge-cli depends on every service, so the default installs the whole workspace.
ARG UV_PACKAGE=gridcharge-cli
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src

# 1) third-party dependencies only, from the lock: this layer is reused until uv.lock changes.
COPY pyproject.toml uv.lock ./
COPY services/shared/pyproject.toml      services/shared/pyproject.toml
COPY services/gateway/pyproject.toml     services/gateway/pyproject.toml
COPY services/telemetry/pyproject.toml   services/telemetry/pyproject.toml
COPY services/forecasting/pyproject.toml services/forecasting/pyproject.toml
COPY services/allocation/pyproject.toml  services/allocation/pyproject.toml
COPY services/controlbox/pyproject.toml  services/controlbox/pyproject.toml
COPY services/simulator/pyproject.toml   services/simulator/pyproject.toml
COPY services/cli/pyproject.toml         services/cli/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package "${UV_PACKAGE}"

# 2) the workspace packages themselves, installed non-editable so /opt/venv stands alone.
COPY services/ services/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package "${UV_PACKAGE}"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ARG SERVICE=gateway
LABEL org.opencontainers.image.title="gridcharge" \
      org.opencontainers.image.description="Grid-aware EV charging load management" \
      org.opencontainers.image.source="https://example.invalid/gridcharge" \
      org.opencontainers.image.licenses="Apache-2.0"

# Fixed non-root identity (uid/gid 10001) so Kubernetes runAsNonRoot can verify it numerically.
RUN groupadd --system --gid 10001 gridcharge \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin gridcharge \
 && mkdir -p /etc/gridcharge /var/lib/gridcharge \
 && chown 10001:10001 /var/lib/gridcharge

# The virtualenv stays root-owned: the service user can read and run it, not change it.
COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRIDCHARGE_SERVICE=${SERVICE} \
    GRIDCHARGE_HTTP_PORT=8080 \
    GRIDCHARGE_TOPOLOGY=/etc/gridcharge/topology.yaml \
    HOME=/tmp

WORKDIR /var/lib/gridcharge
USER 10001:10001
EXPOSE 9000 8080

HEALTHCHECK --interval=30s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os,sys,urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GRIDCHARGE_HTTP_PORT','8080'), timeout=2); sys.exit(0)"]

# exec keeps python as PID 1 so SIGTERM from the kubelet reaches the service directly.
ENTRYPOINT ["/bin/sh", "-c", "case \"$GRIDCHARGE_SERVICE\" in cli|gridcharge) exec gridcharge \"$@\" ;; gateway|telemetry|forecasting|allocation|controlbox|gridsignals|simulator) exec python -m \"gridcharge.$GRIDCHARGE_SERVICE\" \"$@\" ;; *) echo \"gridcharge: unknown GRIDCHARGE_SERVICE='$GRIDCHARGE_SERVICE' (gateway|telemetry|forecasting|allocation|controlbox|gridsignals|simulator|cli)\" >&2; exit 64 ;; esac", "gridcharge-entrypoint"]
CMD []
