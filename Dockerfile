# syntax=docker/dockerfile:1
# The ingestor service image. Build:   docker build -t personalize-ingestor:dev .
# Runs as UID 10001 with a read-only root filesystem; all configuration is /etc/ingestor/config.yaml plus
# INGESTOR_<SECTION>__<KEY> environment overrides. See docs/operations.md.

# ---- builder: build the project's wheel, install it with the locked dependencies into /opt/venv ----
FROM python:3.11.14-slim-trixie AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# Build tools are pinned; they stay in this stage. (setuptools >= 77 understands the SPDX license string.)
RUN python -m pip install --no-cache-dir "pip==26.3" "setuptools==80.9.0"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY ingestor ./ingestor
RUN python -m pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

# The runtime venv gets no pip/setuptools of its own. It receives exactly the lock (no resolution, --no-deps)
# plus the project's wheel, and pip check fails the build if the lock misses or contradicts a dependency.
# pip precompiles the .pyc files here, since the read-only runtime can't write them.
COPY deploy/docker/requirements.lock /tmp/requirements.lock
RUN python -m venv --without-pip /opt/venv \
 && python -m pip --python /opt/venv/bin/python install --no-cache-dir --no-deps \
        --requirement /tmp/requirements.lock /wheels/*.whl \
 && python -m pip --python /opt/venv/bin/python check

# ---- runtime ----
FROM python:3.11.14-slim-trixie AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="personalize-ingestor" \
      org.opencontainers.image.description="Keeps Amazon Personalize item and user datasets in step with a Kafka change stream." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-trixie"

# A fixed numeric UID/GID, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 ingestor \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ingestor

COPY --from=builder /opt/venv /opt/venv
# Default configuration: the example shipped in the package (ingestor/examples/, the same files as config/).
# Kubernetes mounts its own config.yaml over the file (schemas stay from the image).
COPY ingestor/examples/ingestor.yaml /etc/ingestor/config.yaml
COPY ingestor/examples/schemas /etc/ingestor/schemas

ENV PATH="/opt/venv/bin:${PATH}" \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1

USER 10001:10001
EXPOSE 9108

# Liveness for plain Docker (Kubernetes ignores HEALTHCHECK and uses the probes in deploy/). No curl in slim.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('INGESTOR_METRICS__PORT', '9108') + '/healthz', timeout=4)"]

# Exec form: the Python process is PID 1 and receives SIGTERM itself (drains, commits, exits 0).
STOPSIGNAL SIGTERM
ENTRYPOINT ["ingestor"]
CMD ["run", "--config", "/etc/ingestor/config.yaml"]
