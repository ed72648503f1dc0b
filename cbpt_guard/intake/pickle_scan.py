"""Static scan of checkpoint pickles: what would they import, without unpickling them.

A pickle runs code by importing a callable (GLOBAL, INST, STACK_GLOBAL, or the
copyreg extension registry) and calling it (REDUCE, NEWOBJ, OBJ, BUILD). Every
call needs an import first, so a file whose imports all come from
:data:`ALLOWED_GLOBALS` (the tensor-rebuilding machinery a state dict needs) cannot
reach ``os.system`` however its calls are arranged. This module walks the opcodes
with :func:`pickletools.genops`, tracks the stack and the memo just enough to know
which strings STACK_GLOBAL consumes, and refuses anything outside the allowlist.

The scan covers exactly the pickles ``torch.load`` reads: the five pickles at the
head of a legacy file (raw storage bytes follow them), or every ``.pkl`` member of
a zip archive. :func:`starts_as_pickle` says whether bytes are a pickle at all, by
the same walk, so pickles of every protocol (0 and 1 have no header) are found.
"""

from __future__ import annotations

import io
import pickletools
import types
import zipfile
import zlib

# The Python 2 -> 3 renames that both CPython (protocol < 3) and torch's
# weights-only unpickler apply to every import; used to say what a name means.
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from cbpt_guard.errors import MalformedCheckpointError, UnsafeCheckpointError

_STORAGE_TYPES = (
    "Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
    "ComplexFloat", "ComplexDouble",
)  # fmt: skip
_DTYPES = (
    "float16", "float32", "float64", "bfloat16", "complex64", "complex128", "bool",
    "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float8_e4m3fn", "float8_e5m2",
)  # fmt: skip

ALLOWED_GLOBALS: frozenset[str] = frozenset(
    {
        # The container torch.save gives every state dict (and every tensor's hooks).
        "collections.OrderedDict",
        # Tensor and Parameter rebuilders: v1 (old files), v2 (all dtypes with a
        # legacy storage class), v3 (newer dtypes stored as UntypedStorage).
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        # A tensor or Parameter carrying Python attributes is rebuilt through its type.
        "torch._tensor._rebuild_from_type_v2",
        "torch.Tensor",
        "torch.nn.parameter.Parameter",
        "torch.Size",
        "torch.storage.UntypedStorage",
        *(f"torch.{kind}Storage" for kind in _STORAGE_TYPES),
        *(f"torch.{dtype}" for dtype in _DTYPES),
        # numpy arrays and scalars stored beside the weights (metrics, epochs), under
        # both numpy 1 (numpy.core) and numpy 2 (numpy._core) spellings; protocol 2
        # encodes their raw bytes with _codecs.encode.
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.ndarray",
        "numpy.dtype",
        # Protocol 5 rebuilds an array from its buffer (np.frombuffer, then reshape).
        "numpy.core.numeric._frombuffer",
        "numpy._core.numeric._frombuffer",
        "_codecs.encode",
    }
)
"""Every ``module.name`` a torch or numpy state-dict checkpoint needs to import; nothing else."""

# Legacy torch.save: magic number, protocol version, sys info, the object, storage keys.
# torch.load reads these five pickles, then raw storage bytes that are not pickles.
_LEGACY_PICKLE_COUNT = 5
# A data.pkl lists tensors, not weights; even very large models stay far below this.
MAX_MEMBER_BYTES = 256 * 1024 * 1024
_COUNTED_OPS = frozenset(
    {
        "GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX",
        "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID",
    }
)  # fmt: skip
_STRING_OPS = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
_MEMO_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_EXTENSION_OPS = frozenset({"EXT1", "EXT2", "EXT4"})
_DATA_OPS = _STRING_OPS | {"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"}
_MAX_NESTING = 3  # pickles held as data inside pickles are scanned this deep
# Identifying a pickle walks at most this far: a real pickle that gets this far
# with every opcode valid is a pickle; nothing else does by accident.
_IDENTIFY_MAX_BYTES = 64 * 1024
_IDENTIFY_MAX_OPS = 20_000
_MAIN_MODULE_ADVICE = (
    "a class from the script that saved it (__main__) means a pickled object, not a state dict: "
    "save model.state_dict() instead, ideally as safetensors"
)
_GENERIC_ADVICE = (
    "only the imports that rebuild tensors are allowed, so that nothing else can run: re-save the tensors "
    "alone (safetensors.torch.save_file(model.state_dict(), PATH)) and keep other pickled objects out of "
    "the model directory"
)


