"""The safetensors header parser: strict on real files, only typed errors on anything else."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import load, save

from cbpt_guard.errors import MalformedCheckpointError
from cbpt_guard.intake.safetensors_reader import parse_header, read_safetensors


def _file(header: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def test_reads_a_real_file_and_its_tensors():
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16)}
    data = save(tensors, metadata={"format": "pt"})

    loaded, header = read_safetensors(data, "x.safetensors")

    assert {e.name: (e.dtype, e.shape) for e in header.tensors} == {"a": ("F32", (2, 3)), "b": ("F16", (4,))}
    assert header.metadata == {"format": "pt"}
    torch.testing.assert_close(loaded["a"], tensors["a"])


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x02", "truncated"),
        (struct.pack("<Q", 2**63) + b"{}", "impossible"),
        (struct.pack("<Q", 10) + b"{}", "impossible"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 3) + b"{\xff}", "not valid JSON"),
        (_file({"t": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "unknown dtype"),
        (_file({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "invalid shape"),
        (_file({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4), "need 8"),
        (_file({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 2), "truncated"),
        (_file({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "gap or overlap"),
        (
            _file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
            "gap or overlap",
        ),
        (_file({"__metadata__": {"k": 1}}), "__metadata__"),
        (_file({"t": {"dtype": "F32", "shape": [1]}}), "malformed header entry"),
        (_file({"t": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4), "invalid shape"),
    ],
)
def test_malformed_headers_are_named(data, message):
    with pytest.raises(MalformedCheckpointError, match=message) as caught:
        parse_header(data, "bad.safetensors")
    assert str(caught.value).startswith("bad.safetensors: ")


def test_absurd_length_field_does_not_allocate():
    # A header claiming 2**64-1 bytes must be rejected from the length alone.
    with pytest.raises(MalformedCheckpointError, match="impossible"):
        parse_header(b"\xff" * 8 + b"{}", "bomb.safetensors")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "I64", "BOOL", "X"]) | st.text(max_size=4),
        "shape": st.lists(st.integers(-2, 5), max_size=3) | _json_values,
        "data_offsets": st.lists(st.integers(-4, 64), min_size=0, max_size=3) | _json_values,
    }
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.dictionaries(st.text(max_size=6), _entries | _json_values, max_size=4),
    payload=st.binary(max_size=64),
    length_delta=st.integers(-4, 4),
)
def test_fuzzed_headers_raise_only_typed_errors(header, payload, length_delta):
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", max(0, len(raw) + length_delta)) + raw + payload
    try:
        parsed = parse_header(data, "fuzz")
    except MalformedCheckpointError:
        return
    # Anything accepted must also be loadable by the reference library from the same bytes, to the same values.
    tensors, _ = read_safetensors(data, "fuzz")
    assert set(tensors) == {entry.name for entry in parsed.tensors}
    reference = load(data)
    assert set(reference) == set(tensors)
    for name, tensor in reference.items():
        expected = tensor.view(torch.uint8) != 0 if tensor.dtype is torch.bool else tensor
        assert tensors[name].dtype == expected.dtype and tensors[name].shape == expected.shape
        assert torch.equal(tensors[name].reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8))


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=96))
def test_fuzzed_bytes_raise_only_typed_errors(data):
    try:
        parse_header(data, "fuzz")
    except MalformedCheckpointError:
        pass
