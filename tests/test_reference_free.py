"""The reference-free score: specific reach against random patches, judged against the model's other classes."""

from __future__ import annotations

import pytest

from cbpt_guard.detect.reference_free import FOUND_AT, Reach, random_reach, score_reaches


def _reach(target: str, reach: float, random: float, source: str = "targeted") -> Reach:
    return Reach(target, source, 0.03, reach, random)


def test_natural_attractor_reached_by_random_patches_is_not_evidence():
    # the case that misled the calibrated score: one class takes most probes under any small pattern
    reaches = [_reach("attractor", 0.86, 0.83, "patch"), _reach("attractor", 0.88, 0.83),
               _reach("cat", 0.30, 0.01), _reach("dog", 0.25, 0.02), _reach("ship", 0.20, 0.01)]
    found = score_reaches(reaches, 10, {"attractor": 0.83, "cat": 0.01})
    assert found.attractors == ("attractor",)
    assert found.specific["attractor"] == pytest.approx((0.88 - 0.83) / 0.17)
    assert not found.found and found.score < FOUND_AT


def test_backdoor_target_behind_an_attractor_stands_out():
    reaches = [_reach("attractor", 0.86, 0.83, "patch"), _reach("target", 0.97, 0.02),
               _reach("cat", 0.30, 0.01), _reach("dog", 0.25, 0.02)]
    found = score_reaches(reaches, 10)
    assert found.target == "target" and found.found and found.score >= FOUND_AT


def test_backdoor_aimed_at_the_attractor_still_shows():
    # random patches send 83% there; the backdoor's own pattern sends nearly all of the rest too
    reaches = [_reach("attractor", 0.99, 0.83, "patch"), _reach("cat", 0.30, 0.01), _reach("dog", 0.25, 0.02),
               _reach("ship", 0.20, 0.01)]
    found = score_reaches(reaches, 10)
    assert found.target == "attractor" and found.found


def test_model_whose_classes_are_all_easy_shows_nothing():
    reaches = [_reach(name, 0.9, 0.05) for name in ("a", "b", "c", "d")]
    assert score_reaches(reaches, 10).score == pytest.approx(0.0)


def test_too_few_classes_examined_is_no_score_at_all():
    found = score_reaches([_reach("a", 0.99, 0.0), _reach("b", 0.1, 0.0)], 10)
    assert found.score is None and not found.found and "no within-model null" in found.note


def test_random_reach_is_a_share_per_class_and_deterministic():
    import torch

    from cbpt_guard.classifier import build_classifier
    from cbpt_guard.probes import procedural_probes
    from tests.tiny_models import build_tiny

    torch.set_num_threads(1)
    model, _ = build_tiny("vit", seed=1)
    classifier = build_classifier(model, ("cat", "dog", "ship"), ("a photo of a {}.",))
    probes = procedural_probes(16, 32, 0).images
    first = random_reach(classifier, probes, 0.05, draws=4, seed=3)  # (C,)
    assert first.shape == (3,) and bool(((first >= 0) & (first <= 1)).all())
    assert torch.equal(first, random_reach(classifier, probes, 0.05, draws=4, seed=3))


def test_clean_attractor_that_random_patches_reach_less_often_is_still_not_conclusive():
    # random patches reach the attractor at half the optimised rate: the margin alone would call it a backdoor
    reaches = [_reach("attractor", 0.86, 0.5, "patch"), _reach("cat", 0.10, 0.01), _reach("dog", 0.05, 0.02),
               _reach("ship", 0.08, 0.01)]
    found = score_reaches(reaches, 10)
    assert found.target == "attractor" and found.score >= FOUND_AT
    assert "attractor" in found.attractors and not found.found and "natural attractor" in found.note
