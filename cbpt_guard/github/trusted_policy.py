"""Where the gate's policy comes from in a pull request: never from the head under review.

The Action's ``policy`` input may name a file in the repository. On a pull request
the workspace is the pull request's own checkout, so reading the file from there
lets the pull request write its own gate (a 10-step detection, ``mode: dry-run``,
a waiver for its own digest). So a policy file, and the calibration file it names,
are read from the pull request's *base* commit (``git show <base sha>:<path>``),
copied into the report folder and used from there; or, where no base is known, the
file must match a pinned SHA-256 (the ``policy-sha256`` input). Waivers live in the
policy itself, so they come with it. Outside a pull request (a push, a schedule, a
pre-commit hook) the checkout is the trusted branch and is read as it is, still
checked against the pin when one is given.

Ready policies (``strict``, ``balanced``, ``permissive``) come with the installed
package and are used as they are.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import subprocess
from pathlib import Path, PurePosixPath

from cbpt_guard.errors import UsageError

_READY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A bare name means a ready policy (the rule of :func:`cbpt_guard.policy.load.resolve_policy`)."""
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest policy or calibration file taken from the base commit."""
GIT_TIMEOUT_S = 60


class PolicySourceError(UsageError):
    """The policy cannot be taken from a source the pull request does not control (exit 4)."""


class _BaseUnavailable(PolicySourceError):
    """git could not read a file of the base commit (a shallow clone without it, or no such file there)."""


def trusted_policy(policy: str, *, root: str | os.PathLike[str], folder: str | os.PathLike[str],
                   base_sha: str | None = None, pinned_sha256: str | None = None,
                   under_review: bool = False) -> str:
    """The policy argument the gate may check with; raises :class:`PolicySourceError` where there is none.

    Args:
        policy: a ready policy name, or a policy file (under review: relative to ``root``, or absolute).
        root: the repository checkout.
        folder: where copies taken from the base commit are written.
        base_sha: the base commit of the pull request, if known.
        pinned_sha256: the SHA-256 the policy file's bytes must have.
        under_review: whether ``root`` holds a pull request's head (a pull request event).

    Returns:
        ``policy`` itself for a ready name, a checkout that is not under review,
        or a file outside the repository; otherwise the path of the copy taken
        from the base commit (or, pinned, of the checked file).
    """
    if pinned_sha256 is not None and not _DIGEST.fullmatch(pinned_sha256):
        raise PolicySourceError("the policy SHA-256 pin must be 64 lower-case hex digits")
    if is_ready_name(policy):
        if pinned_sha256 is not None:
            from cbpt_guard.policy.load import resolve_policy

            _check_pin(policy, resolve_policy(policy).sha256, pinned_sha256)
        return policy
    if not under_review:  # the checkout is the branch itself (push, schedule, a pre-commit hook)
        if pinned_sha256 is not None:
            _check_pin(policy, _digest(_read(Path(policy), policy)), pinned_sha256)
        return policy
    base = Path(root).resolve()
    relative = _relative_to_repository(policy, base)
    if relative is None:  # a file outside the checkout: the pull request cannot change it
        if pinned_sha256 is not None:
            _check_pin(policy, _digest(_read(Path(policy), policy)), pinned_sha256)
        return policy
    if base_sha is not None:
        try:
            return _from_base(relative, base, Path(folder), base_sha, pinned_sha256)
        except _BaseUnavailable:
            if pinned_sha256 is None:
                raise
            # The base commit is not in this clone: the pinned digest vouches for the file instead.
    if pinned_sha256 is None:
        raise PolicySourceError(
            f"the policy file {relative!r} would be read from the pull request under review, which could weaken "
            "its own gate: give the base commit (a pull_request event carries it), or pin the policy with "
            "policy-sha256")
    path = base / relative
    _check_pin(relative, _digest(_read(path, relative)), pinned_sha256)
    if _calibration_file(path) is not None:
        raise PolicySourceError(
            f"the pinned policy {relative!r} names a calibration file, which would be read from the pull request "
            "under review: give the base commit, or use a policy with a built-in calibration or a fixed threshold")
    return str(path)


def is_ready_name(policy: str) -> bool:
    """Whether ``policy`` names a ready policy of the installed package rather than a file."""
    return bool(_READY_NAME.fullmatch(policy))


def _from_base(relative: str, root: Path, folder: Path, base_sha: str, pinned_sha256: str | None) -> str:
    """Copy the policy (and the calibration file it names) out of ``base_sha`` into ``folder``; the copy's path."""
    if not _SHA.fullmatch(base_sha):
        raise PolicySourceError(f"the base commit {base_sha!r} is not a full commit SHA")
    data = _git_show(root, base_sha, relative)
    if pinned_sha256 is not None:
        _check_pin(f"{relative} at {base_sha[:12]}", _digest(data), pinned_sha256)
    copy = folder / relative
    _write(copy, data)
    named = _calibration_file(copy)
    if named is not None and not PurePosixPath(named).is_absolute():
        calibration = posixpath.normpath(posixpath.join(posixpath.dirname(relative), named))
        if calibration == ".." or calibration.startswith("../"):
            raise PolicySourceError(f"the policy {relative!r} names a calibration file outside the repository: "
                                    f"{named!r}")
        _write(folder / calibration, _git_show(root, base_sha, calibration))
    return str(copy)


