#!/usr/bin/env bash
# The prepared GPU check: the full default `cbpt-guard check` (zero-data, export included) of a random-weight
# open_clip ViT-B-32 with 1,000 classes and a ViT-L-14 with 100, on one CUDA GPU, with per-stage timings.
#
#   benchmarks/gpu_check.sh --download [WHEELS]   here: fetch the wheels the GPU machine lacks (default folder
#                                                 benchmarks/wheels, git-ignored) for Python 3.11 to 3.13
#   benchmarks/gpu_check.sh --dry-run [WHEELS]    anywhere: check the wheel folder, install from it, import
#                                                 everything and resolve the commands; runs no check
#   benchmarks/gpu_check.sh [WHEELS]              on the GPU machine: install, then run both checks
#
# The GPU machine brings its own PyTorch (and timm, onnx, onnxruntime); the project runs on it from this tree
# (PYTHONPATH), never reinstalling torch. Wheels come only from WHEELS (--no-index). Parity runs on whatever
# onnxruntime provides there (onnxruntime-gpu is too large to carry): the results name the provider.
# The checks are bounded so the whole script ends within 8 minutes on one H100; a check cut off by its bound
# is recorded as such in benchmarks/results/gpu_check.json, which benchmarks/SCALE.md then shows.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODE=run
case "${1:-}" in
  --download) MODE=download; shift ;;
  --dry-run) MODE=dry-run; shift ;;
esac
WHEELS=${1:-benchmarks/wheels}

# What the project needs beyond the machine's own torch, torchvision, timm, numpy, onnx and onnxruntime, pinned
# to the versions its tests ran with (some need Python 3.11 or later).
PACKAGES="annotated-types==0.8.0 anyio==4.16.0 certifi==2026.10.19.post1 cffi==2.1.1 charset-normalizer==3.5.3
click==8.5.1 cryptography==50.0.2 filelock==4.3.2 fsspec==2026.9.0 ftfy==6.3.1 h11==0.16.0 hf-xet==1.8.0
httpcore2==2.17.0 httpx2==2.17.0 huggingface-hub==2.5.0 idna==3.21 jinja2==3.1.6 markdown-it-py==4.3.0
markupsafe==3.0.4 mdurl==0.1.2 open-clip-torch==3.3.0 packaging==26.4 pycparser==3.12 pydantic==2.14.4
pydantic-core==2.50.5 pygithub==2.10.0 pygments==2.21.0 pyjwt==2.15.1 pynacl==1.6.2 pyyaml==6.0.4
regex==2026.12.2 requests==2.34.2 rich==15.0.0 safetensors==0.8.0 tqdm==4.70.1 truststore==0.10.5
typing-extensions==4.16.0 typing-inspection==0.4.5 urllib3==2.8.0 wcwidth==0.9.5"
NEEDED="open-clip-torch pydantic pygithub click pyyaml jinja2 rich safetensors"

if [ "$MODE" = download ]; then
  mkdir -p "$WHEELS"
  for version in 3.11 3.12 3.13; do
    # shellcheck disable=SC2086
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$WHEELS" --python-version "$version" \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any $PACKAGES
  done
  du -sh "$WHEELS"
  exit 0
fi

if [ ! -d "$WHEELS" ] || ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  echo "gpu_check: error: no wheels in $WHEELS (run benchmarks/gpu_check.sh --download $WHEELS where pip can reach PyPI)" >&2
  exit 4
fi
size=$(du -sm "$WHEELS" | cut -f1)
if [ "$size" -gt 64 ]; then
  echo "gpu_check: error: $WHEELS holds $size MiB of wheels, more than the 64 MiB that can travel" >&2
  exit 4
fi

# Install only what is missing, only from the folder; the machine's torch stays as it is.
# shellcheck disable=SC2086
"$PY" -m pip install --quiet --no-index --find-links "$WHEELS" $NEEDED
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

"$PY" - <<'EOF'
import importlib

import torch

for name in ("open_clip", "pydantic", "github", "onnx", "onnxruntime", "timm", "cbpt_guard.pipeline",
             "cbpt_guard.cli.main"):
    importlib.import_module(name)
import onnxruntime

print(f"gpu_check: torch {torch.__version__}, CUDA {'available: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NOT available'}; "
      f"onnxruntime {onnxruntime.__version__} providers {onnxruntime.get_available_providers()}")
EOF
"$PY" -m cbpt_guard check --help >/dev/null
if "$PY" -m cbpt_guard check --help | grep -q -- "--device"; then device_flag=yes; else device_flag=no; fi
echo "gpu_check: check takes --device: $device_flag"

if [ "$MODE" = dry-run ]; then
  echo "gpu_check: dry run: wheels, imports and commands are in order; no check was run"
  exit 0
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "gpu_check: error: no CUDA device here" >&2; exit 3; }
# Both checks and making their models within 420 s (scale.py shares it out), the installs before: within 8 minutes.
# The outer timeout is only a backstop; past it nothing would be written.
exec timeout 460 "$PY" benchmarks/scale.py --gpu-check --gpu-deadline-s 420 --threads "$(nproc)" \
  --work /tmp/cbpt-gpu-check
