"""Regression tests for hostile configs, manifests and safetensors headers: each attack is refused at intake.

Every attack here once got through (a download, an unbounded allocation, an
untyped crash with exit 2); each test is named after it and checks the typed
error, its exit code, and that it comes before anything expensive.
"""

from __future__ import annotations

import copy
import json
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tiny_models import build_tiny, save_open_clip_dir

from cbpt_guard.errors import (
    ClassListError,
    ExitCode,
    MalformedCheckpointError,
    ManifestError,
    UnsupportedArchitectureError,
)
from cbpt_guard.intake import load_checkpoint
from cbpt_guard.intake.manifest import MAX_FILE_BYTES, parse_classes_text, parse_manifest_text
from cbpt_guard.intake.safetensors_reader import parse_header

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square", "triangle"]
HUGE_INT = "9" * 5000  # past Python's 4,300-digit limit on int(str)


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory):
    """A valid tiny open_clip ViT directory; tests copy it and edit the copy."""
    model, config = build_tiny("vit")
    return save_open_clip_dir(model, config, tmp_path_factory.mktemp("vit"), "safetensors", classes=CLASSES)


def _copy_with(source: Path, dest: Path, edit=None, config_text: str | None = None) -> Path:
    """Copy a model directory, editing its open_clip_config.json (as a dict, or replaced by raw text)."""
    dest.mkdir()
    for path in source.iterdir():
        (dest / path.name).write_bytes(path.read_bytes())
    config_path = dest / "open_clip_config.json"
    if config_text is not None:
        config_path.write_text(config_text)
    elif edit is not None:
        config = json.loads(config_path.read_text())
        edit(config["model_cfg"])
        config_path.write_text(json.dumps(config))
    return dest


# --- an untrusted config must never make the gate download -----------------------------------------

HUB_CONFIGS = {
    "timm_tower_named_on_the_hub": lambda c: c.update(vision_cfg={
        "timm_model_name": "hf-hub:someone/model", "timm_pool": "", "timm_proj": "linear", "image_size": 32}),
    "timm_tower_named_by_url": lambda c: c.update(vision_cfg={
        "timm_model_name": "https://example.com/model.pth", "image_size": 32}),
    "timm_tower_asking_for_pretrained_weights": lambda c: c.update(vision_cfg={
        "timm_model_name": "convnext_atto", "timm_model_pretrained": True, "timm_pool": "",
        "timm_proj": "linear", "image_size": 32}),
    "hf_text_tower": lambda c: c["text_cfg"].update(hf_model_name="someone/text-model"),
    "hf_text_tower_pretrained_flag": lambda c: c["text_cfg"].update(hf_model_pretrained=True),
    "hf_tokenizer": lambda c: c["text_cfg"].update(hf_tokenizer_name="hf-hub:someone/tokenizer"),
    "local_dir_source": lambda c: c["vision_cfg"].update(pool_type="local-dir:/etc"),
}


@pytest.mark.parametrize("attack", sorted(HUB_CONFIGS))
def test_refuses_config_that_names_a_hub_model(attack, tiny_vit_dir, tmp_path, monkeypatch):
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # whatever the environment says
        monkeypatch.delenv(variable, raising=False)
    target = _copy_with(tiny_vit_dir, tmp_path / "m", HUB_CONFIGS[attack])
    with pytest.raises(UnsupportedArchitectureError, match="download|remote source") as caught:
        load_checkpoint(target)
    assert caught.value.exit_code == ExitCode.INCONCLUSIVE


# --- no unbounded allocation from a config ------------------------------------------------------------

