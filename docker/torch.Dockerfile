# gridrun's PyTorch image: PyTorch with CUDA, the schemas, the worker and its trainer; no Ray, no
# Docker SDK. Built by `gridrun images build` (tag gridrun-torch:<version>-<hash of this file>),
# or by hand from the repository root:  docker build -f docker/torch.Dockerfile -t gridrun-torch .
# Classic builder compatible (no BuildKit features): Debian's docker.io has no buildx.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- deps: the project's dependency list, read from pyproject.toml. Only the list reaches the
# builder (COPY --from is cached by content), so edits elsewhere in pyproject.toml rebuild nothing.
FROM ${BASE_IMAGE} AS deps
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['torch']))" > /tmp/requirements.txt

# ---- builder: a virtualenv with the framework and the project's dependencies -----------------
FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180
# A proxy CA for pip, if one was given (docker/pip-ca/README.md). Only this stage sees it.
COPY docker/pip-ca/ /tmp/pip-ca/
RUN [ ! -f /tmp/pip-ca/ca.crt ] || export PIP_CERT=/tmp/pip-ca/ca.crt; \
    python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade "pip>=24" "setuptools>=68"

# The largest layer first, so that it stays cached while anything below changes.
# The same versions the host's venv is capped at (/etc/xdg/pip/constraints.txt); PyPI's Linux
# wheels of torch are the CUDA build.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN [ ! -f /tmp/pip-ca/ca.crt ] || export PIP_CERT=/tmp/pip-ca/ca.crt; \
    /opt/venv/bin/pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# The project's own dependencies, with the framework pinned as above.
COPY --from=deps /tmp/requirements.txt /tmp/deps/requirements.txt
RUN [ ! -f /tmp/pip-ca/ca.crt ] || export PIP_CERT=/tmp/pip-ca/ca.crt; \
    /opt/venv/bin/pip install -r /tmp/deps/requirements.txt "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# ---- the image: the builder's venv, a non-root user, the project code --------------------------
FROM ${BASE_IMAGE}
RUN useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin gridrun
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

COPY pyproject.toml README.md /tmp/gridrun/
COPY schemas /tmp/gridrun/schemas
COPY runner /tmp/gridrun/runner
# Offline: every dependency is already in the venv.
RUN pip install --no-deps --no-index --no-build-isolation /tmp/gridrun \
 && rm -rf /tmp/gridrun \
 && python -c "import runner.train.worker, schemas, torch, torchvision"

ARG GRIDRUN_VERSION=""
LABEL org.opencontainers.image.title="gridrun-torch" \
      org.opencontainers.image.description="gridrun worker with PyTorch" \
      org.opencontainers.image.version="${GRIDRUN_VERSION}" \
      gridrun.framework="torch" \
      gridrun.python="/opt/venv/bin/python"
USER 1000:1000
WORKDIR /home/gridrun
CMD ["python", "-m", "runner.train.worker", "--help"]
