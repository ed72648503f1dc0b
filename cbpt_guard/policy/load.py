"""Read a policy file safely and validate it, naming the file, line and key of every problem.

The YAML is composed into a node tree by a :class:`yaml.SafeLoader` subclass that
refuses anchors and aliases (so no billion-laughs expansion can happen), caps the
number of nodes and the nesting depth, and never constructs arbitrary objects:
scalars are turned into plain values here, by tag, and every other tag is refused.
Each key's line is kept so that pydantic's error locations map back to the file:

    policies/x.yaml:12: detection.budget.steps: Input should be a valid integer
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from cbpt_guard.policy.schema import Policy, PolicyError, PolicyProblem, allowed_keys

MAX_POLICY_BYTES = 256 * 1024
"""A policy is a page of settings; anything larger is refused before parsing."""
MAX_NODES = 5_000
MAX_DEPTH = 32

_READY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_YAML = "tag:yaml.org,2002:"
_PLAIN_EXPONENT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+")

KeyPath = tuple  # a path into the document: str keys and int list indices


@dataclasses.dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy with where it came from and the digest of its exact bytes."""

    policy: Policy
    name: str
    """The file's stem, e.g. ``strict`` for ``policies/strict.yaml``."""
    source: str
    """The path (or source name) as given; used in messages and the report."""
    sha256: str
    """SHA-256 of the file's bytes (of the UTF-8 text for :func:`load_policy_text`)."""

    @property
    def calibration_path(self) -> Path | None:
        """The detection calibration file, resolved relative to the policy file's folder; None if unset or builtin."""
        named = self.policy.detection.calibration
        if named is None or named == "builtin":
            return None
        return Path(self.source).parent / named


def load_policy(path: str | os.PathLike[str]) -> LoadedPolicy:
    """Read, parse and validate the policy file at ``path``.

    Raises :class:`PolicyError` (exit 4) for a missing, oversized, non-UTF-8,
    unsafe or invalid file; every message names the file and, where there is one,
    the line and key.
    """
    source = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError:
        raise PolicyError([PolicyProblem(source, None, None, "no such policy file")]) from None
    except IsADirectoryError:
        raise PolicyError([PolicyProblem(source, None, None, "is a folder, not a policy file")]) from None
    except OSError as error:
        raise PolicyError([PolicyProblem(source, None, None, f"cannot read: {error.strerror}")]) from None
    _check_size(source, len(data))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PolicyError([PolicyProblem(source, None, None, f"not UTF-8 text (byte {error.start})")]) from None
    policy = _validate(source, text)
    return LoadedPolicy(policy, Path(source).stem, source, hashlib.sha256(data).hexdigest())


def load_policy_text(text: str, source_name: str) -> LoadedPolicy:
    """Parse and validate policy YAML held in memory; ``source_name`` stands in for the file in messages."""
    data = text.encode("utf-8", errors="surrogatepass")
    _check_size(source_name, len(data))
    policy = _validate(source_name, text)
    return LoadedPolicy(policy, Path(source_name).stem, source_name, hashlib.sha256(data).hexdigest())


def resolve_policy(name_or_path: str | os.PathLike[str]) -> LoadedPolicy:
    """Load a ready policy by name (``strict``) or a policy file by path.

    A bare name, without a folder or a ``.yaml``/``.yml`` suffix, always means a
    ready policy, looked up in the repository's ``policies/`` folder and then in
    an installed copy; anything else is a path.
    """
    text = str(name_or_path)
    if not _READY_NAME.fullmatch(text):
        return load_policy(name_or_path)
    for folder in ready_policy_dirs():
        candidate = folder / f"{text}.yaml"
        if candidate.is_file():
            return load_policy(candidate)
    known = ", ".join(ready_policy_names()) or "none installed"
    raise PolicyError([PolicyProblem(text, None, None, f"no ready policy of that name (ready policies: {known})")])


def ready_policy_dirs() -> list[Path]:
    """The folders ready policies are looked up in, most specific first, those that exist only."""
    package = Path(str(resources.files("cbpt_guard")))
    candidates = [
        package.parent / "policies",  # a source checkout or an editable install
        package / "policies",  # shipped as package data
        Path(sys.prefix) / "share" / "cbpt-guard" / "policies",  # shipped as data files
    ]
    return [c for c in candidates if c.is_dir()]


def ready_policy_names() -> list[str]:
    """The names of the ready policies that :func:`resolve_policy` can find."""
    return sorted({p.stem for folder in ready_policy_dirs() for p in folder.glob("*.yaml")})


def _check_size(source: str, size: int) -> None:
    if size > MAX_POLICY_BYTES:
        message = f"larger than the {MAX_POLICY_BYTES} bytes a policy may have"
        raise PolicyError([PolicyProblem(source, None, None, message)])


def _validate(source: str, text: str) -> Policy:
    """Text -> plain data with key lines -> Policy, every problem mapped to a file line."""
    data, lines = _parse(source, text)
    try:
        return Policy.model_validate(data)
    except ValidationError as error:
        problems = [_problem(source, e, lines) for e in error.errors()]
        raise PolicyError(sorted(problems, key=lambda p: (p.line or 0))) from None


