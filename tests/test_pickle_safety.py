"""Torch and pickle intake: malicious checkpoints are refused before anything runs.

Every payload below is real: ``test_payload_runs_code_when_loaded_without_the_guard``
shows that an ordinary unpickler (or ``torch.load(weights_only=False)``) creates
the sentinel file. ``test_refuses_malicious_checkpoint_and_runs_nothing`` then
shows that the guarded reader refuses the same bytes, names the import, never
hands them to ``torch.load``, and leaves the sentinel absent.
"""

from __future__ import annotations

import contextlib
import copyreg
import io
import os
import pickle
import pickletools
import random
import runpy
import shlex
import struct
import subprocess
import time
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import save as save_safetensors

from cbpt_guard.errors import CbptError, MalformedCheckpointError, UnsafeCheckpointError
from cbpt_guard.intake import pickle_scan
from cbpt_guard.intake.filetype import FileKind, is_polyglot, sniff
from cbpt_guard.intake.pickle_scan import ALLOWED_GLOBALS, scan_pickle, scan_torch_zip
from cbpt_guard.intake.torch_reader import read_torch_state_dict

torch.set_num_threads(1)

_EXT_CODE = 0x6F3A  # a copyreg extension code nothing else registers


# ---------------------------------------------------------------- building checkpoints


def _torch_bytes(obj: object, *, legacy: bool = False, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy, **kwargs)
    return buffer.getvalue()


def _small_state_dict() -> OrderedDict:
    generator = torch.Generator().manual_seed(0)
    return OrderedDict(
        weight=torch.randn(4, 3, generator=generator),
        bias=torch.randn(4, generator=generator).half(),
        scale=torch.randn(2, generator=generator).bfloat16(),
        steps=torch.arange(5),
        mask=torch.tensor([True, False]),
    )


def _pickle_boundaries(data: bytes, count: int) -> list[int]:
    """Start offsets of the first ``count`` pickles of a legacy torch file, plus the end of the last."""
    stream, offsets = io.BytesIO(data), [0]
    for _ in range(count):
        for _ in pickletools.genops(stream):
            pass
        offsets.append(stream.tell())
    return offsets


def _replace_legacy_pickle(data: bytes, index: int, payload: bytes) -> bytes:
    """A legacy torch file with its ``index``-th pickle (0-based, of five) replaced."""
    bounds = _pickle_boundaries(data, 5)
    return data[: bounds[index]] + payload + data[bounds[index + 1] :]


