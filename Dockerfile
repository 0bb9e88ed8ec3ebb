# mobilenet-serve container image (see docs/deploy.md).
#
# Builds with Debian's own Docker 20.10 (DOCKER_BUILDKIT=1, the daemon's built-in
# BuildKit) and with current Docker: no `# syntax=` line (it would pull a frontend
# image), no heredocs; RUN --mount and ARG before FROM only.
#
# Targets:
#   cpu (default, last stage)  no torch: TF-origin variants on LiteRT (int8), ~1/3 GB
#   gpu                        + torch/torchvision with CUDA 12 wheels from the index;
#                              run with the NVIDIA container toolkit (`--gpus all`).
#
#   docker build -t mobilenet-serve:cpu .
#   docker build --target gpu -t mobilenet-serve:gpu .
#   # air-gapped: a local base image, the package index from pip's own variables, and
#   # the weights from an internal artifact server (or a mirror served on loopback):
#   python3 -m http.server -d ../shared/pretrained/tflite --bind 127.0.0.1 8765 &
#   DOCKER_BUILDKIT=1 docker build --network host \
#       --build-arg BASE_IMAGE=registry.internal/python:3.11-slim-bookworm \
#       --build-arg PIP_INDEX_URL=https://pypi.internal/simple \
#       --build-arg WEIGHTS_MIRROR=http://127.0.0.1:8765/ --build-arg WEIGHTS=default \
#       -t mobilenet-serve:cpu .
#   # current Docker only: a mirror directory as a named build context
#   docker build --build-context mirror=../shared/pretrained/tflite \
#       --build-arg WEIGHTS=default -t mobilenet-serve:cpu .
#   # pip settings with credentials stay out of the image: a BuildKit secret
#   docker build --secret id=pip.conf,src=$HOME/.config/pip/pip.conf -t mobilenet-serve:cpu .
#   # no baked weights (mount them at /app/weights at run time instead)
#   docker build --build-arg WEIGHTS=none -t mobilenet-serve:cpu-noweights .
#
# Weights are fetched (sha256-checked) at BUILD time, never at container start.

# Any Debian-family image with Python >= 3.11 and `python -m venv` (python3-venv).
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
# Which variants the weights stages bake in:
#   all      every variant the image can serve: `mobilenet-serve weights fetch --all`
#            (the cpu image has no torch: every TF-origin variant)
#   default  the CLI's default set: what the mirror holds (fully offline with a
#            partial mirror), or every variant without one
#   none     no weights (mount them at /app/weights at run time)
ARG WEIGHTS=all
# A directory in the build or an http(s) base URL holding the upstream weight files.
ARG WEIGHTS_MIRROR=

# ---------------------------------------------------------------------------
# base: common Python runtime settings for every stage.
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ---------------------------------------------------------------------------
# builder-cpu: the application and its dependencies in /opt/venv, without torch.
# The package index is pip's own business: PIP_INDEX_URL / PIP_EXTRA_INDEX_URL /
# PIP_TRUSTED_HOST build args (unset: pip's default), or a pip.conf passed as the
# BuildKit secret `pip.conf`. Downloads are cached across builds (cache mount).
FROM base AS builder-cpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
WORKDIR /src
COPY pyproject.toml README.md* ./
# Dependencies first (from pyproject.toml), so a code change reuses this layer.
# hadolint ignore=DL3042 # the pip cache is a BuildKit cache mount, not an image layer
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    python -m venv /opt/venv \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY app ./app
# hadolint ignore=DL3042 # the pip cache is a BuildKit cache mount, not an image layer
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
    && pip uninstall -y -q pip \
    && python -c "import sys, app.api, app.cli; heavy = {'torch', 'torchvision'} & set(sys.modules); assert not heavy, heavy" \
    && if python -c "import torch" 2>/dev/null; then echo "torch in the cpu image" >&2; exit 1; fi

# ---------------------------------------------------------------------------
# builder-gpu: same plus the `torch` extra (the index's default torch wheels bring
# the CUDA 12 runtime as nvidia-* wheels; the host only needs the NVIDIA driver).
FROM base AS builder-gpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY app ./app
# hadolint ignore=DL3013,DL3042 # installs the local project (pins in pyproject.toml); cache mount
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    python -m venv /opt/venv \
    && pip install ".[torch]" \
    && python -c "import torch, app; print('torch', torch.__version__)"

# ---------------------------------------------------------------------------
# mirror: default for the optional named build context `mirror` (current Docker:
# `--build-context mirror=DIR` replaces this stage with DIR). The marker file says
# "no mirror given". Old BuildKit: serve the directory and pass WEIGHTS_MIRROR=URL.
FROM scratch AS mirror
COPY deploy/docker/no-mirror /.no-mirror

