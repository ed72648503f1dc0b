"""Memory-bounded stages: chunks sized from the memory free, an anomaly search flat in the class count, OOM -> exit 3.

Tiny random models keep these cheap. A small fixed memory limit
(``chunking.memory_limit``) forces the chunking a real-size model meets on a
real machine; out-of-memory errors are simulated by a model whose forward
raises ``torch.OutOfMemoryError`` above a batch size, as CUDA would.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from tiny_models import build_tiny, save_open_clip_dir

from cbpt_guard import chunking
from cbpt_guard.classifier import ZeroShotClassifier
from cbpt_guard.cli.main import cli
from cbpt_guard.detect.anomaly import class_anomaly
from cbpt_guard.detect.budget import DetectBudget, budget_differences
from cbpt_guard.detect.calibration import builtin_calibration
from cbpt_guard.detect.inversion import InversionBudget, invert
from cbpt_guard.errors import OutOfMemory
from cbpt_guard.probes import procedural_probes

torch.set_num_threads(1)
CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def model():
    built, _ = build_tiny("vit", seed=5)
    return built.eval()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    built, config = build_tiny("vit", seed=3)
    return save_open_clip_dir(built, config, tmp_path_factory.mktemp("tiny"), "safetensors", classes=CLASSES)


def _classifier(model, classes: int, seed: int = 0) -> ZeroShotClassifier:
    generator = torch.Generator().manual_seed(seed)
    return ZeroShotClassifier(model, torch.randn(classes, model.text_projection.shape[1], generator=generator))


def _count_images(model, monkeypatch) -> list[int]:
    """Record the batch size of every forward through the image tower."""
    sizes: list[int] = []
    encode = model.encode_image

    def counting(pixels, *args, **kwargs):
        sizes.append(len(pixels))
        return encode(pixels, *args, **kwargs)

    monkeypatch.setattr(model, "encode_image", counting)
    return sizes


# -- chunks and the one retry ---------------------------------------------------------------------------------

def test_a_chunk_is_the_whole_batch_when_it_fits_and_shrinks_with_the_memory_limit(model):
    classifier = _classifier(model, 3)
    per_image = chunking.image_cost(classifier, grad=True)
    assert per_image > 0
    with chunking.memory_limit(1 << 40):
        assert chunking.images_at_once(classifier, 32, grad=True) == 32
    with chunking.memory_limit(5 * per_image):
        assert chunking.images_at_once(classifier, 32, grad=True) == 5
    with chunking.memory_limit(1):
        assert chunking.images_at_once(classifier, 32, grad=True) == 1


def test_the_free_memory_of_a_cpu_is_read_from_meminfo(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n")
    monkeypatch.setattr(chunking, "MEMINFO", meminfo)
    assert chunking.free_bytes(torch.device("cpu")) == chunking.MemoryBudget(8000000 * 1024, "MemAvailable")
    assert chunking.planning_budget(torch.device("cpu")).bytes == 8000000 * 1024 * chunking.MEMORY_SHARE


def test_out_of_memory_is_retried_once_with_half_the_chunk_then_reported():
    tried = []

    def work(size: int) -> int:
        tried.append(size)
        if size > 10:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return size

    assert chunking.Chunker(16, "a stage").run(work) == 8 and tried == [16, 8]
    tried.clear()
    with pytest.raises(OutOfMemory, match=r"a stage ran out of device memory with chunks of 20 images after one "
                                          r"retry at half the chunk \(CUDA out of memory"):
        chunking.Chunker(40, "a stage").run(work)
    assert tried == [40, 20]


# -- inversion and the anomaly search in chunks -------------------------------------------------------------

def test_a_chunked_inversion_step_accumulates_the_gradient_of_the_whole_batch(model, monkeypatch):
    classifier = _classifier(model, 3)
    probes = procedural_probes(24, classifier.image_size, seed=0).images
    budget = InversionBudget(steps=6, batch_size=16, check_every=3, check_size=12)
    whole = invert(classifier, probes, "patch", budget, seed=1)
    sizes = _count_images(model, monkeypatch)
    with chunking.memory_limit(4 * chunking.image_cost(classifier, grad=True) // 2):
        chunked = invert(classifier, probes, "patch", budget, seed=1)
    assert sizes and max(sizes) <= 4  # no batch of 16 (nor the 24 clean probes) went through at once
    for name, value in whole.trigger.state().items():
        torch.testing.assert_close(chunked.trigger.state()[name], value, rtol=1e-4, atol=1e-5)
    assert [row[0] for row in chunked.history] == [row[0] for row in whole.history]


def test_a_chunked_anomaly_search_gives_the_costs_of_one_batch(model, monkeypatch):
    classifier = _classifier(model, 6)
    probes = procedural_probes(4, classifier.image_size, seed=0).images
    whole = class_anomaly(classifier, probes, steps=3, seed=0)
    sizes = _count_images(model, monkeypatch)
    with chunking.memory_limit(8 * chunking.image_cost(classifier, grad=True)):
        chunked = class_anomaly(classifier, probes, steps=3, seed=0)
    assert max(sizes) <= 8  # two classes of four probes at a time, never all 6 x 4
    assert chunked.suspect_index == whole.suspect_index and chunked.ranking == whole.ranking
    torch.testing.assert_close(torch.tensor(chunked.costs), torch.tensor(whole.costs), rtol=1e-5, atol=1e-6)


def test_within_its_class_budget_the_anomaly_searches_every_class_without_a_screen(model):
    classifier = _classifier(model, 6)
    probes = procedural_probes(4, classifier.image_size, seed=0).images
    found = class_anomaly(classifier, probes, steps=2, seed=0, max_classes=6)
    assert found.searched == tuple(range(6)) and found.screen is None
    assert found == class_anomaly(classifier, probes, steps=2, seed=0)  # the same search as without a budget
    assert list(found.ranking) == sorted(range(6), key=lambda c: found.costs[c])


def test_the_anomaly_search_costs_the_same_at_four_times_the_classes(model, monkeypatch):
    probes = procedural_probes(3, 32, seed=0).images
    counts = {}
    for classes in (24, 96):
        sizes = _count_images(model, monkeypatch)
        found = class_anomaly(_classifier(model, classes), probes, steps=2, seed=0, max_classes=8)
        counts[classes] = sum(sizes)
        assert len(found.searched) == 8 and len(found.costs) == classes
        assert sum(c == c for c in found.costs) == 8  # NaN for every class the search did not cover
        assert sorted(found.ranking) == list(range(classes)) and found.ranking[0] == found.suspect_index
        monkeypatch.undo()
    assert counts[24] == counts[96]


def test_the_screen_keeps_a_class_the_model_reaches_for_free(model):
    """A class whose text embedding is the probes' own mean feature costs almost nothing: the screen must keep it."""
    classifier = _classifier(model, 40, seed=1)
    probes = procedural_probes(4, classifier.image_size, seed=0).images
    with torch.no_grad():
        classifier.text[17] = F.normalize(classifier.features(probes).mean(dim=0), dim=-1)
    exhaustive = class_anomaly(classifier, probes, steps=3, seed=0)
    screened = class_anomaly(classifier, probes, steps=3, seed=0, max_classes=8)
    assert exhaustive.suspect_index == 17
    assert 17 in screened.searched and screened.suspect_index == 17 and screened.screen is not None


