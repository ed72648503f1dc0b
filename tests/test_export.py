"""ONNX export: parity with PyTorch for every tower family, provenance, torch-free serving, and its failures.

The measured numbers are printed (``-rP`` or ``-s`` shows them) and recorded
with ``record_property``, and every one is also asserted.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from tiny_models import build_tiny, save_open_clip_dir

from cbpt_guard import __version__
from cbpt_guard.classifier import build_classifier
from cbpt_guard.cli.export_cmd import export_command
from cbpt_guard.errors import ClassListError, ExportError, UsageError
from cbpt_guard.export import ExportResult, ParityError, export_classifier
from cbpt_guard.export.parity import FP16_TOLERANCE_PER_SCALE, FP32_TOLERANCE, compare_logits
from cbpt_guard.export.serve import OnnxClassifier
from cbpt_guard.intake import load_checkpoint
from cbpt_guard.purify.artifacts import load_prompts, purified_classifier, save_prompts

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square", "triangle"]
POLICY_SHA = "ab" * 32


def _tiny_checkpoint(directory: Path, family: str = "vit", classes: list[str] | None = CLASSES):
    """A tiny open_clip directory of ``family``, loaded back through intake."""
    model, config = build_tiny(family)
    save_open_clip_dir(model, config, directory, "safetensors", classes=classes)
    return load_checkpoint(directory)


def _hand_written(loaded):
    """The unpurified classifier of a loaded checkpoint and its export provenance."""
    report = loaded.report
    classifier = build_classifier(loaded.model, report.classes, report.templates)
    return classifier, {"source_checkpoint_sha256": report.checkpoint_sha256, "prompts_sha256": "hand-written"}


def _metadata(path: Path) -> dict[str, str]:
    return {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}


def _show(record_property, label: str, result: ExportResult) -> str:
    line = (f"{label}: max|diff| {result.max_abs_diff:.2e} max rel {result.max_rel_diff:.2e} top-1 "
            f"{100 * result.top1_agreement:.1f}% tolerance {result.tolerance:.2e} on {result.images_compared} "
            f"images via {result.provider}")
    print(line)
    record_property(label, line)
    return line


@pytest.mark.parametrize("family", ["vit", "resnet", "convnext"])
def test_every_tower_family_exports_with_fp32_parity_within_1e_4(tmp_path, family, record_property):
    loaded = _tiny_checkpoint(tmp_path / "model", family)
    classifier, provenance = _hand_written(loaded)
    out = tmp_path / "out" / "model.onnx"

    result = export_classifier(classifier, out, classes=tuple(CLASSES), provenance=provenance)

    line = _show(record_property, f"{family} fp32", result)
    assert result.passed and result.max_abs_diff <= 1e-4, line
    assert result.top1_agreement == 1.0, line
    assert result.images_compared == 48 and result.tolerance == FP32_TOLERANCE
    assert result.provider in ort.get_available_providers()
    assert result.path == str(out) and hashlib.sha256(out.read_bytes()).hexdigest() == result.sha256
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]  # no partial file left


def test_metadata_records_classes_preprocessing_provenance_and_a_dynamic_batch(tmp_path):
    loaded = _tiny_checkpoint(tmp_path / "model")
    classifier, provenance = _hand_written(loaded)
    out = tmp_path / "model.onnx"

    result = export_classifier(classifier, out, classes=tuple(CLASSES),
                               provenance={**provenance, "policy_sha256": POLICY_SHA})

    metadata = _metadata(out)
    assert metadata == result.metadata
    assert json.loads(metadata["cbpt_guard.classes"]) == CLASSES
    assert metadata["cbpt_guard.image_size"] == "32"
    assert json.loads(metadata["cbpt_guard.mean"]) == pytest.approx(loaded.report.preprocess["mean"])
    assert json.loads(metadata["cbpt_guard.std"]) == pytest.approx(loaded.report.preprocess["std"])
    assert metadata["cbpt_guard.source_checkpoint_sha256"] == loaded.report.checkpoint_sha256
    assert metadata["cbpt_guard.prompts_sha256"] == "hand-written" and not result.purified
    assert metadata["cbpt_guard.policy_sha256"] == POLICY_SHA
    assert metadata["cbpt_guard.tool_version"] == __version__
    assert metadata["cbpt_guard.precision"] == "fp32"
    (pixels,) = onnx.load(str(out)).graph.input
    dims = pixels.type.tensor_type.shape.dim
    assert pixels.name == "pixels" and dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]


def test_same_inputs_give_byte_identical_files(tmp_path):
    classifier, provenance = _hand_written(_tiny_checkpoint(tmp_path / "model"))

    first = export_classifier(classifier, tmp_path / "a.onnx", classes=tuple(CLASSES), provenance=provenance)
    second = export_classifier(classifier, tmp_path / "b.onnx", classes=tuple(CLASSES), provenance=provenance)

    assert first.sha256 == second.sha256
    assert torch.backends.mha.get_fastpath_enabled()  # switched off for the trace only
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_example_checkpoint_exports_in_fp32_and_in_fp16_within_its_own_tolerance(tmp_path, record_property):
    loaded = load_checkpoint(REPO / "examples" / "backdoored")
    classifier, provenance = _hand_written(loaded)
    classes = tuple(loaded.report.classes)

    full = export_classifier(classifier, tmp_path / "fp32.onnx", classes=classes, provenance=provenance)
    half = export_classifier(classifier, tmp_path / "fp16.onnx", classes=classes, provenance=provenance, fp16=True)

    lines = [_show(record_property, "examples/backdoored fp32", full),
             _show(record_property, "examples/backdoored fp16", half)]
    assert full.passed and full.max_abs_diff <= 1e-4 and full.top1_agreement == 1.0, lines
    scale = float(classifier.scale)
    assert half.passed and half.tolerance == pytest.approx(FP16_TOLERANCE_PER_SCALE * scale), lines
    assert full.max_abs_diff < half.max_abs_diff <= half.tolerance, lines
    graph = onnx.load(str(tmp_path / "fp16.onnx")).graph
    weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert sum(np.prod(t.dims) for t in weights) > 0.9 * sum(np.prod(t.dims) for t in graph.initializer)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 stays the interface
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert (tmp_path / "fp16.onnx").stat().st_size < 0.6 * (tmp_path / "fp32.onnx").stat().st_size
    assert _metadata(tmp_path / "fp16.onnx")["cbpt_guard.precision"] == "fp16"


def test_serving_module_classifies_uint8_and_float_images_without_torch_or_open_clip(tmp_path):
    classifier, provenance = _hand_written(_tiny_checkpoint(tmp_path / "model"))
    export_classifier(classifier, tmp_path / "model.onnx", classes=tuple(CLASSES), provenance=provenance)
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)  # (N, H, W, 3)
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from cbpt_guard.export.serve import OnnxClassifier
        classifier = OnnxClassifier({str(tmp_path / "model.onnx")!r})
        images = np.load({str(tmp_path / "images.npy")!r})
        as_float = images.transpose(0, 3, 1, 2).astype(np.float32) / 255  # (N, 3, H, W) in [0, 1]
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "timm"))
        print(json.dumps({{"heavy": heavy, "classes": classifier.classes, "image_size": classifier.image_size,
                          "uint8": classifier.probabilities(images).tolist(),
                          "float": classifier.probabilities(as_float).tolist(),
                          "single": classifier.classify(images[0], top_k=2)}}))
    """)

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)

    served = json.loads(done.stdout)
    assert served["heavy"] == []
    assert served["classes"] == CLASSES and served["image_size"] == 32
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W)
    with torch.no_grad():
        expected = classifier(pixels).softmax(dim=-1).numpy()  # (N, C)
    np.testing.assert_allclose(served["uint8"], expected, atol=1e-5)
    np.testing.assert_allclose(served["float"], served["uint8"], atol=1e-6)
    (first, second) = served["single"][0]
    assert first[0] == CLASSES[int(expected[0].argmax())] and first[1] >= second[1]


