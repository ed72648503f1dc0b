# syntax=docker/dockerfile:1
# cbpt-guard for GPU runners; the same image runs on a machine without a GPU (on the CPU, slower).
#
# One CUDA stack. torch 2.14.1 as PyPI ships it for Linux x86_64 is the CUDA 13.0 build, and its CUDA
# libraries (runtime, cuBLAS, cuDNN, NCCL, ...) are pip packages that torch pins exactly; onnxruntime-gpu
# 1.31.1 is built for CUDA 13 as well and loads the same packages. So the base is plain Debian with
# Python, and no CUDA toolkit: a CUDA base image would add a second copy of those libraries.
# Python 3.11, the version the lock's markers were evaluated for (requirements/action-gpu.lock).
#
# Host needs, for the GPU: an NVIDIA driver 580.65.06 or newer (CUDA 13.0's minimum; older drivers,
# including every CUDA-12-era driver, cannot run it) and the NVIDIA Container Toolkit (`--gpus all`).
# Size: 3.34 GB of wheels (computed from the registries, not measured: benchmarks/IMAGE.md), plus the base.
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="cbpt-guard" \
      org.opencontainers.image.description="A gate for CLIP-style checkpoints: backdoor detection, purification, ONNX export, audit reports" \
      org.opencontainers.image.licenses="Apache-2.0"

# No model hub at run time: checkpoints come from the mounted folder, never from a download.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VIRTUAL_ENV=/opt/cbpt-guard \
    PATH=/opt/cbpt-guard/bin:$PATH

# The locked dependency set of the gpu flavour, the same file the Action installs and keys its cache on:
# torch and torchvision first (the pair the package is pinned to), then every other package at the
# lock's exact version, torch's CUDA 13 packages among them.
RUN --mount=type=bind,source=requirements/action-gpu.lock,target=/tmp/action-gpu.lock \
    python -m venv /opt/cbpt-guard \
    && python -m pip install --no-cache-dir --no-deps torch==2.14.1 torchvision==0.29.1 \
    && python -m pip install --no-cache-dir -r /tmp/action-gpu.lock

# The package itself, without touching the locked set. The source is bind-mounted for the build only
# (writes to it are discarded), so no layer keeps it.
RUN --mount=type=bind,target=/src,rw \
    python -m pip install --no-cache-dir --no-deps --no-build-isolation /src \
    && python -m pip check \
    && cbpt-guard --version

# Run as an unprivileged user; /work is where the repository or model folder is mounted.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin cbpt \
    && mkdir -p /work && chown cbpt:cbpt /work
USER 10001:10001
WORKDIR /work

ENTRYPOINT ["cbpt-guard"]
CMD ["--help"]
