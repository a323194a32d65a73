# syntax=docker/dockerfile:1
#
# healert-webhook container image.
#
# Two stages: the builder resolves and installs the package and its
# dependencies into a virtualenv at /opt/venv, compiling the optional native
# field scanner with gcc; the runtime stage starts from the same slim Python
# image and receives only that virtualenv. The runtime image carries no
# compiler, no pip and no package sources.
#
# Both stages must use the same base image: the virtualenv's interpreter is a
# symlink to the base image's /usr/local/bin/python3.11. The runtime base must also
# keep /bin/sh and coreutils (stat, chmod, chown): the node-local DaemonSet's
# init container runs them from this image to hand its hostPath state directory to
# uid 65532, so a distroless base would need another image for that step. Production builds can
# pin a digest as well, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-trixie@sha256:<digest> .

ARG PYTHON_IMAGE=python:3.11-slim-trixie

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# gcc and the C library's headers build the native field scanner (setup.py);
# the image's Python headers are already there. Only this stage has them.
# Not pinned: the base image (pinned by digest in production) fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# .dockerignore admits only pyproject.toml, setup.py, README.md, LICENSE,
# rules.yaml (the package's default rules link to it) and the package.
COPY . .

# pip compiles the .pyc files at install time, so the runtime never needs to
# write bytecode (its root filesystem is read-only). pip and setuptools are
# removed from the venv afterwards: nothing installs packages at run time.
# The image must have the native scanner (the build does not go on without it).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /src \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools \
    && /opt/venv/bin/healert-webhook --help > /dev/null \
    && /opt/venv/bin/python -m healert_webhook.nativescan --require


FROM ${PYTHON_IMAGE}

ARG PYTHON_IMAGE
ARG VERSION=0.2.0
ARG REVISION=unknown

LABEL org.opencontainers.image.title="healert-webhook" \
      org.opencontainers.image.description="Kubernetes audit webhook receiver and audit log tailer that reports platform bypasses to Healert" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Healert" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# PYTHONDONTWRITEBYTECODE: no __pycache__ writes (read-only root filesystem).
# PYTHONUNBUFFERED: log lines reach the container runtime immediately.
# HEALERT_STATE_DIR: the outbox database and tail checkpoints; the only path
# the program writes to. Mount a volume there.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HEALERT_STATE_DIR=/var/lib/healert

# A named account for uid/gid 65532 (the conventional "nonroot" id) so tools
# show a name, and a state directory it owns so that a fresh volume mounted
# there (or docker's anonymous volume) is writable without root.
RUN groupadd --system --gid 65532 healert \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
       --home-dir /var/lib/healert --shell /usr/sbin/nologin healert \
    && install -d -o 65532 -g 65532 -m 0700 /var/lib/healert

COPY --from=builder /opt/venv /opt/venv

WORKDIR /var/lib/healert
USER 65532:65532

# 8443: audit webhook (HTTPS). 9090: /metrics, /healthz, /readyz (plain HTTP).
# The node-local DaemonSet moves them to 18443/19090 on the host network
# (HEALERT_LISTEN, HEALERT_OPS_LISTEN); see docs/operations.md.
EXPOSE 8443 9090
VOLUME ["/var/lib/healert"]

ENTRYPOINT ["healert-webhook"]
CMD ["serve"]
