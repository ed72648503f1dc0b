"""The Dockerfile, parsed into instructions (no Docker engine runs here): one CUDA stack that matches the torch
build, the Action's lock installed, the host driver it needs stated, offline hub, non-root user, CLI entrypoint."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
GPU_LOCK = ROOT / "requirements" / "action-gpu.lock"


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword, its ``--flag=value`` options, the rest, and its first line."""

    keyword: str
    flags: dict[str, str]
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array form's words, or None for the shell form."""
        try:
            words = json.loads(self.args)
        except ValueError:
            return None
        return words if isinstance(words, list) else None


def parse(text: str) -> tuple[list[Instruction], list[str]]:
    """(instructions, comments): continuation lines joined, comments and blank lines inside one dropped.

    Follows the Dockerfile reference: a line ending in the escape character
    (``\\``) continues, a line whose first non-blank character is ``#`` is a
    comment (also inside a continued instruction), parser directives are the
    leading ``# name=value`` comments.
    """
    instructions, comments = [], []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            comments.append(stripped.lstrip("#").strip())
            continue
        if not stripped:
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        instructions.append(_instruction(pending + stripped, start))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions, comments


def _instruction(line: str, number: int) -> Instruction:
    keyword, _, rest = line.partition(" ")
    flags = {}
    rest = rest.strip()
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        name, _, value = flag[2:].partition("=")
        flags[name] = value
        rest = rest.strip()
    return Instruction(keyword.upper(), flags, rest, number)


@pytest.fixture(scope="module")
def parsed():
    return parse(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def dockerfile(parsed):
    return parsed[0]


def _all(dockerfile, keyword):
    return [i for i in dockerfile if i.keyword == keyword]


def _lock() -> dict[str, str]:
    return dict(line.split("==") for line in GPU_LOCK.read_text().splitlines() if line and not line.startswith("#"))


def _env(dockerfile) -> dict[str, str]:
    values = {}
    for instruction in _all(dockerfile, "ENV"):
        values |= dict(word.split("=", 1) for word in shlex.split(instruction.args))
    return values


def test_parser_joins_continuations_and_keeps_flags():
    instructions, comments = parse("# syntax=docker/dockerfile:1\nFROM a:1\n# note\n"
                                   "RUN --mount=type=bind,target=/s \\\n"
                                   "    # inside\n    echo a \\\n    && echo b\nUSER 1:1\n")
    assert [i.keyword for i in instructions] == ["FROM", "RUN", "USER"]
    run = instructions[1]
    assert run.flags == {"mount": "type=bind,target=/s"} and run.args == "echo a && echo b" and run.line == 4
    assert comments == ["syntax=docker/dockerfile:1", "note", "inside"]


def test_one_cuda_stack_a_plain_python_base_pinned_by_exact_tag_or_digest(dockerfile):
    (base,) = _all(dockerfile, "FROM")
    image = base.args
    assert re.fullmatch(r"python:3\.11-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image
    assert "latest" not in image and "cuda" not in image
    runs = " ".join(i.args for i in _all(dockerfile, "RUN"))
    assert not re.search(r"apt-get install[^&]*cuda", runs), "a second CUDA stack from apt"


def test_torch_is_the_cuda_13_build_from_the_lock_the_action_uses(dockerfile):
    lock = _lock()
    runs = _all(dockerfile, "RUN")
    (install,) = [r for r in runs if "action-gpu.lock" in r.flags.get("mount", "")]
    assert "source=requirements/action-gpu.lock" in install.flags["mount"]
    assert f"torch=={lock['torch']}" in install.args and f"torchvision=={lock['torchvision']}" in install.args
    assert re.search(r"pip install --no-cache-dir -r /tmp/action-gpu\.lock", install.args)
    # The CUDA libraries come with torch, as pip packages of one CUDA major version.
    assert lock["nvidia-cuda-runtime"].split(".")[0] == "13" and "onnxruntime-gpu" in lock
    assert not [name for name in lock if name.endswith("-cu12")]


def test_the_host_driver_needed_is_stated_and_matches_the_cuda_of_the_lock(parsed):
    _, comments = parsed
    text = " ".join(comments)
    cuda = ".".join(_lock()["nvidia-cuda-runtime"].split(".")[:2])
    assert f"CUDA {cuda}" in text
    # CUDA 13.0 needs driver 580.65.06 or newer (NVIDIA's CUDA 13.0 release notes).
    assert cuda == "13.0" and re.search(r"driver 580\.65\.06 or newer", text)


def test_package_installed_without_touching_the_lock_and_checked(dockerfile):
    (package,) = [r for r in _all(dockerfile, "RUN") if r.flags.get("mount", "").startswith("type=bind,target=/src")]
    assert re.search(r"pip install --no-cache-dir --no-deps --no-build-isolation /src\b", package.args)
    assert "pip check" in package.args and "cbpt-guard --version" in package.args


def test_hub_is_offline(dockerfile):
    env = _env(dockerfile)
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"


def test_runs_as_non_root_user_set_before_the_entrypoint(dockerfile):
    users = _all(dockerfile, "USER")
    (entry,) = _all(dockerfile, "ENTRYPOINT")
    assert users, "no USER instruction"
    last = users[-1]
    assert dockerfile.index(last) < dockerfile.index(entry)
    assert last.args.split(":")[0] not in ("root", "0")


def test_entrypoint_is_the_cli_in_exec_form(dockerfile):
    (entry,) = _all(dockerfile, "ENTRYPOINT")
    assert entry.exec_form() == ["cbpt-guard"]


def test_build_context_leaves_out_the_venv_and_git_but_keeps_what_pip_needs():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv"} <= ignored
    assert not {"cbpt_guard", "pyproject.toml", "README.md", "policies", "templates", "requirements"} & ignored
