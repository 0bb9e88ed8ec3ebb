# syntax=docker/dockerfile:1.7
#
# mobilenet-serve container image (see docs/deploy.md).
#
# Targets:
#   cpu (default, last stage)  slim Python 3.11 + CPU-only torch wheels
#   gpu                        slim Python 3.11 + the default (CUDA) torch wheels
#                              from PyPI; run with the NVIDIA container toolkit
#                              (`docker run --gpus all`, compose profile `gpu`).
#
#   docker build -t mobilenet-serve:cpu .
#   docker build --target gpu -t mobilenet-serve:gpu .
#   # offline weights: use a local mirror directory instead of upstream downloads
#   docker build --build-context mirror=../shared/pretrained/tflite -t mobilenet-serve:cpu .
#   # offline with a partial mirror: only the variants the mirror holds
#   docker build --build-context mirror=../shared/pretrained/tflite \
#       --build-arg WEIGHTS=default -t mobilenet-serve:cpu .
#   # no baked weights (mount them at /app/weights at run time instead)
#   docker build --build-arg WEIGHTS=none -t mobilenet-serve:cpu-noweights .
#
# Weights are fetched + converted at BUILD time (stage `weights`) and never at
# container start. BuildKit is required (named build contexts, RUN --mount).

# Which variants the `weights` stage bakes in:
#   all      every known variant: `mobilenet-serve weights fetch --all` (default)
#   default  the CLI's default set: what the mirror holds (fully offline with a
#            partial mirror), or every variant without one
#   none     no weights (mount them at /app/weights at run time)
ARG WEIGHTS=all

# ---------------------------------------------------------------------------
# base: common Python runtime settings for every stage.
FROM python:3.11.14-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ---------------------------------------------------------------------------
# builder-cpu: the application and its dependencies in /opt/venv, with the
# CPU-only torch/torchvision wheels from the PyTorch CPU index (~200 MB instead
# of several GB of CUDA libraries). The torch pins must match pyproject.toml.
FROM base AS builder-cpu
WORKDIR /src
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1
# README.md is optional here (glob) so a missing readme never breaks the COPY.
COPY pyproject.toml README.md* ./
COPY app ./app
# torch==2.14.1 is already satisfied by 2.14.1+cpu (PEP 440 local version), so
# pip keeps the CPU wheel and only resolves the remaining dependencies. The
# `litert` extra brings the int8 LiteRT runtime, the CPU default for TF-origin
# variants (the exact reference model; see docs/benchmarks.md).
# hadolint ignore=DL3013 # installs the local project; its pins live in pyproject.toml
RUN pip install --no-cache-dir ".[litert]" \
    && python -c "import torch, app; print('torch', torch.__version__)"

# ---------------------------------------------------------------------------
# builder-gpu: same, but with the default PyPI torch wheels (CUDA 12 runtime
# libraries ship as nvidia-* wheels; the host only needs the NVIDIA driver).
FROM base AS builder-gpu
WORKDIR /src
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md* ./
COPY app ./app
RUN pip install --no-cache-dir . \
    && python -c "import torch, app; print('torch', torch.__version__)"

# ---------------------------------------------------------------------------
# mirror: placeholder default for the optional named build context `mirror`.
# `docker build --build-context mirror=DIR .` replaces this stage with DIR
# (a named context overrides a stage of the same name), so the weights stage
# copies from DIR via MOBILENET_WEIGHTS_MIRROR instead of downloading upstream.
FROM scratch AS mirror
# A marker file instead of an empty stage: bind-mounting a completely empty
# scratch stage is not reliable on every BuildKit version.
COPY <<EOF /.no-mirror
No mirror build context given: weights are downloaded from upstream.
EOF

# ---------------------------------------------------------------------------
# weights: fetch (HTTPS, sha256-checked) or copy from the mirror, then convert
# every variant into /opt/weights. Runs once per build, cached by BuildKit.
FROM builder-cpu AS weights
ARG WEIGHTS
ENV MOBILENET_WEIGHTS_DIR=/opt/weights
RUN --mount=type=bind,from=mirror,target=/mirror \
    mkdir -p /opt/weights \
    && case "${WEIGHTS}" in \
        all) set -- --all ;; \
        default) set -- ;; \
        none) echo "WEIGHTS=none: no weights baked in; mount them at /app/weights"; exit 0 ;; \
        *) echo "WEIGHTS must be all, default or none (got '${WEIGHTS}')" >&2; exit 2 ;; \
    esac \
    && if [ ! -e /mirror/.no-mirror ]; then \
        echo "fetching weights: mirror build context first, upstream for the rest"; \
        MOBILENET_WEIGHTS_MIRROR=/mirror mobilenet-serve weights fetch "$@"; \
    else \
        echo "fetching weights from upstream"; \
        mobilenet-serve weights fetch "$@"; \
    fi \
    && ls -la /opt/weights

# ---------------------------------------------------------------------------
# runtime: everything the cpu and gpu images share (user, env, health, entry).
FROM base AS runtime
ARG APP_UID=10001
ARG APP_GID=10001
RUN groupadd --system --gid "${APP_GID}" app \
    && useradd --system --uid "${APP_UID}" --gid app --home-dir /app \
        --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /app/weights \
    && chown -R app:app /app
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
EXPOSE 8000
# python is always present in the image (curl is not in the slim base).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MOBILENET_PORT', '8000'), timeout=4)"]
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
COPY --from=weights --chown=10001:10001 /opt/weights /app/weights

# ---------------------------------------------------------------------------
# cpu (default target: keep it the LAST stage).
FROM runtime AS cpu
COPY --from=builder-cpu /opt/venv /opt/venv
COPY --from=weights --chown=10001:10001 /opt/weights /app/weights