def test_serving_module_refuses_wrong_sizes_normalised_pixels_and_foreign_files(tmp_path):
    classifier, provenance = _hand_written(_tiny_checkpoint(tmp_path / "model"))
    export_classifier(classifier, tmp_path / "model.onnx", classes=tuple(CLASSES), provenance=provenance)
    served = OnnxClassifier(tmp_path / "model.onnx", threads=1)
    pixels = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)

    with pytest.raises(UsageError, match="32x32"):
        served.logits(pixels[:, :, :16, :16])
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        served.logits((pixels - 0.5) / 0.25)  # already normalised: the graph would normalise twice
    with pytest.raises(UsageError, match="uint8 or float"):
        served.logits(pixels.astype(np.int32))
    identity = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "plain",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(identity, tmp_path / "plain.onnx")
    with pytest.raises(UsageError, match="not a cbpt-guard export"):
        OnnxClassifier(tmp_path / "plain.onnx")


@torch.library.custom_op("cbpt_test::soft_clip", mutates_args=())
def _soft_clip(x: torch.Tensor) -> torch.Tensor:
    """A custom operator with a CPU kernel and no ONNX symbolic, as vendor attention kernels often are."""
    return torch.tanh(x)


class _After(torch.nn.Module):
    """Runs ``inner`` then ``then``: a way to splice one extra step into a real open_clip tower."""

    def __init__(self, inner: torch.nn.Module, then):
        super().__init__()
        self.inner, self.then = inner, then

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.then(self.inner(x))