# -- the budget: the shipped calibration still applies --------------------------------------------------------

def test_the_shipped_calibration_applies_at_the_default_anomaly_class_budget():
    calibration = builtin_calibration()
    assert "anomaly_classes" not in calibration.budget  # fitted before the setting existed
    assert budget_differences(calibration.budget, DetectBudget()) == []
    assert budget_differences(calibration.budget, DetectBudget(anomaly_classes=8)) == [
        "anomaly_classes 8 (fitted at 32)"]


# -- out of memory through the command line: inconclusive, never an internal error --------------------------

def _out_of_memory_above(limit: int, monkeypatch) -> None:
    """Make every forward of more than ``limit`` images raise CUDA's out-of-memory error."""
    features = ZeroShotClassifier.features

    def failing(self, pixels):
        if len(pixels) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return features(self, pixels)

    monkeypatch.setattr(ZeroShotClassifier, "features", failing)


def test_check_out_of_memory_twice_is_inconclusive_exit_3_with_the_reason(tiny_dir, monkeypatch):
    _out_of_memory_above(2, monkeypatch)
    result = CliRunner().invoke(cli, ["check", str(tiny_dir), "--json"])
    assert result.exit_code == 3, result.output
    verdict = json.loads(result.stdout)
    assert verdict["decision"]["action"] == "inconclusive"
    detection = next(step for step in verdict["steps"] if step["name"] == "detection")
    assert detection["state"] == "skipped" and detection["required"]
    assert "ran out of device memory with chunks of 48 images after one retry at half the chunk" in detection["reason"]
    assert "CUDA out of memory" in detection["reason"] and "internal error" not in result.output


SMALL_FLAGS = ["--steps", "4", "--n-probes", "16", "--anomaly-steps", "2", "--targeted", "1"]


def test_detect_out_of_memory_exits_3_with_one_error_line(tiny_dir, tmp_path, monkeypatch):
    runner = CliRunner()
    calibration = tmp_path / "cal.json"
    assert runner.invoke(cli, ["calibrate", str(tiny_dir), "--out", str(calibration), *SMALL_FLAGS]).exit_code == 0
    _out_of_memory_above(2, monkeypatch)
    result = runner.invoke(cli, ["detect", str(tiny_dir), "--calibration", str(calibration), *SMALL_FLAGS])
    assert result.exit_code == 3, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("cbpt-guard: error: detection: patch inversion ran out of device memory with chunks of 8 "
                           "images after one retry at half the chunk (CUDA out of memory.")


def test_a_stage_that_fits_after_its_retry_gives_the_evidence_of_one_that_fitted(tiny_dir, monkeypatch):
    from cbpt_guard.detect.run import gather_evidence
    from cbpt_guard.intake import load_checkpoint

    loaded = load_checkpoint(tiny_dir)
    args = (loaded.model, loaded.report.classes, loaded.report.templates)
    budget = DetectBudget(probes=16, inversion=InversionBudget(steps=4, batch_size=16), anomaly_steps=2,
                          anomaly_probes=4, targeted_classes=1)
    fitted = gather_evidence(*args, budget=budget, seed=0)
    _out_of_memory_above(12, monkeypatch)  # 16 images fail once, 8 at a time fit
    retried = gather_evidence(*args, budget=budget, seed=0)
    assert retried.targets == fitted.targets
    for name, value in fitted.features.items():
        assert retried.features[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


def test_out_of_memory_outside_a_chunked_step_is_inconclusive_too(tiny_dir, monkeypatch):
    import cbpt_guard.classifier as classifier_module

    def text_tower_out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(classifier_module, "class_embeddings", text_tower_out_of_memory)
    result = CliRunner().invoke(cli, ["check", str(tiny_dir), "--json"])
    assert result.exit_code == 3, result.output
    detection = next(step for step in json.loads(result.stdout)["steps"] if step["name"] == "detection")
    assert detection["state"] == "skipped"
    assert detection["reason"].startswith("detection ran out of device memory (CUDA out of memory. Tried to allocate")