def _rewrite_zip(data: bytes, replace: dict[str, bytes], add: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    """Copy a zip archive member by member, swapping some members' bytes and appending others."""
    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about deliberate duplicates
        for info in source.infolist():
            target.writestr(info.filename, replace.get(info.filename, source.read(info)))
        for name, blob in add:
            target.writestr(name, blob)
    return out.getvalue()


# Hand-written protocol-2 opcodes, for spellings pickle.dumps never produces.
def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _short_text(value: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4): how STACK_GLOBAL's operands are usually pushed."""
    raw = value.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _call(function: bytes, *args: bytes) -> bytes:
    return function + b"(" + b"".join(args) + b"tR"


def _protocol2(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


class _Reduce:
    """An object whose pickle is "call ``function(*args)``", as an attacker's would be."""

    def __init__(self, function: Callable, *args: object):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _touch(sentinel: Path) -> str:
    return f"touch {shlex.quote(str(sentinel))}"


def _create_code(sentinel: Path) -> str:
    return f"open({str(sentinel)!r}, 'w').close()"


# ---------------------------------------------------------------- the malicious corpus


def _os_system_global(sentinel: Path) -> bytes:
    return _protocol2(_call(_global("os", "system"), _text(_touch(sentinel))))


def _posix_system_reduce(sentinel: Path) -> bytes:
    return pickle.dumps(_Reduce(os.system, _touch(sentinel)), protocol=2)  # os.system pickles as posix.system


def _builtins_exec(sentinel: Path) -> bytes:
    return pickle.dumps(_Reduce(exec, _create_code(sentinel)), protocol=4)  # STACK_GLOBAL spelling


def _builtins_eval_py2_spelling(sentinel: Path) -> bytes:
    return pickle.dumps(_Reduce(eval, _create_code(sentinel)), protocol=2)  # __builtin__.eval


def _subprocess_popen(sentinel: Path) -> bytes:
    return pickle.dumps(_Reduce(subprocess.Popen, ["touch", str(sentinel)]), protocol=2)


def _subprocess_call(sentinel: Path) -> bytes:
    return pickle.dumps(_Reduce(subprocess.call, ["touch", str(sentinel)]), protocol=2)


def _import_module_then_getattr(sentinel: Path) -> bytes:
    os_module = _call(_global("importlib", "import_module"), _text("os"))
    system = _call(_global("builtins", "getattr"), os_module, _text("system"))
    return _protocol2(system + b"(" + _text(_touch(sentinel)) + b"tR")


def _runpy_run_path(sentinel: Path) -> bytes:
    script = sentinel.with_name("payload.py")
    script.write_text(_create_code(sentinel) + "\n")
    return pickle.dumps(_Reduce(runpy.run_path, str(script)), protocol=2)


def _getattr_import_chain(sentinel: Path) -> bytes:
    os_module = _call(_global("builtins", "__import__"), _text("os"))
    system = _call(_global("builtins", "getattr"), os_module, _text("system"))
    return _protocol2(system + b"(" + _text(_touch(sentinel)) + b"tR")


def _pickle_loads_nested(sentinel: Path) -> bytes:
    return pickle.dumps(_Reduce(pickle.loads, _os_system_global(sentinel)), protocol=2)


def _dotted_name_walk(sentinel: Path) -> bytes:
    # Protocol 4 resolves a dotted name attribute by attribute: torch.serialization.os.system.
    walk = _short_text("torch") + _short_text("serialization.os.system") + b"\x93"
    return b"\x80\x04" + walk + _text(_touch(sentinel)) + b"\x85R."


def _inst_spelling(sentinel: Path) -> bytes:
    # Protocol-0 opcodes after a protocol-2 header: the unpickler accepts the mix.
    return b"\x80\x02(V" + _touch(sentinel).encode() + b"\nios\nsystem\n."


def _stack_global_from_memo(sentinel: Path) -> bytes:
    # "os" and "system" go into the memo and off the stack; decoy strings are pushed
    # and discarded with POP_MARK; STACK_GLOBAL then gets the memo's strings back.
    stash = _short_text("os") + b"\x940" + _short_text("system") + b"\x940"  # MEMOIZE, POP
    decoys = b"(" + _short_text("collections") + _short_text("OrderedDict") + b"1"  # MARK ... POP_MARK
    fetch = b"h\x00j\x01\x00\x00\x00\x93"  # BINGET 0, LONG_BINGET 1, STACK_GLOBAL
    return b"\x80\x04" + stash + decoys + fetch + _text(_touch(sentinel)) + b"\x85R."


def _extension_registry(sentinel: Path) -> bytes:
    return _protocol2(b"\x83" + struct.pack("<H", _EXT_CODE) + _text(_touch(sentinel)) + b"\x85R")  # EXT2


def _torch_zip_data_pkl(sentinel: Path) -> bytes:
    archive = _torch_bytes(_small_state_dict())
    return _rewrite_zip(archive, {"archive/data.pkl": _posix_system_reduce(sentinel)})


def _legacy_later_pickle(sentinel: Path) -> bytes:
    # The fifth pickle (the storage keys) runs the payload; the four before it are genuine.
    return _replace_legacy_pickle(_torch_bytes(_small_state_dict(), legacy=True), 4, _posix_system_reduce(sentinel))


def _legacy_computed_magic(sentinel: Path) -> bytes:
    # torch checks the first pickle's value only: the magic number routed through the
    # memo passes that check without looking like the usual magic-number pickle.
    magic = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"q\x000h\x00."
    legacy = _torch_bytes(_small_state_dict(), legacy=True)
    return _replace_legacy_pickle(_replace_legacy_pickle(legacy, 3, _posix_system_reduce(sentinel)), 0, magic)


def _polyglot(sentinel: Path) -> bytes:
    return _os_system_global(sentinel) + _torch_bytes(_small_state_dict())


def _hidden_in_ordered_dict(sentinel: Path) -> bytes:
    state = _small_state_dict()
    state["extra"] = {"history": [1, 2, {"note": _Reduce(os.system, _touch(sentinel))}]}
    return _torch_bytes(state)


def _pickle_loads(data: bytes) -> object:
    return pickle.loads(data)


def _torch_load_unsafely(data: bytes) -> object:
    return torch.load(io.BytesIO(data), weights_only=False)


def _pickle_loads_with_extension(data: bytes) -> object:
    copyreg.add_extension("os", "system", _EXT_CODE)
    try:
        return pickle.loads(data)
    finally:
        copyreg.remove_extension("os", "system", _EXT_CODE)


@dataclass(frozen=True)
class Payload:
    """One malicious file: how to build it, what the refusal must name, how it would run."""

    name: str
    build: Callable[[Path], bytes]
    names: tuple[str, ...]
    unsafe_load: Callable[[bytes], object] = _pickle_loads


PAYLOADS = [
    Payload("os_system_global", _os_system_global, ("os.system",)),
    Payload("posix_system_reduce", _posix_system_reduce, ("posix.system",)),
    Payload("builtins_exec", _builtins_exec, ("builtins.exec",)),
    Payload("builtins_eval_py2_spelling", _builtins_eval_py2_spelling, ("__builtin__.eval", "builtins.eval")),
    Payload("subprocess_popen", _subprocess_popen, ("subprocess.Popen",)),
    Payload("subprocess_call", _subprocess_call, ("subprocess.call",)),
    Payload("importlib_import_module", _import_module_then_getattr, ("importlib.import_module", "builtins.getattr")),
    Payload("runpy_run_path", _runpy_run_path, ("runpy.run_path",)),
    Payload("getattr_import_chain", _getattr_import_chain, ("builtins.getattr", "builtins.__import__")),
    Payload("pickle_loads_nested", _pickle_loads_nested, ("pickle.loads",)),
    Payload("dotted_name_walk", _dotted_name_walk, ("torch.serialization.os.system",)),
    Payload("inst_spelling", _inst_spelling, ("os.system",)),
    Payload("stack_global_from_memo", _stack_global_from_memo, ("os.system",)),
    Payload("extension_registry", _extension_registry, ("EXT2",), _pickle_loads_with_extension),
    Payload("torch_zip_data_pkl", _torch_zip_data_pkl, ("posix.system",), _torch_load_unsafely),
    Payload("legacy_later_pickle", _legacy_later_pickle, ("posix.system",), _torch_load_unsafely),
    Payload("legacy_computed_magic", _legacy_computed_magic, ("posix.system",), _torch_load_unsafely),
    Payload("polyglot", _polyglot, ("polyglot", "os.system"), _torch_load_unsafely),
    Payload("hidden_in_ordered_dict", _hidden_in_ordered_dict, ("posix.system",), _torch_load_unsafely),
]


def _appears(sentinel: Path, within_s: float) -> bool:
    """Whether the sentinel exists, waiting a little for payloads that start a process."""
    deadline = time.monotonic() + within_s
    while not sentinel.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return sentinel.exists()


@pytest.fixture
def torch_load_calls(monkeypatch) -> list[int]:
    """Record every torch.load call (by the size of what it was given) and let it run."""
    calls: list[int] = []
    real_load = torch.load

    def spy(f, *args, **kwargs):
        calls.append(len(f.getbuffer()))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.name)
def test_payload_runs_code_when_loaded_without_the_guard(payload, tmp_path):
    sentinel = tmp_path / "pwned"
    data = payload.build(sentinel)

    with contextlib.suppress(Exception):  # the code runs before any later failure
        result = payload.unsafe_load(data)
        if isinstance(result, subprocess.Popen):
            result.wait(timeout=10)

    assert _appears(sentinel, within_s=5.0)


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.name)
def test_refuses_malicious_checkpoint_and_runs_nothing(payload, tmp_path, torch_load_calls):
    sentinel = tmp_path / "pwned"
    data = payload.build(sentinel)

    with pytest.raises(UnsafeCheckpointError) as refused:
        read_torch_state_dict(data, "evil.bin")

    message = str(refused.value)
    assert message.startswith("evil.bin: ") and "\n" not in message
    for name in payload.names:
        assert any(name in finding for finding in refused.value.findings), refused.value.findings
        assert name in message
    assert torch_load_calls == []  # refused by the static scan, before torch saw the bytes
    assert not _appears(sentinel, within_s=0.2)


