"""Rewrite a checkpoint's pickles into the opcodes torch's weights-only loader reads.

``torch.load(weights_only=True)`` runs its own restricted unpickler, which knows
the opcodes of pickle protocol 2 only: a state dict re-saved with
``pickle_protocol=4`` or ``5`` (FRAME, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL)
or ``1`` (text integers, INT booleans, MARK+DICT) fails in it with "Unsupported
operand", although nothing in it is unsafe. This module rewrites such a pickle
into an equivalent protocol-2 pickle, opcode by opcode, so that torch's loader
(and its refusal of unknown imports, the second line of defence) still does the
loading.

The rewrite is not trusted: the caller scans the rewritten bytes again with the
same allowlist, and torch loads exactly those scanned bytes. Strings are kept
aside until an opcode needs them on the stack, so that STACK_GLOBAL's two
operands, known statically, become one GLOBAL; anything the rewrite cannot
express in torch's opcodes (INST, OBJ, POP, protocol-0 text persistent ids,
out-of-band buffers, ...) raises :class:`TranscodeError` and the file is
reported as unreadable, never loaded some other way.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
import zipfile
from dataclasses import dataclass

# The opcodes torch's weights-only unpickler implements (torch/_weights_only_unpickler.py).
TORCH_OPCODES = frozenset(
    {
        "GLOBAL", "NEWOBJ", "REDUCE", "BUILD", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "MARK",
        "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "NEWFALSE", "NEWTRUE", "EMPTY_TUPLE",
        "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "BININT", "BININT1", "BININT2", "BINFLOAT",
        "BINUNICODE", "SHORT_BINSTRING", "BINPERSID", "BINGET", "LONG_BINGET", "BINPUT",
        "LONG_BINPUT", "LONG1", "PROTO", "STOP",
    }
)  # fmt: skip
_STRING_OPS = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
# In-band protocol-5 buffers (BYTEARRAY8) become bytes too: only tensors are kept from a checkpoint.
_BYTES_OPS = frozenset({"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"})
_INT_OPS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
# Copied as they are: their meaning and encoding are the same in torch's opcode set.
_VERBATIM_OPS = frozenset(
    {
        "NONE", "NEWTRUE", "NEWFALSE", "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET",
        "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "APPEND", "APPENDS", "SETITEM", "SETITEMS",
        "REDUCE", "BUILD", "NEWOBJ", "BINPERSID",
    }
)  # fmt: skip
_EMPTY_AFTER_MARK = {"DICT": b"}", "LIST": b"]"}  # protocol 0 spells an empty container MARK DICT
_MAX_LONG1_BYTES = 255


class TranscodeError(ValueError):
    """A pickle uses an opcode with no equivalent in torch's weights-only opcode set."""


@dataclass(frozen=True)
class _Deferred:
    """A string not yet written out: it may end up as one half of a GLOBAL."""

    value: str


_WRITTEN = object()  # a stack value already written to the output


def needs_transcoding(blob: bytes) -> bool:
    """Whether one pickle (starting at ``blob[0]``) uses an opcode torch's loader lacks."""
    return any(op.name not in TORCH_OPCODES for op, _, _ in pickletools.genops(io.BytesIO(blob)))


def transcode_pickle(blob: bytes) -> bytes:
    """Rewrite the pickle at the start of ``blob`` (up to its STOP) as a protocol-2 pickle.

    Raises:
        TranscodeError: an opcode with no equivalent torch reads.
        ValueError: the opcodes do not parse.
    """
    writer = _Writer(blob)
    ops = list(pickletools.genops(io.BytesIO(blob)))
    skip_next = False
    for index, (op, arg, pos) in enumerate(ops):
        if skip_next:
            skip_next = False
            continue
        following = ops[index + 1][0].name if index + 1 < len(ops) else ""
        if op.name == "MARK" and following in _EMPTY_AFTER_MARK:
            writer.push_written(_EMPTY_AFTER_MARK[following])
            skip_next = True
        else:
            writer.op(op, arg, pos)
    return bytes(writer.out)


def transcode_legacy(data: bytes, pickles: int) -> bytes | None:
    """A legacy ``torch.save`` file with its first ``pickles`` pickles rewritten, or None if none needs it.

    The raw storage bytes after the pickles are kept as they are.
    """
    stream, parts, changed = io.BytesIO(data), [], False
    for _ in range(pickles):
        start = stream.tell()
        for _ in pickletools.genops(stream):
            pass
        blob = data[start : stream.tell()]
        if needs_transcoding(blob):
            blob, changed = transcode_pickle(blob), True
        parts.append(blob)
        if stream.tell() == len(data):
            break
    parts.append(data[stream.tell() :])
    return b"".join(parts) if changed else None


def transcode_zip(data: bytes) -> bytes | None:
    """A ``torch.save`` zip archive with its ``data.pkl`` rewritten, or None if it needs no rewrite.

    Members are copied in order under their own names (uncompressed, as torch
    writes them); the caller has already checked the archive's layout.
    """
    source = zipfile.ZipFile(io.BytesIO(data))
    members = source.infolist()
    target = next(m for m in members if m.filename.lower().rsplit("/", 1)[-1] == "data.pkl")
    blob = source.read(target)
    if not needs_transcoding(blob):
        return None
    rewritten = transcode_pickle(blob)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for member in members:
            archive.writestr(member.filename, rewritten if member is target else source.read(member))
    return out.getvalue()