class _GuardedLoader(yaml.SafeLoader):
    """A SafeLoader whose composer refuses anchors and aliases and caps nodes and depth.

    Only the node tree is composed; the constructor's object building is never
    run (scalars are converted one by one in :func:`_scalar`), so the caps hold
    before any value is made and no tag can build an arbitrary object.
    """

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source = source
        self.node_count = 0
        self.depth = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise self._refuse(line, "anchors and aliases (&, *) are not allowed in a policy file")
        self.node_count += 1
        if self.node_count > MAX_NODES:
            raise self._refuse(line, f"more than {MAX_NODES} values; a policy is far smaller")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self._refuse(line, f"nested deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def _refuse(self, line: int, message: str) -> PolicyError:
        return PolicyError([PolicyProblem(self.source, line, None, message)])


def _parse(source: str, text: str) -> tuple[object, dict[KeyPath, int]]:
    """Compose the single YAML document and convert it, keeping the line of every key and item."""
    try:
        loader = _GuardedLoader(text, source)  # the reader checks every character here
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, max(error.position, 0)) + 1
        message = f"not valid YAML: character #x{error.character:04x} is not allowed"
        raise PolicyError([PolicyProblem(source, line, None, message)]) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        detail = ", ".join(part for part in (error.context, error.problem) if part) or "malformed YAML"
        raise PolicyError([PolicyProblem(source, line, None, f"not valid YAML: {detail}")]) from None
    except yaml.YAMLError as error:
        raise PolicyError([PolicyProblem(source, None, None, f"not valid YAML: {error}")]) from None
    if root is None:
        raise PolicyError([PolicyProblem(source, 1, None, "the policy is empty")])
    if not isinstance(root, yaml.MappingNode):
        raise PolicyError([PolicyProblem(source, root.start_mark.line + 1, "(top level)",
                                         "a policy must be a mapping of keys to values")])
    lines: dict[KeyPath, int] = {(): root.start_mark.line + 1}
    return _convert(loader, source, root, (), lines), lines


def _convert(loader: yaml.SafeLoader, source: str, node: yaml.Node, path: KeyPath,
             lines: dict[KeyPath, int]) -> object:
    """Turn a composed node into plain Python data, recording each child's line under its key path."""
    if isinstance(node, yaml.MappingNode):
        if node.tag != _YAML + "map":
            raise _node_problem(source, node, path, f"the tag {node.tag} is not allowed")
        result: dict[str, object] = {}
        for key_node, value_node in node.value:
            key = _key(source, key_node, path)
            if key in result:
                raise _node_problem(source, key_node, path + (key,), "this key appears twice")
            lines[path + (key,)] = key_node.start_mark.line + 1
            result[key] = _convert(loader, source, value_node, path + (key,), lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _YAML + "seq":
            raise _node_problem(source, node, path, f"the tag {node.tag} is not allowed")
        items = []
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            items.append(_convert(loader, source, item, path + (index,), lines))
        return items
    return _scalar(loader, source, node, path)


def _scalar(loader: yaml.SafeLoader, source: str, node: yaml.Node, path: KeyPath) -> object:
    """Plain values only: text, integers, floats, booleans, null; dates stay text for the schema to check."""
    tag = node.tag
    if tag == _YAML + "str" and node.style is None and _PLAIN_EXPONENT.fullmatch(node.value):
        tag = _YAML + "float"  # YAML 1.1 reads 1e-4 as text; everyone means a number
    builders = {
        _YAML + "str": loader.construct_scalar,
        _YAML + "timestamp": loader.construct_scalar,
        _YAML + "int": loader.construct_yaml_int,
        _YAML + "float": loader.construct_yaml_float,
        _YAML + "bool": loader.construct_yaml_bool,
        _YAML + "null": loader.construct_yaml_null,
    }
    if tag not in builders:
        raise _node_problem(source, node, path, f"the tag {tag} is not allowed")
    try:
        return builders[tag](node)
    except (ValueError, KeyError, OverflowError, TypeError, yaml.YAMLError):
        raise _node_problem(source, node, path, f"{_short(node.value)} is not a valid {tag[len(_YAML):]}") from None


def _key(source: str, node: yaml.Node, path: KeyPath) -> str:
    """A mapping key: plain text only (a number, a boolean or a list as a key is a mistake)."""
    if not isinstance(node, yaml.ScalarNode):
        raise _node_problem(source, node, path, "keys must be text, not a list or a mapping")
    if node.tag != _YAML + "str":
        raise _node_problem(source, node, path, f"keys must be text; {_short(node.value)} is not (quote it if meant)")
    return node.value


def _short(value: object) -> str:
    """A value quoted for a message, cut short so that one line stays one line."""
    text = str(value)
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _node_problem(source: str, node: yaml.Node, path: KeyPath, message: str) -> PolicyError:
    return PolicyError([PolicyProblem(source, node.start_mark.line + 1, _dotted(path), message)])


def _dotted(path: tuple) -> str:
    """``('waivers', 0, 'expires')`` -> ``waivers[0].expires``; the empty path is the top level."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _problem(source: str, error: dict, lines: dict[KeyPath, int]) -> PolicyProblem:
    """Map one pydantic error to the line of the deepest key of its location that exists in the file."""
    loc = tuple(error["loc"])
    known = loc
    while known not in lines:
        known = known[:-1]
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = allowed_keys(loc[:-1])
        message = "unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "tuple_type":
        message = "Input should be a list"
    else:
        message = error["msg"].removeprefix("Value error, ")
    return PolicyProblem(source, lines[known], _dotted(loc), message)