def test_torch_weights_only_loader_is_a_second_line_of_defence(tmp_path, monkeypatch, torch_load_calls):
    sentinel = tmp_path / "pwned"
    data = _torch_zip_data_pkl(sentinel)
    monkeypatch.setattr(pickle_scan, "ALLOWED_GLOBALS", ALLOWED_GLOBALS | {"posix.system"})

    with pytest.raises(UnsafeCheckpointError) as refused:
        read_torch_state_dict(data, "evil.bin")

    assert refused.value.findings == ("posix.system",)
    assert "weights-only" in str(refused.value) and "\n" not in str(refused.value)
    assert len(torch_load_calls) == 1
    assert not sentinel.exists()


def _zip_with(*members: tuple[str, bytes]) -> bytes:
    return _rewrite_zip(_torch_bytes(_small_state_dict()), {}, members)


@pytest.mark.parametrize(
    "build, finding",
    [
        (lambda: _zip_with(("other/data.pkl", _protocol2(b"}"))), "2 data.pkl members"),
        (lambda: _zip_with(("archive/DATA.PKL", _protocol2(b"}"))), "2 data.pkl members"),
        (lambda: _zip_with(("archive/../../etc/cron.d/x", b"* * * * * root true")), "escapes the archive"),
        (lambda: _zip_with(("/abs/data", b"")), "escapes the archive"),
        (lambda: _zip_with(("archive/byteorder", b"big")), "duplicate zip member"),
        (lambda: _torch_bytes(_small_state_dict()) + _zip_with(), "bytes before its first listed member"),
    ],
    ids=["two_data_pkl", "case_folded_data_pkl", "dot_dot_path", "absolute_path", "duplicate", "prepended_archive"],
)
def test_refuses_zip_archives_that_readers_could_disagree_on(build, finding):
    with pytest.raises(UnsafeCheckpointError) as refused:
        scan_torch_zip(build(), "odd.pt")

    assert any(finding in f for f in refused.value.findings), refused.value.findings


