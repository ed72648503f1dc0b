"""Read a policy file safely and validate it, naming the file, line and key of every problem.

The YAML is composed into a node tree by a :class:`yaml.SafeLoader` subclass that
refuses anchors and aliases (so no billion-laughs expansion can happen), caps the
number of nodes and the nesting depth, and never constructs arbitrary objects:
scalars are turned into plain values here, by tag, and every other tag is refused.
Each key's line is kept so that pydantic's error locations map back to the file:

    policies/x.yaml:12: detection.budget.steps: Input should be a valid integer

Plain scalars are typed as YAML 1.2's core schema types them, not as PyYAML's
YAML 1.1: only decimal numbers are numbers and only true/false are booleans.
A plain value that YAML 1.1 would read otherwise (``0x12C``, ``5:00``, which
1.1 reads as 300, ``3_00``, ``0300``, ``yes``, ``off``) is refused with a hint,
so that a policy means the same to every reader of it.
"""

from __future__ import annotations

import dataclasses
import difflib
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
_DECIMAL_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")

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
    policy = _validate(source, text, folder=Path(source).parent)
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

    A path that is not a file but whose name is a ready policy's
    (``strict.yaml``, ``policies/strict.yaml`` outside the repository) is not
    quietly swapped for that policy, since a gate must run the policy it was
    given; the error names the ready policy to ask for instead. A misspelt name
    gets the nearest ready one.
    """
    text = str(name_or_path)
    if not _READY_NAME.fullmatch(text):
        try:
            return load_policy(name_or_path)
        except PolicyError as error:
            raise _with_ready_hint(error, Path(text)) from None
    for folder in ready_policy_dirs():
        candidate = folder / f"{text}.yaml"
        if candidate.is_file():
            return load_policy(candidate)
    names = ready_policy_names()
    near = difflib.get_close_matches(text, names, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    known = ", ".join(names) or "none installed"
    raise PolicyError([PolicyProblem(text, None, None,
                                     f"no ready policy of that name; {hint}(ready policies: {known})")])


def _with_ready_hint(error: PolicyError, path: Path) -> PolicyError:
    """A missing policy file named like a ready policy: say how to ask for the ready one."""
    first = error.problems[0]
    if len(error.problems) != 1 or first.message != "no such policy file" or path.suffix not in (".yaml", ".yml"):
        return error
    if path.stem not in ready_policy_names():
        return error
    message = f"no such policy file; the ready policy of that name is --policy {path.stem}"
    return PolicyError([first._replace(message=message)])


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


def _validate(source: str, text: str, folder: Path | None = None) -> Policy:
    """Text -> plain data with key lines -> Policy, every problem mapped to a file line.

    ``folder`` is the policy file's directory, which a calibration file it names
    must lie in (None for text held in memory: then only the name is checked).
    """
    data, lines = _parse(source, text)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as error:
        problems = [_problem(source, e, lines) for e in error.errors()]
        raise PolicyError(sorted(problems, key=lambda p: (p.line or 0))) from None
    _check_calibration_path(source, policy, lines, folder)
    return policy


def _check_calibration_path(source: str, policy: Policy, lines: dict[KeyPath, int], folder: Path | None) -> None:
    """Refuse a calibration file outside the policy file's folder (an absolute path, ``..``, a link out).

    The policy is what a pull request or a shared repository may change, and a
    calibration decides what counts as a backdoor: it must travel with the
    policy it belongs to, never point at whatever a path reaches on the machine.
    """
    named = policy.detection.calibration
    if named is None or named == "builtin":
        return
    key = ("detection", "calibration")
    line = lines.get(key, lines.get(("detection",)))
    relative = Path(named)
    if relative.is_absolute() or named.startswith(("/", "\\")) or ".." in relative.parts or "\\" in named:
        raise PolicyError([PolicyProblem(source, line, "detection.calibration",
                                         f"{_short(named)} must be a path inside the policy file's folder "
                                         "(no absolute path, no '..')")])
    if folder is None:
        return
    base = folder.resolve()
    if not (base / relative).resolve().is_relative_to(base):
        raise PolicyError([PolicyProblem(source, line, "detection.calibration",
                                         f"{_short(named)} leads outside the policy file's folder (a link)")])


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


_YAML11_TYPED = {_YAML + "int", _YAML + "float", _YAML + "bool"}
_YAML11_NUMBER = [regexp for resolvers in yaml.SafeLoader.yaml_implicit_resolvers.values()
                  for tag, regexp in resolvers if tag in (_YAML + "int", _YAML + "float")]
_YAML11_BOOL = re.compile(r"(?:y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF)\Z")
# YAML 1.2's core schema: the only plain scalars that are not text (null and timestamps keep PyYAML's rules)
_GuardedLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML11_TYPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_GuardedLoader.add_implicit_resolver(_YAML + "bool", re.compile(r"(?:true|True|TRUE|false|False|FALSE)\Z"),
                                     list("tTfF"))
_GuardedLoader.add_implicit_resolver(_YAML + "int", re.compile(r"[-+]?[0-9]+\Z"), list("-+0123456789"))
_GuardedLoader.add_implicit_resolver(
    _YAML + "float",
    re.compile(r"(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
               r"|\.(?:nan|NaN|NAN))\Z"),
    list("-+0123456789."))


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
    if node.style is None and (tag == _YAML + "str" or tag == _YAML + "int" and not _DECIMAL_INT.fullmatch(node.value)):
        _refuse_yaml11_reading(source, node, path)
    builders = {
        _YAML + "str": loader.construct_scalar,
        _YAML + "timestamp": loader.construct_scalar,
        _YAML + "int": _decimal_int,
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


def _decimal_int(node: yaml.ScalarNode) -> int:
    """A YAML 1.2 integer in decimal; a leading zero (an octal number to YAML 1.1) is refused as ambiguous."""
    if not _DECIMAL_INT.fullmatch(node.value):
        raise ValueError(node.value)
    return int(node.value, 10)


def _refuse_yaml11_reading(source: str, node: yaml.ScalarNode, path: KeyPath) -> None:
    """Refuse a plain value that YAML 1.1 would read as a number or a boolean and YAML 1.2 as text."""
    value = node.value
    if any(regexp.match(value) for regexp in _YAML11_NUMBER):
        raise _node_problem(source, node, path, f"{_short(value)} is not a decimal number (YAML 1.1 and 1.2 read "
                                                "hexadecimal, a leading 0, 1_000 and 5:00 differently); write plain "
                                                "decimal digits, or quote it if text is meant")
    if _YAML11_BOOL.match(value):
        raise _node_problem(source, node, path, f"{_short(value)} is a boolean to YAML 1.1 and text to YAML 1.2; "
                                                "write true or false, or quote it if text is meant")


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
        near = difflib.get_close_matches(str(loc[-1]), allowed or (), n=1, cutoff=0.6)
        message = "unknown key" + (f" (did you mean {near[0]!r}?)" if near else "") \
            + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "tuple_type":
        message = "Input should be a list"
    else:
        message = error["msg"].removeprefix("Value error, ")
    return PolicyProblem(source, lines[known], _dotted(loc), message)

