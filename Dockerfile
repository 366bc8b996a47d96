# The stablecog-gateway image: docker build -t stablecog-gateway .
#
# Two stages on one pinned base: the builder makes a virtualenv with the runtime
# dependencies at the versions of requirements.lock plus the project itself; the final stage
# copies only that virtualenv. No compiler, pip cache or source tree reaches the image.
# Both stages use the same base so the venv's interpreter links match (tests/k8s checks it).
# For reproducible builds pin the digest too (python:3.11.14-slim-trixie@sha256:...).
FROM python:3.11.14-slim-trixie AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, so this layer is rebuilt only when the lock or the dependency list
# changes. requirements.lock pins the runtime dependencies only (the development tools are
# in requirements-dev.lock, outside the build context); installing pyproject's dependencies
# with the lock as constraints installs what pyproject asks for, each at its locked version
# (tests/k8s checks the lock pins all of them). Wheels only: no compiler needed.
COPY requirements.lock pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > runtime-requirements.txt \
    && pip install --only-binary=:all: --constraint requirements.lock --requirement runtime-requirements.txt

# Then the project itself, without touching the dependencies installed above. pip and
# setuptools are not needed at run time (a quarter of the venv): they stay behind.
COPY README.md ./
COPY gateway ./gateway
COPY emulator ./emulator
RUN pip install --no-deps . \
    && pip check \
    && pip uninstall --yes pip setuptools

FROM python:3.11.14-slim-trixie
LABEL org.opencontainers.image.title="stablecog-gateway" \
      org.opencontainers.image.description="gRPC gateway to Stablecog's image generation API" \
      org.opencontainers.image.licenses="Apache-2.0"
# The gateway writes nothing to disk: the image runs with a read-only root filesystem, so
# Python must not try to write bytecode (the venv's modules were compiled by pip).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
# A named account for the numeric uid the Kubernetes manifests run as (runAsUser: 10001).
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gateway
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
# gRPC (GATEWAY_LISTEN) and Prometheus metrics (GATEWAY_METRICS_LISTEN).
EXPOSE 50051 9464
# Kubernetes probes the gRPC health service natively; a Docker HEALTHCHECK would need a
# client in the image and would break under TLS.
# checkov:skip=CKV_DOCKER_2: health is checked by the orchestrator's gRPC probes
ENTRYPOINT ["stablecog-gateway"]