@dataclass(frozen=True)
class PickleScan:
    """What a scan saw in a file's pickles; produced only when nothing was refused.

    ``globals_seen`` is every import as ``module.name`` (sorted, each once);
    ``opcode_counts`` counts the opcodes that import or call (GLOBAL, REDUCE,
    BUILD, NEWOBJ, ...); ``protocol`` is the highest PROTO seen (0 without one);
    ``pickles`` is how many pickle streams were scanned.
    """

    globals_seen: tuple[str, ...]
    opcode_counts: Mapping[str, int]
    protocol: int
    pickles: int


class _Unknown:
    """A stack value the scan cannot know statically (an object built by the pickle)."""

    def __repr__(self) -> str:
        return "<unknown>"


_UNKNOWN = _Unknown()


class _StackError(ValueError):
    """The opcodes pop more than was pushed: the real unpickler would fail here too."""


@dataclass
class _Findings:
    """What the scan of one file has seen so far, across all its pickles."""

    origin: str
    imports: set[str] = field(default_factory=set)
    refused: dict[str, None] = field(default_factory=dict)  # ordered set
    counts: Counter = field(default_factory=Counter)
    protocol: int = 0
    pickles: int = 0
    where: str = ""  # the zip member being scanned, for messages
    refused_in: dict[str, None] = field(default_factory=dict)  # members with refusals, ordered
    container: str = "pickle"  # what holds the pickle, for messages

    def note_import(self, module: str, name: str) -> None:
        """Record one import and refuse it unless it is on the allowlist."""
        full = f"{module}.{name}"
        self.imports.add(full)
        # A dotted name is resolved attribute by attribute (protocol 4+), so it
        # could walk from an allowed object to anything; no checkpoint needs one.
        if "." in name or full not in ALLOWED_GLOBALS:
            resolved = _resolve_python2_name(module, name)
            meaning = f" (resolves to {resolved})" if resolved != full else ""
            self.refuse(printable(full) + meaning)

    def refuse(self, what: str) -> None:
        """Record a refused import (or one the scan cannot name: extension codes, computed strings)."""
        self.refused[what] = None
        if self.where:
            self.refused_in[printable(self.where)] = None

    def raise_if_refused(self) -> None:
        """Fail closed: any refused import makes the whole file unsafe."""
        if not self.refused:
            return
        found = tuple(self.refused)
        members = f" ({', '.join(self.refused_in)})" if self.refused_in else ""
        advice = _MAIN_MODULE_ADVICE if any(f.startswith("__main__.") for f in found) else _GENERIC_ADVICE
        raise UnsafeCheckpointError(
            f"{self.origin}: refusing to load: its {self.container}{members} imports {', '.join(found)}, "
            f"which no weights-only checkpoint needs; {advice}",
            findings=found,
        )

    def malformed(self, exc: Exception) -> MalformedCheckpointError:
        """Turn a parse failure into the typed error (after unsafe imports are ruled out)."""
        self.raise_if_refused()
        where = f" ({self.where})" if self.where else ""
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return MalformedCheckpointError(f"{self.origin}{where}: not a readable pickle: {detail}")

    def result(self) -> PickleScan:
        """Freeze what was seen into the public result."""
        return PickleScan(
            globals_seen=tuple(sorted(self.imports)),
            opcode_counts=types.MappingProxyType(dict(sorted(self.counts.items()))),
            protocol=self.protocol,
            pickles=self.pickles,
        )