def test_scans_every_pkl_member_not_only_data_pkl(tmp_path):
    data = _zip_with(("archive/extra.pkl", _posix_system_reduce(tmp_path / "pwned")))

    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system"):
        read_torch_state_dict(data, "evil.pt")


# ---------------------------------------------------------------- genuine checkpoints load


def _assert_same_tensors(loaded: dict, original: dict) -> None:
    assert list(loaded) == list(original)
    for key, tensor in original.items():
        assert type(loaded[key]) is torch.Tensor
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_loads_a_saved_state_dict_unchanged(legacy):
    original = _small_state_dict()
    original["param"] = torch.nn.Parameter(torch.ones(3))

    loaded = read_torch_state_dict(_torch_bytes(original, legacy=legacy), "sd.pt")

    _assert_same_tensors(loaded, original)


@pytest.fixture(scope="module")
def open_clip_state_dict() -> dict:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )
    return model.state_dict()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_loads_an_open_clip_state_dict_unchanged(open_clip_state_dict, legacy):
    data = _torch_bytes(open_clip_state_dict, legacy=legacy)

    loaded = read_torch_state_dict(data, "open_clip_pytorch_model.bin")

    _assert_same_tensors(loaded, open_clip_state_dict)
    assert "visual.conv1.weight" in loaded and "token_embedding.weight" in loaded


