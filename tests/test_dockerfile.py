"""The Dockerfile's structure (no Docker engine runs here): pinned base, offline hub, pinned torch,
the gpu extra, a non-root user before the entrypoint, and the CLI as the entrypoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    pairs = []
    for line in joined:
        keyword, _, rest = line.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


@pytest.fixture(scope="module")
def dockerfile():
    return instructions((ROOT / "Dockerfile").read_text())


def _all(dockerfile, keyword):
    return [(i, args) for i, (k, args) in enumerate(dockerfile) if k == keyword]


def test_base_image_is_cuda_and_pinned_by_exact_tag_or_digest(dockerfile):
    (_, image), = _all(dockerfile, "FROM")
    assert image.startswith("nvidia/cuda:")
    pinned_digest = re.search(r"@sha256:[0-9a-f]{64}$", image)
    exact_tag = re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-[a-z0-9.-]+", image.split("@")[0])
    assert pinned_digest or exact_tag, image
    assert "latest" not in image


def test_hub_is_offline(dockerfile):
    env = " ".join(args for _, args in _all(dockerfile, "ENV"))
    assert re.search(r"\bHF_HUB_OFFLINE=1\b", env)


def test_torch_pair_is_pinned_and_gpu_extra_installed(dockerfile):
    runs = " ".join(args for _, args in _all(dockerfile, "RUN"))
    assert "torch==2.14.1" in runs and "torchvision==0.29.1" in runs
    assert re.search(r"pip install \"?/src\[gpu\]", runs)


def test_runs_as_non_root_user_set_before_the_entrypoint(dockerfile):
    users = _all(dockerfile, "USER")
    (entry_index, _), = _all(dockerfile, "ENTRYPOINT")
    assert users, "no USER instruction"
    last_index, last_user = users[-1]
    assert last_index < entry_index
    assert last_user.split(":")[0] not in ("root", "0")


def test_entrypoint_is_the_cli_in_exec_form(dockerfile):
    (_, entry), = _all(dockerfile, "ENTRYPOINT")
    assert json.loads(entry) == ["cbpt-guard"]


def test_build_context_leaves_out_the_venv_and_git_but_keeps_what_pip_needs():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv"} <= ignored
    assert not {"cbpt_guard", "pyproject.toml", "README.md", "policies", "templates"} & ignored