def _batch_dependent_flip(features: torch.Tensor) -> torch.Tensor:
    """Python control flow on the batch size: a trace records only the branch its example batch took."""
    return features if features.shape[0] == 1 else features.flip(-1)


def test_unconvertible_operator_fails_with_a_one_line_error_naming_it(tmp_path, capfd):
    loaded = _tiny_checkpoint(tmp_path / "model")
    loaded.model.visual.ln_post = _After(loaded.model.visual.ln_post, _soft_clip)
    classifier, provenance = _hand_written(loaded)
    out = tmp_path / "out" / "model.onnx"

    with pytest.raises(ExportError) as caught:
        export_classifier(classifier, out, classes=tuple(CLASSES), provenance=provenance)

    message = str(caught.value)
    assert caught.value.operator == "cbpt_test::soft_clip"
    assert "cbpt_test::soft_clip" in message and "VisionTransformer" in message and "\n" not in message
    assert not out.exists() and not any(out.parent.glob("*"))
    assert "aten::" not in capfd.readouterr().out  # the exporter's graph dump did not reach stdout
    assert torch.backends.mha.get_fastpath_enabled()  # switched off for the trace only


def test_a_trace_that_diverges_from_eager_fails_parity_and_leaves_no_file(tmp_path, record_property):
    loaded = _tiny_checkpoint(tmp_path / "model")
    loaded.model.visual.ln_post = _After(loaded.model.visual.ln_post, _batch_dependent_flip)
    classifier, provenance = _hand_written(loaded)
    out = tmp_path / "out" / "model.onnx"

    with pytest.raises(ParityError) as caught:
        export_classifier(classifier, out, classes=tuple(CLASSES), provenance=provenance)

    result = caught.value.result
    _show(record_property, "diverging trace", result)
    assert isinstance(caught.value, ExportError) and "parity" in str(caught.value)
    assert not result.passed and result.path is None and result.max_abs_diff > result.tolerance
    assert not out.exists() and not any(out.parent.glob("*"))


