"""Shared test settings: offline hub, one torch thread per process, fixed seeds."""

from __future__ import annotations

import os

# open_clip otherwise retries a model hub for ~47 s before failing on remote names.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