def starts_as_pickle(data: bytes) -> bool:
    """Say whether ``data`` opens with a pickle, of any protocol, by walking its opcodes.

    Protocols 0 and 1 have no PROTO header, so no magic bytes identify them; what
    does is that the opcodes parse and obey the unpickler's stack and memo rules
    up to a STOP that has a value to return (as the real unpickler requires). A
    walk that passes a bound (64 KiB, 20,000 opcodes) with every opcode valid is
    a pickle too: a long protocol-0 pickle, never text or tensor data by chance.
    """
    machine = _StackMachine(strict_memo=True)
    try:
        for count, (op, arg, pos) in enumerate(pickletools.genops(io.BytesIO(data))):
            if op.name == "STACK_GLOBAL":
                machine.pop()
                machine.pop()
                machine.push(_UNKNOWN)
            else:
                machine.apply(op, arg)  # STOP pops its value: an empty stack is no pickle
            if op.name == "STOP":
                return True
            if pos > _IDENTIFY_MAX_BYTES or count > _IDENTIFY_MAX_OPS:
                return True
    except ValueError:
        return False
    return False


def scan_pickle(data: bytes, origin: str, *, container: str = "pickle") -> PickleScan:
    """Scan a bare pickle or a legacy ``torch.save`` file, as ``torch.load`` would read it.

    A legacy file is five pickles (the first holds the torch magic number) followed
    by raw storage bytes, which are never parsed. Pickles are scanned in sequence
    until five are done or the bytes end cleanly after one; the shape of the first
    pickle is not trusted to decide, because a pickle can compute the magic number
    in ways no fixed pattern recognises, and torch checks only the value.

    Raises:
        UnsafeCheckpointError: an import outside :data:`ALLOWED_GLOBALS`, naming it.
        MalformedCheckpointError: the opcodes do not parse.
    """
    findings = _Findings(origin, container=container)
    stream = io.BytesIO(data)
    try:
        for _ in range(_LEGACY_PICKLE_COUNT):
            _scan_one_pickle(stream, data, findings)
            if stream.tell() == len(data):
                break
    except ValueError as exc:
        raise findings.malformed(exc) from None
    findings.raise_if_refused()
    return findings.result()


def scan_torch_zip(data: bytes, origin: str) -> PickleScan:
    """Scan every ``.pkl`` member of a ``torch.save`` zip archive.

    The archive itself must be unambiguous, because torch (miniz) and Python's
    ``zipfile`` must agree on which bytes ``data.pkl`` is: one ``data.pkl`` only
    (names compared without case, as miniz does), no duplicate names, no ``..`` or
    absolute member paths, and no bytes ahead of the first listed member.

    Raises:
        UnsafeCheckpointError: a refused import, or an archive built to mislead.
        MalformedCheckpointError: not a readable zip, or no ``data.pkl`` in it.
    """
    findings = _Findings(origin)
    archive, members = open_zip(data, origin)
    check_zip_layout(members, origin)
    if not data_pkl_members(members):
        raise MalformedCheckpointError(f"{origin}: zip archive has no data.pkl; not a torch.save checkpoint")
    for member in members:
        if member.filename.lower().endswith(".pkl"):
            findings.where = member.filename
            blob = read_zip_member(archive, member, origin)
            try:
                _scan_one_pickle(io.BytesIO(blob), blob, findings)
            except ValueError as exc:
                raise findings.malformed(exc) from None
    findings.raise_if_refused()
    return findings.result()


