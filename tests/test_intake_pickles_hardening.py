"""Serialisation attacks and benign files an outside audit found intake getting wrong.

Pickles hidden in numpy ``.npy``/``.npz`` object arrays; protocol 0 and 1 pickles
that were not recognised as pickles; torch saves at pickle protocols torch's own
weights-only loader cannot read; and refusals that did not say why.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import ssl
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save as save_safetensors
from tiny_models import build_tiny, save_open_clip_dir

from cbpt_guard.cli.main import cli
from cbpt_guard.errors import MalformedCheckpointError, UnsafeCheckpointError
from cbpt_guard.intake import load_checkpoint, torch_reader
from cbpt_guard.intake.filetype import FileKind, sniff
from cbpt_guard.intake.torch_reader import read_torch_state_dict

torch.set_num_threads(1)


class _Reduce:
    """An object whose pickle is "call ``function(*args)``", as an attacker's would be."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.fixture(scope="module")
def clean_model_dir(tmp_path_factory) -> Path:
    model, config = build_tiny("vit")
    return save_open_clip_dir(model, config, tmp_path_factory.mktemp("clean") / "model", "safetensors",
                              classes=["circle", "square"])


@pytest.fixture
def model_dir(clean_model_dir, tmp_path) -> Path:
    return Path(shutil.copytree(clean_model_dir, tmp_path / "model"))


def _inspect(path: Path, *args: str):
    return CliRunner().invoke(cli, ["inspect", str(path), *args], catch_exceptions=False)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _object_array(*items) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = list(items)
    return array


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _state_dict() -> OrderedDict:
    generator = torch.Generator().manual_seed(0)
    return OrderedDict(weight=torch.randn(4, 3, generator=generator), bias=torch.randn(4, generator=generator).half(),
                       steps=torch.arange(5), param=torch.nn.Parameter(torch.ones(2)))


def _torch_bytes(obj, *, legacy: bool, protocol: int) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)
    return buffer.getvalue()


# ---------------------------------------------------------------- pickles inside .npy / .npz


def test_refuses_npy_object_array_importing_ssl_get_server_certificate_beside_a_model(model_dir):
    payload = _object_array(_Reduce(ssl.get_server_certificate, ("127.0.0.1", 9)))
    (model_dir / "embeddings.npy").write_bytes(_npy(payload))

    result = _inspect(model_dir)

    assert result.exit_code == 1, result.output
    assert "ssl.get_server_certificate" in result.output
    assert "numpy object array" in result.output and "allow_pickle=True" in result.output


def test_refuses_npz_member_object_array_importing_os_system(model_dir, tmp_path):
    sentinel = tmp_path / "pwned"
    (model_dir / "stats.npz").write_bytes(
        _npz(mean=np.zeros(3), history=_object_array(_Reduce(os.system, f"touch {sentinel}"))))

    with pytest.raises(UnsafeCheckpointError) as refused:
        load_checkpoint(model_dir)

    assert "posix.system" in refused.value.findings
    assert "history.npy" in str(refused.value)
    assert not sentinel.exists()


def test_npy_object_array_as_the_weights_file_names_the_import(tmp_path):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(_npy(_object_array(_Reduce(os.system, "true"))))

    result = _inspect(weights, "--arch", "ViT-B-32")

    assert result.exit_code == 1, result.output
    assert "posix.system" in result.output


def test_numeric_npy_and_npz_beside_a_model_are_read_by_header_and_accepted(model_dir, monkeypatch):
    (model_dir / "mean.npy").write_bytes(_npy(np.arange(6, dtype=np.float32).reshape(2, 3)))
    (model_dir / "stats.npz").write_bytes(_npz(a=np.ones(2), b=np.arange(3)))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load called"))

    report = load_checkpoint(model_dir).report

    notes = {Path(f.path).name: f.note for f in report.files}
    assert notes["mean.npy"].startswith("numpy array of numbers")
    assert notes["stats.npz"].startswith("numpy .npz of 2 arrays (0 object arrays")


def test_object_array_of_plain_values_is_scanned_through_the_allowlist_and_accepted(model_dir):
    (model_dir / "labels.npy").write_bytes(_npy(_object_array("circle", 3, None, ("a", 1.5))))

    report = load_checkpoint(model_dir).report

    note = next(f.note for f in report.files if f.path.endswith("labels.npy"))
    assert "object array" in note and "allow_pickle=True" in note