# ---------------------------------------------------------------------------
# weights: fetch (HTTPS, sha256-checked) from WEIGHTS_MIRROR, the mirror context or
# upstream into /opt/weights (deploy/docker/fetch-weights.sh). Without torch, TF-origin
# variants are kept as their verified .tflite files: what LiteRT runs.
FROM builder-cpu AS weights
ARG WEIGHTS
ARG WEIGHTS_MIRROR
ENV MOBILENET_WEIGHTS_DIR=/opt/weights
RUN --mount=type=bind,from=mirror,target=/mirror \
    --mount=type=bind,source=deploy/docker/fetch-weights.sh,target=/usr/local/bin/fetch-weights \
    sh /usr/local/bin/fetch-weights

# weights-gpu: the same with torch, so every variant is also converted for torch/CUDA.
FROM builder-gpu AS weights-gpu
ARG WEIGHTS
ARG WEIGHTS_MIRROR
ENV MOBILENET_WEIGHTS_DIR=/opt/weights
RUN --mount=type=bind,from=mirror,target=/mirror \
    --mount=type=bind,source=deploy/docker/fetch-weights.sh,target=/usr/local/bin/fetch-weights \
    sh /usr/local/bin/fetch-weights

# ---------------------------------------------------------------------------
# runtime: everything the cpu and gpu images share (user, env, health, entry).
FROM base AS runtime
ARG APP_UID=10001
ARG APP_GID=10001
# No useradd: minimal bases (debootstrap minbase) do not ship it.
RUN echo "app:x:${APP_GID}:" >> /etc/group \
    && echo "app:x:${APP_UID}:${APP_GID}:mobilenet-serve:/app:/usr/sbin/nologin" >> /etc/passwd \
    && mkdir -p /app/weights \
    && chown -R "${APP_UID}:${APP_GID}" /app
WORKDIR /app
# Container defaults; every one can be overridden with `-e` / compose / k8s env.
# The batching knobs (MOBILENET_MAX_BATCH_SIZE, MOBILENET_MAX_WAIT_MS,
# MOBILENET_QUEUE_LIMIT) keep the service's own defaults. MOBILENET_THREADS is
# deliberately unset: the service defaults to the CPUs in its affinity mask,
# which does NOT see a CPU quota (docker --cpus, k8s limits) -- set it to the
# replica's CPU limit there (compose and k8s manifests do).
# The caches point at /tmp so the container also runs with a read-only root
# filesystem (/tmp is a tmpfs/emptyDir in compose and k8s).
ENV MOBILENET_HOST=0.0.0.0 \
    MOBILENET_PORT=8000 \
    MOBILENET_DEVICE=cpu \
    MOBILENET_WEIGHTS_DIR=/app/weights \
    MOBILENET_MAX_UPLOAD_BYTES=16777216 \
    MOBILENET_SHUTDOWN_GRACE_S=30 \
    MOBILENET_LOG_JSON=true \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/torch
EXPOSE 8000 8001
# Health = /readyz: 503 while loading, while draining on SIGTERM, and when an
# inference worker died or one batch ran over 30 s; no answer within the timeout
# (a hung process) fails it too. Liveness-only /healthz would stay green while the
# models are broken. python is always present in the image (curl is not).
HEALTHCHECK --interval=10s --timeout=4s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('MOBILENET_PORT', '8000'), timeout=3)"]
# On SIGTERM the service drains in-flight requests for up to
# MOBILENET_SHUTDOWN_GRACE_S (30 s); give the runtime longer than that
# (compose stop_grace_period 40s, k8s terminationGracePeriodSeconds 60).
STOPSIGNAL SIGTERM
USER 10001:10001
# exec form: mobilenet-serve is PID 1 (or a child of `--init`) and receives
# SIGTERM directly. `docker run IMAGE weights fetch ...` also works.
ENTRYPOINT ["mobilenet-serve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------
# gpu: CUDA torch. Needs `--gpus all` (docker) or an nvidia.com/gpu limit (k8s).
FROM runtime AS gpu
ENV MOBILENET_DEVICE=cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=builder-gpu /opt/venv /opt/venv
COPY --from=weights-gpu --chown=10001:10001 /opt/weights /app/weights

# ---------------------------------------------------------------------------
# cpu (default target: keep it the LAST stage). No torch: LiteRT serves every
# TF-origin variant; asking it for torch, ONNX or CUDA fails at start-up.
FROM runtime AS cpu
COPY --from=builder-cpu /opt/venv /opt/venv
COPY --from=weights --chown=10001:10001 /opt/weights /app/weights