def open_zip(data: bytes, origin: str) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """Open a zip archive held in memory, and list its members.

    Raises:
        MalformedCheckpointError: not a readable zip archive.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        return archive, archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, ValueError, EOFError) as exc:
        raise MalformedCheckpointError(f"{origin}: not a readable zip archive: {exc}") from None


def data_pkl_members(members: list[zipfile.ZipInfo]) -> list[str]:
    """The members torch could take for ``data.pkl`` (compared without case, as miniz does)."""
    return [m.filename for m in members if m.filename.lower().rsplit("/", 1)[-1] == "data.pkl"]


def check_zip_layout(members: list[zipfile.ZipInfo], origin: str) -> None:
    """Refuse zip archives whose meaning depends on which zip reader opens them.

    Raises:
        UnsafeCheckpointError: escaping or duplicate member paths, several ``data.pkl``,
            or bytes ahead of the first member.
    """
    names = [m.filename for m in members]
    problems = [f"zip member path escapes the archive: {printable(n)}" for n in names if _escapes(n)]
    duplicates = sorted(n for n, count in Counter(n.lower() for n in names).items() if count > 1)
    problems += [f"duplicate zip member: {printable(n)}" for n in duplicates]
    data_pkls = data_pkl_members(members)
    if len(data_pkls) > 1:
        problems.append(f"{len(data_pkls)} data.pkl members: {', '.join(map(printable, data_pkls))}")
    if members and min(m.header_offset for m in members) != 0:
        # zipfile tolerates bytes before the archive; torch's reader does not, so
        # the two would read different members.
        problems.append("zip has bytes before its first listed member")
    if problems:
        raise UnsafeCheckpointError(
            f"{origin}: refusing to load: {'; '.join(problems)}", findings=tuple(problems)
        )


def _escapes(name: str) -> bool:
    """A member path that is absolute or climbs out of the archive root."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts


def read_zip_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, origin: str) -> bytes:
    """Read one member (by its directory entry, not its name) with a size bound.

    Raises:
        MalformedCheckpointError: the member is too large or cannot be read.
    """
    if member.file_size > MAX_MEMBER_BYTES:
        raise MalformedCheckpointError(
            f"{origin}: zip member {printable(member.filename)} declares {member.file_size} bytes; "
            f"a checkpoint pickle is never over {MAX_MEMBER_BYTES}"
        )
    try:
        return archive.read(member)
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error, OSError, EOFError, ValueError) as exc:
        raise MalformedCheckpointError(
            f"{origin}: cannot read zip member {printable(member.filename)}: {exc}"
        ) from None


def _scan_one_pickle(stream: io.BytesIO, data: bytes, findings: _Findings, depth: int = 0) -> None:
    """Walk one pickle from the stream's position to its STOP, recording imports.

    ``data`` is the buffer behind ``stream`` (GLOBAL and INST operands are re-read
    from it raw).

    Raises:
        ValueError: the opcodes do not parse or the stack underflows.
    """
    findings.pickles += 1
    machine = _StackMachine()
    for op, arg, pos in pickletools.genops(stream):
        name = op.name
        if name in _COUNTED_OPS:
            findings.counts[name] += 1
        if name == "PROTO":
            findings.protocol = max(findings.protocol, int(arg))
        elif name in ("GLOBAL", "INST"):
            findings.note_import(*_raw_global_operands(data, pos))
        elif name == "STACK_GLOBAL":
            _note_stack_global(machine, findings)
            continue  # its stack effect is applied there
        elif name in _EXTENSION_OPS:
            findings.refuse(f"{name} (copyreg extension code {arg})")
        elif name in _DATA_OPS and depth < _MAX_NESTING:
            _scan_nested(arg, findings, depth)
        machine.apply(op, arg)


def _scan_nested(value: object, findings: _Findings, depth: int) -> None:
    """Refuse a string or bytes value that is itself a pickle with refused imports.

    Unpickling the outer pickle only yields the inner one as data, but it is a
    staged payload: whoever calls ``pickle.loads`` on it runs it. Protocol 2
    carries bytes as latin-1 text, so text that encodes to latin-1 is looked at too.
    """
    if isinstance(value, str):
        try:
            value = value.encode("latin-1")
        except UnicodeEncodeError:
            return
    if not isinstance(value, bytes) or len(value) < 2 or not starts_as_pickle(value):
        return
    nested = _Findings(findings.origin)
    stream = io.BytesIO(value)
    try:
        _scan_one_pickle(stream, value, nested, depth + 1)
    except ValueError:
        pass  # an unreadable inner pickle runs only what came before the error, which was scanned
    for what in nested.refused:
        findings.refuse(f"{what} (in a pickle nested as data)")