@pytest.mark.parametrize(
    "header",
    [b"__import__('os').system('true')", b"{'descr': '<f4', 'fortran_order': False}", b"{" * 300,
     b"{'descr': '<f4', 'fortran_order': False, 'shape': (1" + b"0" * 5000 + b",)}"],
    ids=["call", "missing_key", "deep_nesting", "huge_int"],
)
def test_npy_header_that_is_not_a_plain_literal_is_refused(model_dir, header):
    padded = header + b" " * (-(len(header) + 11) % 64) + b"\n"
    (model_dir / "x.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(padded)) + padded)

    with pytest.raises(MalformedCheckpointError, match=r"x\.npy: \.npy header"):
        load_checkpoint(model_dir)


# ---------------------------------------------------------------- every pickle protocol is a pickle


@pytest.mark.parametrize("protocol", [0, 1])
def test_protocol_0_and_1_malicious_weights_are_refused_naming_the_import(tmp_path, protocol):
    sentinel = tmp_path / "pwned"
    weights = tmp_path / "open_clip_pytorch_model.bin"
    weights.write_bytes(pickle.dumps(_Reduce(os.system, f"touch {sentinel}"), protocol=protocol))

    result = _inspect(weights, "--arch", "ViT-B-32")

    assert result.exit_code == 1, result.output
    assert "posix.system" in result.output
    assert not sentinel.exists()


@pytest.mark.parametrize("protocol", range(6))
def test_sniff_identifies_every_pickle_protocol_by_its_opcodes(protocol):
    assert sniff(pickle.dumps(OrderedDict(a=[1, 2.5, "x", b"y"]), protocol=protocol)) is FileKind.PICKLE


@pytest.mark.parametrize("text", [b"cat\ndog\nbird\n", b"# a readme\n", b'{"classes": ["a"]}', b"hello world"])
def test_text_files_are_not_taken_for_pickles(text):
    assert sniff(text) is FileKind.OTHER


def _safetensors_with_header_length(tensors: dict, length: int) -> bytes:
    """A safetensors file padded through its metadata so that its header is exactly ``length`` bytes."""
    def header_length(pad: int) -> int:
        return struct.unpack("<Q", save_safetensors(tensors, metadata={"pad": "x" * pad})[:8])[0]

    base = length - header_length(0)  # one more character of metadata is one more header byte
    for pad in range(max(0, base - 8), base + 8):
        data = save_safetensors(tensors, metadata={"pad": "x" * pad})
        if struct.unpack("<Q", data[:8])[0] == length:
            return data
    raise AssertionError(f"no padding gives a {length}-byte header")


def test_safetensors_whose_header_length_starts_like_a_pickle_header_loads(model_dir):
    # 66,176 = 0x10280: the header length's first bytes are 0x80 0x02, pickle's PROTO 2.
    weights = model_dir / "open_clip_model.safetensors"
    from safetensors.torch import load

    data = _safetensors_with_header_length(load(weights.read_bytes()), 0x10280)
    assert data[:2] == b"\x80\x02"
    weights.write_bytes(data)

    report = load_checkpoint(model_dir).report

    assert next(f.kind for f in report.files if f.role == "weights") == "safetensors"


# ---------------------------------------------------------------- torch saves at every protocol torch reads


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
def test_loads_torch_saves_at_every_pickle_protocol(protocol, legacy):
    original = _state_dict()
    checkpoint = {"state_dict": original, "epoch": 3, "curve": np.arange(3.0), "loss": np.float32(0.5)}

    loaded = read_torch_state_dict(_torch_bytes(checkpoint, legacy=legacy, protocol=protocol), "sd.pt")

    assert list(loaded) == list(original)
    for key, tensor in original.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key


def test_open_clip_directory_resaved_with_pickle_protocol_5_loads_with_identical_weights(model_dir):
    reference = load_checkpoint(model_dir).model.state_dict()
    (model_dir / "open_clip_model.safetensors").unlink()
    (model_dir / "open_clip_pytorch_model.bin").write_bytes(_torch_bytes(reference, legacy=False, protocol=5))

    loaded = load_checkpoint(model_dir).model.state_dict()

    assert all(torch.equal(loaded[key], value) for key, value in reference.items())


def test_protocol_0_torch_save_is_refused_saying_torch_cannot_read_it():
    data = _torch_bytes(_state_dict(), legacy=False, protocol=0)

    with pytest.raises(MalformedCheckpointError, match="torch.load itself cannot read") as refused:
        read_torch_state_dict(data, "old.pt")

    assert "re-save" in str(refused.value) and "\n" not in str(refused.value)


def test_rewritten_pickle_is_scanned_again_before_torch_sees_it(monkeypatch):
    evil = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R."
    monkeypatch.setattr(torch_reader, "transcode_legacy", lambda data, pickles: evil)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))

    with pytest.raises(UnsafeCheckpointError, match=r"os\.system"):
        read_torch_state_dict(_torch_bytes(_state_dict(), legacy=True, protocol=4), "sd.pt")


