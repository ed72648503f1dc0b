"""The tiny models and the cheap policy both sweep test modules scan.

Four tiny random open_clip ViTs (tests/tiny_models.py) under a policy whose
detection budget is small, with a calibration fitted on the first model at
exactly that budget, so every check is calibrated and a sweep's cost stays in
seconds.
"""

from __future__ import annotations

from pathlib import Path

CLASSES = ["circle", "square", "triangle", "star"]
POLICY = """\
version: 1
mode: enforce
detection:
  budget: {steps: 20, batch_size: 16, time_limit_s: 600, targeted_classes: 1}
  families: [patch]
  calibration: tiny-cal.json
evidence: {on_backdoor: block, on_required_skipped: inconclusive, on_stage_failure: block}
export: {enabled: false}
"""


def tiny_hub(models_dir: Path, policy_dir: Path, name: str = "vit-s{seed}") -> tuple[dict[int, Path], Path]:
    """Save models of seeds 0-3 under ``models_dir`` (named by ``name``); write the policy and its calibration.

    Returns the model folders by seed and the policy file (in ``policy_dir``, beside ``tiny-cal.json``).
    """
    import torch
    from tiny_models import build_tiny, save_open_clip_dir

    from cbpt_guard.detect.api import calibrate_models
    from cbpt_guard.pipeline import detect_budget
    from cbpt_guard.policy import load_policy

    torch.set_num_threads(1)
    models = {}
    for seed in range(4):
        model, config = build_tiny("vit", seed)
        folder = models_dir / name.format(seed=seed)
        folder.mkdir(parents=True, exist_ok=True)
        models[seed] = save_open_clip_dir(model, config, folder, "safetensors", CLASSES)
    policy = policy_dir / "policy.yaml"
    policy.write_text(POLICY)
    calibration = calibrate_models([models[0]], budget=detect_budget(load_policy(policy)))
    (policy_dir / "tiny-cal.json").write_text(calibration.to_json())
    return models, policy
