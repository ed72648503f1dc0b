# syntax=docker/dockerfile:1
# cbpt-guard for GPU runners; the same image runs on a machine without a GPU (on the CPU, slower).
#
# Base: NVIDIA's CUDA 12.8.1 runtime with cuDNN (onnxruntime-gpu needs cuDNN) on Ubuntu 24.04
# (Python 3.12). Pinned by exact tag, not by digest: the digest is not stated here because it
# could not be verified when this file was written. To pin it, see docs/docker.md.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

LABEL org.opencontainers.image.title="cbpt-guard" \
      org.opencontainers.image.description="A gate for CLIP-style checkpoints: backdoor detection, purification, ONNX export, audit reports" \
      org.opencontainers.image.licenses="Apache-2.0"

# No model hub at run time: checkpoints come from the mounted folder, never from a download.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VIRTUAL_ENV=/opt/cbpt-guard \
    PATH=/opt/cbpt-guard/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# torch and torchvision first, as the pair the package is pinned to; their wheels bring
# their own CUDA libraries, so the image works with any driver recent enough for CUDA 12.
RUN python3 -m venv /opt/cbpt-guard \
    && python -m pip install --upgrade pip \
    && python -m pip install torch==2.14.1 torchvision==0.29.1

# The package with its gpu extra (onnxruntime-gpu, which also has the CPU provider). The
# source is bind-mounted for the build only (writes to it are discarded), so no layer keeps it.
RUN --mount=type=bind,target=/src,rw python -m pip install "/src[gpu]" \
    && cbpt-guard --version

# Run as an unprivileged user; /work is where the repository or model folder is mounted.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin cbpt \
    && mkdir -p /work && chown cbpt:cbpt /work
USER cbpt
WORKDIR /work

ENTRYPOINT ["cbpt-guard"]
CMD ["--help"]