def _calibration_file(policy_file: Path) -> str | None:
    """The calibration file a policy names (relative to the policy's folder), validating the policy; None if none."""
    from cbpt_guard.policy.load import load_policy

    named = load_policy(policy_file).policy.detection.calibration
    return None if named is None or named == "builtin" else str(named)


def _git_show(root: Path, sha: str, relative: str) -> bytes:
    """The bytes of ``relative`` at commit ``sha`` of the repository at ``root``."""
    command = ["git", "-c", f"safe.directory={root}", "-C", str(root), "show", f"{sha}:./{relative}"]
    try:
        done = subprocess.run(command, capture_output=True, timeout=GIT_TIMEOUT_S, check=False,
                              env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")})
    except (OSError, subprocess.TimeoutExpired) as error:
        raise PolicySourceError(f"cannot run git to read {relative!r} from the base commit: {error}") from None
    if done.returncode != 0:
        reason = (done.stderr.decode("utf-8", "replace").strip().splitlines() or ["git failed"])[0][:300]
        raise _BaseUnavailable(
            f"cannot read {relative!r} from the base commit {sha[:12]} ({reason}); the policy must come from the "
            "base branch, not the pull request: check out with fetch-depth: 2 (or 0) so the base commit is "
            "present, or pin the policy with policy-sha256")
    if len(done.stdout) > MAX_FILE_BYTES:
        raise PolicySourceError(f"{relative!r} at the base commit is larger than {MAX_FILE_BYTES} bytes")
    return done.stdout


def _relative_to_repository(policy: str, root: Path) -> str | None:
    """``policy`` as a normalised path relative to ``root``; None for an absolute path outside it.

    A relative path that climbs out of ``root`` with ``..`` is refused: it is
    neither in the repository nor a deliberate absolute location.
    """
    if os.path.isabs(policy):
        try:
            return Path(os.path.normpath(policy)).relative_to(root).as_posix()
        except ValueError:
            return None
    relative = posixpath.normpath(policy.replace(os.sep, "/"))
    if relative == ".." or relative.startswith("../"):
        raise PolicySourceError(f"the policy file {policy!r} is outside the repository")
    return relative


def _check_pin(name: str, actual: str, pinned: str) -> None:
    if actual != pinned:
        raise PolicySourceError(f"the policy {name!r} has SHA-256 {actual}, not the pinned {pinned}: refusing it")


def _read(path: Path, name: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise PolicySourceError(f"cannot read the policy file {name!r}: {error.strerror or error}") from None


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