class _Writer:
    """Writes the protocol-2 pickle while mirroring the unpickler's stack, marks and memo."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.out = bytearray(b"\x80\x02")
        self.stack: list[object] = []
        self.metastack: list[list[object]] = []
        self.memo: dict[int, object] = {}

    def op(self, op: pickletools.OpcodeInfo, arg: object, pos: int) -> None:
        """Write the equivalent of one opcode."""
        name = op.name
        if name in ("PROTO", "FRAME"):
            return  # the output has its own PROTO 2 and needs no framing
        if name in _STRING_OPS:
            self.stack.append(_Deferred(str(arg)))
        elif name in _PUT_OPS:
            self._put(len(self.memo) if name == "MEMOIZE" else int(arg))
        elif name in _GET_OPS:
            self._get(int(arg))
        elif name == "STACK_GLOBAL":
            self._stack_global()
        elif name == "GLOBAL":
            end = self.blob.index(b"\n", self.blob.index(b"\n", pos + 1) + 1)
            self.push_written(self.blob[pos : end + 1])  # 'c' module \n name \n, as read
        elif name in _BYTES_OPS:
            self.push_written(_codecs_encode(bytes(arg)))
        elif name in _INT_OPS:
            self.push_written(_int(arg))
        elif name in ("FLOAT", "BINFLOAT"):
            self.push_written(b"G" + struct.pack(">d", float(arg)))
        elif name == "MARK":
            self._flush()
            self.out += b"("
            self.metastack.append(self.stack)
            self.stack = []
        elif name == "STOP":
            self._flush()
            self._pop(1)
            self.out += b"."
        elif name in _VERBATIM_OPS:
            self._flush()
            self._apply(op)
            self.out += op.code.encode("latin-1")
        elif name == "PERSID":
            raise TranscodeError("a protocol-0 text persistent id (PERSID), which torch.load itself cannot read")
        else:
            raise TranscodeError(f"pickle opcode {name} has no equivalent that torch's weights-only loader reads")

    def push_written(self, code: bytes) -> None:
        """Write ``code``, which pushes one value, after any strings still held back."""
        self._flush()
        self.out += code
        self.stack.append(_WRITTEN)

    def _flush(self) -> None:
        """Write out the held-back strings; they are always the top of the current stack."""
        for i, value in enumerate(self.stack):
            if isinstance(value, _Deferred):
                raw = value.value.encode("utf-8", "surrogatepass")
                self.out += b"X" + struct.pack("<I", len(raw)) + raw
                self.stack[i] = _WRITTEN

    def _put(self, key: int) -> None:
        if not 0 <= key < 2**32:
            raise TranscodeError(f"memo key {key} out of range")
        if not self.stack:
            raise TranscodeError("memo store with an empty stack")
        top = self.stack[-1]
        self.memo[key] = top
        if not isinstance(top, _Deferred):  # a held-back string lives on in the memo only
            self.out += b"q" + bytes([key]) if key < 256 else b"r" + struct.pack("<I", key)

    def _get(self, key: int) -> None:
        if key not in self.memo:  # also rules out keys no BINGET could spell
            raise TranscodeError(f"memo key {key} was never stored")
        value = self.memo[key]
        if isinstance(value, _Deferred):
            self.stack.append(value)
        else:
            self.push_written(b"h" + bytes([key]) if key < 256 else b"j" + struct.pack("<I", key))

    def _stack_global(self) -> None:
        if len(self.stack) < 2 or not all(isinstance(v, _Deferred) for v in self.stack[-2:]):
            raise TranscodeError("STACK_GLOBAL with operands not known statically")
        name, module = self.stack.pop().value, self.stack.pop().value  # type: ignore[union-attr]
        if "\n" in module + name:
            raise TranscodeError("STACK_GLOBAL operand holds a line break")
        self.push_written(b"c" + f"{module}\n{name}\n".encode("utf-8", "surrogatepass"))

    def _pop(self, count: int) -> None:
        if len(self.stack) < count:
            raise TranscodeError("pickle stack underflow")
        del self.stack[len(self.stack) - count :]

    def _apply(self, op: pickletools.OpcodeInfo) -> None:
        """The stack effect of a copied opcode: pop what it consumes, push what it makes."""
        before = op.stack_before
        if pickletools.markobject in before:
            if not self.metastack:
                raise TranscodeError("pickle pops a mark it never pushed")
            self.stack = self.metastack.pop()
            self._pop(before.index(pickletools.markobject))
        else:
            self._pop(len(before))
        self.stack.extend([_WRITTEN] * len(op.stack_after))


def _int(value: object) -> bytes:
    """An integer (or protocol 0's INT booleans) in the opcodes torch reads."""
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    number = int(value)  # type: ignore[call-overload]
    if 0 <= number < 256:
        return b"K" + bytes([number])
    if 0 <= number < 65536:
        return b"M" + struct.pack("<H", number)
    if -(2**31) <= number < 2**31:
        return b"J" + struct.pack("<i", number)
    encoded = pickle.encode_long(number)
    if len(encoded) > _MAX_LONG1_BYTES:
        raise TranscodeError("an integer too long for torch's weights-only loader")
    return b"\x8a" + bytes([len(encoded)]) + encoded


def _codecs_encode(raw: bytes) -> bytes:
    """``bytes`` as protocol 2 spells them: ``_codecs.encode(latin-1 text, "latin1")``."""
    text = raw.decode("latin-1").encode("utf-8")
    return (
        b"c_codecs\nencode\n"
        + b"X" + struct.pack("<I", len(text)) + text
        + b"X\x06\x00\x00\x00latin1"
        + b"\x86R"
    )  # fmt: skip