_SIZE_PROBE = textwrap.dedent("""
    import json, resource, sys, time, torch
    torch.set_num_threads(1)
    from cbpt_guard.errors import CbptError
    from cbpt_guard.intake import load_checkpoint
    import open_clip  # imported before the memory cap and the baseline
    # A hard cap 1 GiB above what the imports hold: a config that allocates without bound fails
    # here with MemoryError instead of taking the machine's memory.
    held = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmData:")) * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (held + 2**30, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    results = {}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path in sys.argv[1:]:
        started = time.process_time()  # CPU time: the machine's load does not count
        try:
            load_checkpoint(path)
            outcome = "loaded"
        except (CbptError, MemoryError) as error:
            outcome = type(error).__name__ + ": " + str(error)
        results[path] = {"outcome": outcome, "cpu_seconds": time.process_time() - started}
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
    print(json.dumps({"results": results, "rss_growth_bytes": grown}))
""")

OVERSIZED = {
    "vision_layers_10000": lambda c: c["vision_cfg"].update(layers=10000),
    "text_layers_100000": lambda c: c["text_cfg"].update(layers=100000),
    "vision_width_16384": lambda c: c["vision_cfg"].update(width=16384),
}


def test_refuses_config_far_larger_than_its_weights_fast_and_without_allocating(tiny_vit_dir, tmp_path):
    targets = [str(_copy_with(tiny_vit_dir, tmp_path / name, edit)) for name, edit in sorted(OVERSIZED.items())]
    # In a fresh process, so its peak memory is the intake's alone.
    done = subprocess.run([sys.executable, "-c", _SIZE_PROBE, *targets], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for target in targets:
        result = report["results"][target]
        assert result["outcome"].startswith("ConfigMismatchError"), result
        assert result["cpu_seconds"] < 10, result
    assert report["rss_growth_bytes"] < 300 * 2**20, report


def test_size_mismatch_names_both_parameter_counts(tiny_vit_dir, tmp_path):
    target = _copy_with(tiny_vit_dir, tmp_path / "m", lambda c: c["vision_cfg"].update(width=128))
    with pytest.raises(MalformedCheckpointError, match=r"the config implies \d+ values .* the file holds \d+"):
        load_checkpoint(target)


# --- untyped crashes become typed errors at intake -----------------------------------------------------


def _safetensors(header: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def test_safetensors_dtype_given_as_a_list_is_malformed():
    data = _safetensors({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    with pytest.raises(MalformedCheckpointError, match="unknown dtype"):
        parse_header(data, "list-dtype.safetensors")


def test_integer_of_5000_digits_in_a_safetensors_header_is_malformed():
    raw = b'{"w": {"dtype": "F32", "shape": [' + HUGE_INT.encode() + b'], "data_offsets": [0, 4]}}'
    with pytest.raises(MalformedCheckpointError, match="not valid JSON"):
        parse_header(struct.pack("<Q", len(raw)) + raw + b"\0" * 4, "huge.safetensors")


def test_integer_of_5000_digits_in_a_config_is_malformed(tiny_vit_dir, tmp_path):
    text = (tiny_vit_dir / "open_clip_config.json").read_text().replace('"width": 64', f'"width": {HUGE_INT}')
    assert HUGE_INT in text
    with pytest.raises(MalformedCheckpointError, match="not valid JSON"):
        load_checkpoint(_copy_with(tiny_vit_dir, tmp_path / "m", config_text=text))


def test_integer_of_5000_digits_in_a_manifest_is_a_manifest_error():
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest_text(f'{{"manifest_version": {HUGE_INT}, "classes": ["a"]}}', "huge.json")
    with pytest.raises(ClassListError, match="not valid JSON"):
        parse_classes_text(f"[{HUGE_INT}]", "huge.json")


@pytest.mark.parametrize("tower,key", [("vision_cfg", "width"), ("vision_cfg", "patch_size"),
                                       ("vision_cfg", "head_width"), ("vision_cfg", "layers"),
                                       ("text_cfg", "layers"), ("text_cfg", "width"), ("text_cfg", "heads")])
@pytest.mark.parametrize("value", [0, -8])
def test_zero_or_negative_size_in_a_config_is_malformed(tower, key, value, tiny_vit_dir, tmp_path):
    target = _copy_with(tiny_vit_dir, tmp_path / "m", lambda c: c[tower].update({key: value}))
    with pytest.raises(MalformedCheckpointError, match=f"{tower}.{key} must be a positive integer"):
        load_checkpoint(target)


def test_lone_surrogate_class_name_is_refused_by_validation():
    with pytest.raises(ClassListError, match="lone surrogate"):
        parse_manifest_text('{"manifest_version": 1, "classes": ["cat", "\\ud800"]}', "m.json")


def test_check_refuses_lone_surrogate_class_before_detection_and_writes_nothing(tiny_vit_dir, tmp_path):
    from cbpt_guard.cli.main import cli

    target = _copy_with(tiny_vit_dir, tmp_path / "m")
    (target / "cbpt_manifest.json").write_text('{"manifest_version": 1, "classes": ["cat", "\\ud800dog"]}')
    out = tmp_path / "report"
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["check", str(target), "--policy", "strict", "--out", str(out)])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert time.perf_counter() - started < 20  # intake alone: no detection ran
    assert not out.exists()
    errors = [line for line in result.stderr.splitlines() if line.startswith("cbpt-guard:")]  # beside progress
    assert len(errors) == 1 and errors[0].startswith("cbpt-guard: error:") and "surrogate" in errors[0]
    assert "detect" not in result.stderr


@pytest.mark.parametrize("template", ["a {:{}}", "a {:d}", "a {:%}", "a {:>99999999}", "a {!r}"])
def test_prompt_template_with_a_format_spec_is_refused_by_manifest_validation(template):
    document = json.dumps({"manifest_version": 1, "classes": ["cat"], "templates": [template]})
    with pytest.raises(ManifestError, match="exactly one plain"):
        parse_manifest_text(document, "m.json")


def test_template_with_literal_braces_is_still_accepted():
    document = json.dumps({"manifest_version": 1, "classes": ["cat"], "templates": ["{{a}} photo of a {}."]})
    assert parse_manifest_text(document, "m.json").templates == ("{{a}} photo of a {}.",)


# --- the manifest's version and size --------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "true"])
def test_manifest_version_must_be_the_integer_1(version):
    with pytest.raises(ManifestError, match="the integer 1"):
        parse_manifest_text(f'{{"manifest_version": {version}, "classes": ["cat"]}}', "m.json")


def test_manifest_in_a_model_directory_has_the_same_size_cap_as_a_classes_file(tiny_vit_dir, tmp_path):
    target = _copy_with(tiny_vit_dir, tmp_path / "m")
    padding = "x" * (MAX_FILE_BYTES + 1024)
    (target / "cbpt_manifest.json").write_text(
        json.dumps({"manifest_version": 1, "classes": CLASSES, "description": padding}))
    with pytest.raises(ManifestError, match=f"larger than the {MAX_FILE_BYTES}-byte limit"):
        load_checkpoint(target)
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("cat\n" + "#" + padding)
    with pytest.raises(ManifestError, match=f"larger than the {MAX_FILE_BYTES}-byte limit"):
        load_checkpoint(tiny_vit_dir, classes_file=classes_file)


def test_valid_directory_still_loads(tiny_vit_dir):
    report = load_checkpoint(tiny_vit_dir).report
    assert report.classes == tuple(CLASSES)
    assert report.parameter_count == sum(p.numel() for p in build_tiny("vit")[0].parameters())


def test_builtin_tower_config_copy_is_not_mutated(tiny_vit_dir):
    import open_clip

    before = copy.deepcopy(open_clip.get_model_config("ViT-S-32-alt"))
    with pytest.raises(MalformedCheckpointError):
        load_checkpoint(tiny_vit_dir / "open_clip_model.safetensors", arch="ViT-S-32-alt")
    assert open_clip.get_model_config("ViT-S-32-alt") == before