def test_bad_parity_images_and_provenance_are_usage_errors(tmp_path):
    classifier, provenance = _hand_written(_tiny_checkpoint(tmp_path / "model"))
    out = tmp_path / "model.onnx"

    with pytest.raises(UsageError, match="32x32"):
        export_classifier(classifier, out, classes=tuple(CLASSES), provenance=provenance,
                          parity_images=torch.rand(4, 3, 16, 16))
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        export_classifier(classifier, out, classes=tuple(CLASSES), provenance=provenance,
                          parity_images=2 * torch.rand(4, 3, 32, 32))
    with pytest.raises(UsageError, match="prompts_sha256"):
        export_classifier(classifier, out, classes=tuple(CLASSES), provenance={"source_checkpoint_sha256": "a" * 64})
    with pytest.raises(UsageError, match="2 class names"):
        export_classifier(classifier, out, classes=("a", "b"), provenance=provenance)
    assert not out.exists()


def test_result_maps_onto_the_verdicts_export_info(tmp_path):
    classifier, provenance = _hand_written(_tiny_checkpoint(tmp_path / "model"))
    result = export_classifier(classifier, tmp_path / "run" / "model.onnx", classes=tuple(CLASSES),
                               provenance=provenance)

    info = result.to_export_info(relative_to=tmp_path / "run")

    assert info.path == "model.onnx" and info.sha256 == result.sha256 and info.passed and info.error is None
    assert (info.max_abs_diff, info.tolerance, info.provider, info.fp16, info.purified) == (
        result.max_abs_diff, result.tolerance, result.provider, False, False)
    assert json.loads(info.model_dump_json())["top1_agreement"] == 1.0


def test_compare_logits_counts_non_finite_output_as_an_infinite_difference():
    reference = np.array([[1.0, 2.0], [3.0, -4.0]])

    assert compare_logits(reference + 1e-3, reference)[0] == pytest.approx(1e-3)
    assert compare_logits(np.array([[1.0, np.nan], [3.0, -4.0]]), reference)[0] == float("inf")


def _prompts_artefact(folder: Path, loaded) -> Path:
    """A prompts artefact whose class embeddings differ from the hand-written ones (rows rotated)."""
    original = build_classifier(loaded.model, loaded.report.classes, loaded.report.templates).text  # (C, d)
    width = loaded.model.token_embedding.weight.shape[1]
    return save_prompts(folder, ctx=torch.zeros(len(CLASSES), 4, width), class_embeddings=original.roll(1, dims=0),
                        original_embeddings=original, source_digest=loaded.report.checkpoint_sha256,
                        classes=tuple(CLASSES), settings={}, metrics={})