# ---------------------------------------------------------------- strict refusals say why


def test_refusing_a_pickle_that_imports_builtins_len_says_what_to_do():
    with pytest.raises(UnsafeCheckpointError) as refused:
        read_torch_state_dict(pickle.dumps(_Reduce(len, ([1],)), protocol=2), "extra.pkl")

    message = str(refused.value)
    assert "builtins.len" in message and "only the imports that rebuild tensors are allowed" in message
    assert "safetensors" in message and "\n" not in message


def test_refusing_a_pickled_main_class_says_it_is_an_object_not_a_state_dict():
    data = b"\x80\x02c__main__\nTinyNet\n)\x81}b."

    with pytest.raises(UnsafeCheckpointError) as refused:
        read_torch_state_dict(data, "model.pt")

    message = str(refused.value)
    assert "__main__.TinyNet" in message and "model.state_dict()" in message


def _zip(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, blob in members.items():
            archive.writestr(name, blob)
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["bundle.zip", "classifier.skops"])
def test_zip_that_is_neither_torch_nor_npz_beside_a_model_is_refused_saying_why(model_dir, name):
    (model_dir / name).write_bytes(_zip(**{"schema.json": b"{}", "coef.npy": _npy(np.ones(3))}))

    result = _inspect(model_dir)

    assert result.exit_code == 3, result.output
    assert "neither a torch.save archive" in result.output and "move it out of the model directory" in result.output


def test_zip_carrying_a_pickle_payload_is_refused_for_the_payload(model_dir):
    (model_dir / "bundle.zip").write_bytes(
        _zip(**{"readme.txt": b"hi", "model.joblib": pickle.dumps(_Reduce(os.system, "true"), protocol=4)}))

    result = _inspect(model_dir)

    assert result.exit_code == 1, result.output
    assert "posix.system" in result.output


@pytest.mark.parametrize("compress", [("zlib", 3), ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)],
                         ids=lambda c: c[0])
def test_compressed_joblib_payload_beside_a_model_is_decompressed_and_refused(model_dir, tmp_path, compress):
    joblib = pytest.importorskip("joblib")
    sentinel = tmp_path / "pwned"
    joblib.dump({"coef": [1.0, 2.0], "hook": _Reduce(os.system, f"touch {sentinel}")}, model_dir / "clf.joblib",
                compress=compress)

    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system") as refused:
        load_checkpoint(model_dir)

    assert f"{compress[0]}-decompressed" in str(refused.value)
    assert not sentinel.exists()


def test_nested_pickle_held_as_bytes_is_refused_for_its_imports():
    inner = pickle.dumps(_Reduce(os.system, "true"), protocol=2)

    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system \(in a pickle nested as data\)"):
        read_torch_state_dict(pickle.dumps({"weights": [1.0], "blob": inner}, protocol=4), "nested.pkl")


def test_safetensors_weights_with_a_zip_appended_are_refused_as_a_polyglot(model_dir):
    weights = model_dir / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes() + _zip(**{"archive/data.pkl": pickle.dumps(_Reduce(os.system, "true"))}))

    with pytest.raises(UnsafeCheckpointError, match="polyglot"):
        load_checkpoint(model_dir)
