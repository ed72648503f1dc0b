"""Intake of large checkpoints: one read, one hash, views instead of a second copy, no random draws overwritten."""

from __future__ import annotations

import ctypes
import hashlib
import json
import struct

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load as reference_load, save
from tiny_models import TINY_CONFIGS, build_tiny, save_open_clip_dir

from cbpt_guard.intake import loader
from cbpt_guard.intake.filled_model import SkipRandomInit, build_filled_model
from cbpt_guard.intake.loader import load_checkpoint, read_file
from cbpt_guard.intake.safetensors_reader import read_safetensors


def _file(entries: list[tuple[str, str, list[int], bytes]], pad: int = 0) -> bytes:
    header, payload = {}, b""
    for name, dtype, shape, raw in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(payload), len(payload) + len(raw)]}
        payload += raw
    text = json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(text)) + text + payload


def test_safetensors_tensors_are_views_of_the_bytes_that_were_read():
    data = save({"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)})

    tensors, _ = read_safetensors(data, "x.safetensors")

    start = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value  # where the bytes object keeps its bytes
    assert start <= tensors["w"].data_ptr() < start + len(data)
    torch.testing.assert_close(tensors["w"], torch.arange(12, dtype=torch.float32).reshape(3, 4), rtol=0, atol=0)


@pytest.mark.parametrize("pad", [0, 1, 3, 5])
def test_misaligned_offsets_read_the_same_values_as_the_reference_library(pad):
    # A header length that is not a multiple of 8 puts every tensor at an odd offset.
    values = torch.tensor([1.5, -2.25, 3.0])
    halves = torch.tensor([1.0, 2.0], dtype=torch.bfloat16).view(torch.int16).numpy().tobytes()
    data = _file([("a", "F32", [3], values.numpy().tobytes()),
                  ("b", "BF16", [2], halves),
                  ("c", "BOOL", [3], bytes([0, 1, 2]))], pad=pad)

    ours, _ = read_safetensors(data, "odd.safetensors")
    theirs = reference_load(data)

    assert torch.equal(ours["a"], theirs["a"]) and torch.equal(ours["b"], theirs["b"])
    assert ours["c"].tolist() == [False, True, True]  # any non-zero byte is True, stored as a clean 1


_dtypes = st.sampled_from([("F32", torch.float32), ("F16", torch.float16), ("BF16", torch.bfloat16),
                           ("I64", torch.int64), ("I8", torch.int8), ("U8", torch.uint8), ("F64", torch.float64)])


@settings(max_examples=200, deadline=None)
@given(specs=st.lists(st.tuples(_dtypes, st.lists(st.integers(0, 3), max_size=3)), max_size=5),
       seed=st.integers(0, 2**16))
def test_reads_what_the_reference_library_reads(specs, seed):
    generator = torch.Generator().manual_seed(seed)
    tensors = {f"t{i}": torch.randint(0, 100, shape or [], generator=generator).to(dtype)
               for i, ((_, dtype), shape) in enumerate(specs)}
    data = save(tensors)

    ours, _ = read_safetensors(data, "x.safetensors")
    theirs = reference_load(data)

    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor)


@pytest.mark.parametrize("threshold", [1 << 40, 1])  # hashed inline, and on the second thread
def test_read_file_digest_is_the_sha256_of_the_bytes_read(tmp_path, monkeypatch, threshold):
    monkeypatch.setattr(loader, "BACKGROUND_HASH_BYTES", threshold)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(save({"w": torch.ones(1000)}))

    read = read_file(weights)

    assert read.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()


class _RandomBuffer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(4))
        torch.nn.init.normal_(self.weight)
        self.register_buffer("mask", torch.ones(4, 4).triu(), persistent=False)
        self.register_buffer("noise", torch.randn(4) * 2, persistent=False)
        self.register_buffer("scaled", self.weight.detach() * 3, persistent=False)


def test_skipped_draws_are_traced_into_whatever_is_computed_from_them():
    mode = SkipRandomInit()
    with mode:
        module = _RandomBuffer()

    assert mode.is_tainted(module.weight)  # its draw was skipped
    assert mode.is_tainted(module.scaled)  # computed from a skipped draw
    assert mode.is_tainted(module.noise)  # a random draw that ran
    assert not mode.is_tainted(module.mask)


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_built_without_draws_equals_the_model_that_was_saved(family):
    model, config = build_tiny(family, seed=3)

    filled = build_filled_model(config, None, model.state_dict(), "tiny")

    for name, value in model.state_dict().items():
        assert torch.equal(filled.state_dict()[name], value), name
    assert dict(filled.named_buffers()).keys() == dict(model.named_buffers()).keys()
    torch.testing.assert_close(filled.attn_mask, model.attn_mask, rtol=0, atol=0)


class _SeesRandomFills(torch.overrides.TorchFunctionMode):
    """Records every in-place random fill of real memory that reaches it (meta tensors cost nothing)."""

    NAMES = {"uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
             "xavier_normal_", "orthogonal_"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        target = args[0] if args else (kwargs or {}).get("tensor")
        if getattr(func, "__name__", "") in self.NAMES and target.device.type != "meta":
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_intake_draws_no_random_values_for_weights_it_overwrites(tmp_path):
    model, config = build_tiny("vit")
    save_open_clip_dir(model, config, tmp_path, "safetensors", classes=["a", "b"])

    with _SeesRandomFills() as fills:
        loaded = load_checkpoint(tmp_path)

    assert fills.seen == []
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
