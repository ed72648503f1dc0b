"""Real open_clip checkpoints of three architecture families load and report correctly."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import TINY_CONFIGS, build_tiny, save_open_clip_dir

from cbpt_guard.errors import (
    ClassListError,
    MalformedCheckpointError,
    NothingScannableError,
    UnsupportedArchitectureError,
    UsageError,
)
from cbpt_guard.intake import load_checkpoint

torch.set_num_threads(1)
CLASSES = ["circle", "square", "triangle"]


def _features(model):
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 32, 32, generator=generator)
    tokens = torch.randint(1, 49000, (2, 77), generator=generator)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("serialization", ["safetensors", "bin"])
def test_open_clip_directory_loads_with_identical_features(tmp_path, family, serialization):
    model, config = build_tiny(family)
    save_open_clip_dir(model, config, tmp_path, serialization, classes=CLASSES)

    loaded = load_checkpoint(tmp_path)

    report = loaded.report
    expected_tower = {"vit": "VisionTransformer", "resnet": "ModifiedResNet", "convnext": "TimmModel"}[family]
    assert report.vision_tower == expected_tower
    assert report.layout == "open_clip-dir"
    assert report.parameter_count == sum(p.numel() for p in model.parameters())
    assert report.image_size == (32, 32)
    assert report.context_length == 77
    assert report.embed_dim == 32
    assert report.classes == tuple(CLASSES) and report.class_count == 3
    weights = [f for f in report.files if f.role == "weights"]
    assert len(weights) == 1
    assert weights[0].kind == ("safetensors" if serialization == "safetensors" else "torch_zip")
    assert report.checkpoint_sha256 == weights[0].sha256
    for got, want in zip(_features(loaded.model), _features(model)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_directory_with_both_formats_loads_safetensors_and_scans_the_bin(tmp_path):
    model, config = build_tiny("vit")
    save_open_clip_dir(model, config, tmp_path, "both")

    report = load_checkpoint(tmp_path).report

    roles = {f.path.rsplit("/", 1)[-1]: (f.role, f.note) for f in report.files}
    assert roles["open_clip_model.safetensors"] == ("weights", "loaded")
    assert roles["open_clip_pytorch_model.bin"] == ("other", "scanned for unsafe imports; not loaded")
    assert roles["open_clip_config.json"][0] == "config"


def test_single_weights_file_with_builtin_arch_name(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    config = open_clip.get_model_config("RN50")
    assert config is not None
    # A built-in architecture at full size, saved as a bare weights file.
    model = open_clip.create_model("RN50", pretrained=None)
    path = tmp_path / "rn50.safetensors"
    save_file(model.state_dict(), str(path))

    report = load_checkpoint(path, arch="RN50").report

    assert report.layout == "weights-file" and report.architecture == "RN50"
    assert report.parameter_count == sum(p.numel() for p in model.parameters())
    assert report.image_size == (224, 224)


def test_single_file_without_arch_is_a_usage_error(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(UsageError, match="--arch"):
        load_checkpoint(path)


def test_unknown_architecture_is_unsupported(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(UnsupportedArchitectureError, match="unknown architecture 'ViT-Nope'"):
        load_checkpoint(path, arch="ViT-Nope")


def test_shapes_that_do_not_match_the_architecture_are_named(tmp_path):
    model, config = build_tiny("vit")
    save_open_clip_dir(model, config, tmp_path, "safetensors")
    config["vision_cfg"]["width"] = 96
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    with pytest.raises(MalformedCheckpointError, match=r"has shape \(64,"):
        load_checkpoint(tmp_path)


def test_missing_tensors_are_reported_with_a_count(tmp_path):
    from safetensors.torch import save_file

    model, config = build_tiny("vit")
    save_open_clip_dir(model, config, tmp_path, "safetensors")
    state = model.state_dict()
    del state["visual.proj"]
    save_file(state, str(tmp_path / "open_clip_model.safetensors"))
    with pytest.raises(MalformedCheckpointError, match="1 missing .*visual.proj"):
        load_checkpoint(tmp_path)


def test_truncated_weights_file_is_malformed(tmp_path):
    model, config = build_tiny("vit")
    save_open_clip_dir(model, config, tmp_path, "safetensors")
    weights = tmp_path / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(MalformedCheckpointError, match="truncated"):
        load_checkpoint(tmp_path)


def test_empty_class_list_is_refused(tmp_path):
    model, config = build_tiny("vit")
    save_open_clip_dir(model, config, tmp_path, "safetensors")
    classes = tmp_path / "classes.txt"
    classes.write_text("# nothing here\n\n")
    with pytest.raises(ClassListError, match="empty"):
        load_checkpoint(tmp_path, classes_file=classes)


def test_classes_flag_overrides_the_manifest(tmp_path):
    model, config = build_tiny("vit")
    save_open_clip_dir(model, config, tmp_path / "m", "safetensors", classes=CLASSES)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    report = load_checkpoint(tmp_path / "m", classes_file=classes).report
    assert report.classes == ("cat", "dog") and report.classes_source == str(classes)


def test_directory_without_model_config_says_what_it_skipped(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    with pytest.raises(NothingScannableError) as caught:
        load_checkpoint(tmp_path)
    assert "nothing scannable" in str(caught.value)
    reasons = dict(caught.value.skipped)
    assert reasons[str(tmp_path / "sub")] == "subdirectory, not part of a model layout"
    assert "no model config" in reasons[str(tmp_path / "notes.txt")]


def test_empty_directory_is_nothing_scannable(tmp_path):
    with pytest.raises(NothingScannableError, match="empty"):
        load_checkpoint(tmp_path)


def test_config_without_weights_is_nothing_scannable(tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIGS["vit"]}))
    with pytest.raises(NothingScannableError, match="no weights file"):
        load_checkpoint(tmp_path)


def test_missing_path_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_checkpoint(tmp_path / "absent")


def test_hf_text_tower_that_needs_a_download_is_unsupported(tmp_path):
    config = json.loads(json.dumps(TINY_CONFIGS["vit"]))
    config["text_cfg"] = {"hf_model_name": "roberta-base", "hf_tokenizer_name": "roberta-base"}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"\x02\0\0\0\0\0\0\0{}")
    with pytest.raises(UnsupportedArchitectureError, match="would need a download"):
        load_checkpoint(tmp_path)


def test_protocol_0_pickle_beside_the_weights_is_still_scanned(tmp_path):
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    model, config = build_tiny("vit")
    save_open_clip_dir(model, config, tmp_path / "m", "safetensors")
    (tmp_path / "m" / "optimizer.pt").write_bytes(pickle.dumps(Payload(), protocol=0))
    from cbpt_guard.errors import UnsafeCheckpointError

    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_checkpoint(tmp_path / "m")
    assert not (tmp_path / "pwned").exists()