def _note_stack_global(machine: _StackMachine, findings: _Findings) -> None:
    """STACK_GLOBAL imports the two strings on top of the stack (module, then name)."""
    name = machine.pop()
    module = machine.pop()
    if isinstance(module, str) and isinstance(name, str):
        findings.note_import(module, name)
    else:
        findings.refuse("STACK_GLOBAL with operands not known statically")
    machine.push(_UNKNOWN)


def _raw_global_operands(data: bytes, pos: int) -> tuple[str, str]:
    """Read GLOBAL/INST's two newline-ended operands exactly as the unpickler does.

    pickletools joins them with a space, which is ambiguous when a name holds a
    space; the raw lines are not.
    """
    module_end = data.index(b"\n", pos + 1)
    name_end = data.index(b"\n", module_end + 1)
    module = data[pos + 1 : module_end].decode("utf-8", "backslashreplace")
    name = data[module_end + 1 : name_end].decode("utf-8", "backslashreplace")
    return module, name


class _StackMachine:
    """The unpickler's stack, metastack and memo, holding strings and placeholders.

    Only strings matter (they are what STACK_GLOBAL consumes); every other value is
    :data:`_UNKNOWN`. Marks work as in CPython: MARK saves the current stack on the
    metastack and starts an empty one, so POP_MARK and friends discard exactly
    what the real unpickler discards.
    """

    def __init__(self, *, strict_memo: bool = False) -> None:
        self.stack: list[object] = []
        self.metastack: list[list[object]] = []
        self.memo: dict[int, object] = {}
        # Identification reads a missing memo key as the real unpickler does (an
        # error); the scan only needs strings, so there an unknown is harmless.
        self.strict_memo = strict_memo

    def push(self, value: object) -> None:
        """Push one value."""
        self.stack.append(value)

    def pop(self) -> object:
        """Pop one value; an empty stack here means a broken pickle."""
        if not self.stack:
            raise _StackError("pickle stack underflow")
        return self.stack.pop()

    def top(self) -> object:
        """The value on top, for memo stores and DUP."""
        if not self.stack:
            raise _StackError("pickle stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> None:
        """Discard everything above the last MARK, and the mark."""
        if not self.metastack:
            raise _StackError("pickle pops a mark it never pushed")
        self.stack = self.metastack.pop()

    def apply(self, op: pickletools.OpcodeInfo, arg: object) -> None:
        """Apply one opcode's effect on the stack and the memo."""
        name = op.name
        if name == "MARK":
            self.metastack.append(self.stack)
            self.stack = []
        elif name in _STRING_OPS:
            self.push(arg)
        elif name in _MEMO_PUT_OPS:
            self.memo[int(arg)] = self.top()
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self.top()
        elif name in _MEMO_GET_OPS:
            # A missing key makes the real unpickler fail; an unknown is harmless here.
            if self.strict_memo and int(arg) not in self.memo:
                raise _StackError(f"memo key {arg} was never stored")
            self.push(self.memo.get(int(arg), _UNKNOWN))
        elif name == "DUP":
            self.push(self.top())
        elif name == "POP":
            # CPython pops a mark when the stack above it is empty.
            if self.stack:
                self.stack.pop()
            else:
                self.pop_mark()
        else:
            self._apply_generic(op)

    def _apply_generic(self, op: pickletools.OpcodeInfo) -> None:
        """Pop what pickletools says the opcode consumes; push placeholders for its results."""
        before = op.stack_before
        if pickletools.markobject in before:
            self.pop_mark()
            below_mark = before.index(pickletools.markobject)
        else:
            below_mark = len(before)
        for _ in range(below_mark):
            self.pop()
        self.stack.extend([_UNKNOWN] * len(op.stack_after))


def _resolve_python2_name(module: str, name: str) -> str:
    """What an import spelled the Python 2 way (``commands.Popen``) really imports."""
    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    else:
        module = IMPORT_MAPPING.get(module, module)
    return printable(f"{module}.{name}")


def printable(text: str) -> str:
    """A name fit for a one-line message: as is when printable, else its ASCII repr."""
    return text if text.isprintable() else ascii(text)