def test_open_clip_checkpoint_imports_only_allowlisted_globals(open_clip_state_dict):
    scan = scan_torch_zip(_torch_bytes(open_clip_state_dict), "clip.pt")

    expected = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.FloatStorage"}
    assert set(scan.globals_seen) == expected
    assert scan.protocol == 2 and scan.pickles == 1
    assert scan.opcode_counts["REDUCE"] >= len(open_clip_state_dict)
    assert scan.opcode_counts["GLOBAL"] == 3


def test_unwraps_state_dict_key_and_data_parallel_prefix_beside_numpy_metadata():
    tensors = _small_state_dict()
    checkpoint = {
        "state_dict": OrderedDict((f"module.{key}", value) for key, value in tensors.items()),
        "epoch": 7,
        "best_accuracy": np.float64(0.93),
        "curve": np.arange(4, dtype=np.float32),
    }

    loaded = read_torch_state_dict(_torch_bytes(checkpoint), "ckpt.pt")

    _assert_same_tensors(loaded, tensors)


def test_loads_checkpoints_that_spell_numpy_the_numpy_1_way():
    checkpoint = {"state_dict": _small_state_dict(), "curve": np.arange(3.0), "loss": np.float32(0.5)}
    data = _torch_bytes(checkpoint, legacy=True)  # legacy: renaming a GLOBAL shifts no zip offsets
    renamed = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert renamed.count(b"numpy.core.multiarray") == 2

    loaded = read_torch_state_dict(renamed, "numpy1.pt")

    _assert_same_tensors(loaded, _small_state_dict())


def test_legacy_scan_covers_all_five_pickles_and_stops_at_raw_data():
    scan = scan_pickle(_torch_bytes(_small_state_dict(), legacy=True), "sd.pt")

    assert scan.pickles == 5
    assert "torch._utils._rebuild_tensor_v2" in scan.globals_seen
    assert set(scan.globals_seen) <= ALLOWED_GLOBALS


@pytest.mark.parametrize(
    "obj, message",
    [
        ([torch.zeros(2)], "holds a list"),
        (torch.zeros(2), "holds a Tensor"),
        ({"weight": torch.zeros(2), "epoch": 3}, "not str -> Tensor"),
        ({}, "holds no tensors"),
    ],
    ids=["list", "tensor", "mixed_values", "empty"],
)
def test_rejects_checkpoints_that_are_not_state_dicts(obj, message):
    with pytest.raises(MalformedCheckpointError, match=message):
        read_torch_state_dict(_torch_bytes(obj), "odd.pt")


def test_allowlist_holds_only_tensor_rebuilding_names():
    modules = {name.rsplit(".", 1)[0] for name in ALLOWED_GLOBALS}

    assert all(m.split(".")[0] in {"torch", "numpy", "collections", "_codecs"} for m in modules), modules
    assert not {"torch.load", "torch.serialization.load", "torch.storage._load_from_bytes"} & ALLOWED_GLOBALS
    assert "torch._utils._rebuild_tensor_v2" in ALLOWED_GLOBALS and "torch.bfloat16" in ALLOWED_GLOBALS


# ---------------------------------------------------------------- identifying files


def _plain_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    return out.getvalue()