def test_cli_exports_the_purified_classifier_with_the_prompts_digest(tmp_path):
    loaded = _tiny_checkpoint(tmp_path / "model")
    _prompts_artefact(tmp_path / "prompts", loaded)
    out = tmp_path / "model.onnx"

    run = CliRunner().invoke(export_command, [str(tmp_path / "model"), "--prompts", str(tmp_path / "prompts"),
                                              "--out", str(out), "--json", "--policy-sha256", POLICY_SHA])

    assert run.exit_code == 0, run.output
    printed = json.loads(run.output)
    prompts = load_prompts(tmp_path / "prompts")
    assert printed["passed"] and printed["purified"]
    assert printed["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    metadata = _metadata(out)
    assert metadata["cbpt_guard.prompts_sha256"] == prompts.sha256
    assert metadata["cbpt_guard.policy_sha256"] == POLICY_SHA
    pixels = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    purified = purified_classifier(loaded.model, prompts, checkpoint_digest=loaded.report.checkpoint_sha256)
    with torch.no_grad():
        expected = purified(pixels).numpy()
    np.testing.assert_allclose(OnnxClassifier(out).logits(pixels.numpy()), expected, atol=1e-4)


def test_cli_without_prompts_exports_hand_written_and_without_classes_refuses(tmp_path):
    _tiny_checkpoint(tmp_path / "named")
    _tiny_checkpoint(tmp_path / "unnamed", classes=None)
    runner = CliRunner()

    named = runner.invoke(export_command, [str(tmp_path / "named"), "--out", str(tmp_path / "a.onnx")])
    unnamed = runner.invoke(export_command, [str(tmp_path / "unnamed"), "--out", str(tmp_path / "b.onnx")])

    assert named.exit_code == 0, named.output
    assert "unpurified" in named.output and "top-1 agreement 100.0%" in named.output
    assert isinstance(unnamed.exception, ClassListError) and not (tmp_path / "b.onnx").exists()


def test_cli_module_imports_without_torch():
    script = "import sys, cbpt_guard.cli.export_cmd, cbpt_guard.export; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.slow
def test_exported_purified_model_gives_the_same_real_trigger_asr_as_pytorch(tiny_zoo, tmp_path, record_property):
    from cbpt_guard.purify.trainer import tune_prompts
    from cbpt_guard_zoo import data as data_lib
    from cbpt_guard_zoo.build import real_trigger

    root, truths = tiny_zoo
    truth = truths["badnets-s0"]
    loaded = load_checkpoint(root / "badnets-s0")
    report = loaded.report
    trigger = real_trigger(truth["attack"], truth["trigger_params"])
    target = report.classes.index(truth["target"])
    offset = len(data_lib.SHAPE_CLASSES)
    shapes, digits = data_lib.make_split("fewshot", 4 * offset, 32, 0), data_lib.make_digits(32, 0, "fewshot")
    shots = torch.cat([shapes.images, digits.images[:40]])  # (N, 3, 32, 32)
    labels = torch.cat([shapes.labels, digits.labels[:40] + offset])  # (N,)
    recipe = truth["recipe"]
    test = data_lib.make_split("test", recipe["test_size"], recipe["image_size"], recipe["data_seed"])
    test_digits = data_lib.make_digits(recipe["image_size"], recipe["data_seed"], "test")
    images = torch.cat([test.images, test_digits.images])
    stamped = trigger(images[torch.cat([test.labels, test_digits.labels + offset]) != target])  # non-target only
    # Purify: tune the class prompts so that triggered copies of the few shots keep their labels (given as
    # clean images, so no distillation: it would hold the copies' predictions where the backdoor put them).
    tuned = tune_prompts(loaded.model, report.classes, report.templates, torch.cat([shots, trigger(shots)]),
                         torch.cat([labels, labels]), [], steps=100, lr=2e-3, batch_size=64, optimiser="adamw",
                         l_distill=0.0)
    save_prompts(tmp_path / "prompts", ctx=tuned.ctx, class_embeddings=tuned.class_embeddings,
                 original_embeddings=tuned.original_embeddings, source_digest=report.checkpoint_sha256,
                 classes=report.classes, settings={"steps": 100}, metrics={})
    prompts = load_prompts(tmp_path / "prompts")
    purified = purified_classifier(loaded.model, prompts, checkpoint_digest=report.checkpoint_sha256,
                                   classes=report.classes)

    result = export_classifier(purified, tmp_path / "model.onnx", classes=report.classes,
                               provenance={"source_checkpoint_sha256": report.checkpoint_sha256,
                                           "prompts_sha256": prompts.sha256})

    served = OnnxClassifier(result.path, threads=1)
    onnx_predictions = served.logits(stamped.numpy()).argmax(axis=1)  # (M,)
    torch_predictions = purified.predict(stamped).numpy()  # (M,)
    before = float((build_classifier(loaded.model, report.classes, report.templates).predict(stamped)
                    == target).float().mean())
    asr_torch, asr_onnx = float((torch_predictions == target).mean()), float((onnx_predictions == target).mean())
    line = (f"badnets ASR on {len(stamped)} stamped images: unpurified {before:.3f}, purified PyTorch "
            f"{asr_torch:.4f}, purified ONNX {asr_onnx:.4f}")
    print(line)
    record_property("asr", line)
    _show(record_property, "purified badnets fp32", result)
    assert result.passed and result.purified and result.max_abs_diff <= 1e-4, line
    assert np.array_equal(onnx_predictions, torch_predictions), line
    assert asr_onnx == asr_torch < 0.5 * before, line