@pytest.mark.parametrize(
    "build, kind",
    [
        (lambda: save_safetensors({"a": torch.zeros(2)}), FileKind.SAFETENSORS),
        (lambda: _torch_bytes(_small_state_dict()), FileKind.TORCH_ZIP),
        (_plain_zip, FileKind.TORCH_ZIP),
        (lambda: _torch_bytes(_small_state_dict(), legacy=True), FileKind.PICKLE),
        (lambda: _torch_bytes({"a": torch.zeros(1)}, legacy=True, pickle_protocol=0), FileKind.PICKLE),
        (lambda: pickle.dumps({"a": 1}, protocol=2), FileKind.PICKLE),
        (lambda: pickle.dumps({"a": 1}, protocol=5), FileKind.PICKLE),
        (lambda: pickle.dumps({"a": 1}, protocol=0), FileKind.PICKLE),
        (lambda: b'{"model_cfg": {}}', FileKind.OTHER),
        (lambda: struct.pack("<Q", 10**6) + b"{}", FileKind.OTHER),
        (lambda: b"", FileKind.OTHER),
        (lambda: random.Random(0).randbytes(256), FileKind.OTHER),
    ],
    ids=["safetensors", "torch_zip", "plain_zip", "legacy_torch", "legacy_torch_protocol0", "pickle2",
         "pickle5", "pickle0", "json", "safetensors_bad_length", "empty", "random"],
)
def test_sniff_identifies_files_by_their_bytes(build, kind):
    assert sniff(build()) is kind


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: _os_system_global(Path("/nonexistent/x")) + _plain_zip(), True),
        (lambda: save_safetensors({"a": torch.zeros(2)}) + _plain_zip(), True),
        (lambda: _torch_bytes(_small_state_dict()), False),
        (lambda: _torch_bytes(_small_state_dict(), legacy=True), False),
        (lambda: pickle.dumps({"a": 1}, protocol=2), False),
    ],
    ids=["pickle_then_zip", "safetensors_then_zip", "torch_zip", "legacy_torch", "pickle"],
)
def test_is_polyglot_flags_zips_that_do_not_start_as_zips(build, expected):
    assert is_polyglot(build()) is expected


# ---------------------------------------------------------------- malformed input


def _truncated_pickle() -> bytes:
    legacy = _torch_bytes(_small_state_dict(), legacy=True)
    object_pickle_start = _pickle_boundaries(legacy, 3)[-1]
    return legacy[: object_pickle_start + 40]


@pytest.mark.parametrize(
    "build, message",
    [
        (_truncated_pickle, "not a readable pickle"),
        (lambda: _torch_bytes(_small_state_dict())[:300], "not a readable zip"),
        (lambda: random.Random(1).randbytes(4096), "not a torch checkpoint"),
        (lambda: b"", "not a torch checkpoint"),
        (lambda: save_safetensors({"a": torch.zeros(2)}), "not a torch checkpoint"),
        (_plain_zip, "no data.pkl"),
        (lambda: _rewrite_zip(_torch_bytes({"w": torch.ones(1)}), {"archive/data.pkl": b"\x80\x02\xff"}),
         "readable pickle"),
        (lambda: b"\x80\x02.", "underflow"),
        (lambda: pickle.dumps({"a": 1}, protocol=2), "torch.load failed"),
    ],
    ids=["truncated_pickle", "truncated_zip", "random", "empty", "safetensors", "zip_without_data_pkl",
         "garbage_data_pkl", "stack_underflow", "bare_pickle_without_magic"],
)
def test_malformed_input_raises_malformed_checkpoint_error(build, message):
    with pytest.raises(MalformedCheckpointError, match=message) as caught:
        read_torch_state_dict(build(), "bad.pt")

    assert str(caught.value).startswith("bad.pt") and "\n" not in str(caught.value)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_every_truncation_of_a_checkpoint_raises_a_typed_error(legacy):
    data = _torch_bytes({"w": torch.arange(3.0)}, legacy=legacy)

    for cut in range(len(data)):
        with pytest.raises(MalformedCheckpointError):
            read_torch_state_dict(data[:cut], f"cut{cut}.pt")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(head=st.sampled_from([b"", b"\x80\x02", b"\x80\x04", b"PK\x03\x04"]), tail=st.binary(max_size=300))
def test_arbitrary_bytes_give_only_typed_errors(head, tail):
    try:
        read_torch_state_dict(head + tail, "fuzz.bin")
    except CbptError as error:
        assert isinstance(error, (MalformedCheckpointError, UnsafeCheckpointError))
        assert "\n" not in str(error)
