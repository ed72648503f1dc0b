"""Detection evidence of one zoo model, gathered once and kept on disk for both benchmarks.

benchmarks/detection.py scores this evidence (zero-data tier) and
benchmarks/purification.py trains CBPT against its inverted triggers, so both
read the same detection run (default budget, seed 0, procedural probes)
instead of each repeating it. A model's folder holds ``evidence.json`` (per
family its statistics, the evidence features, the target each signal points
at, the seconds it took) and ``triggers.safetensors`` (every inverted
trigger's parameters); the JSON is written last and marks the entry complete.
An entry records the SHA-256 of the weights it was gathered on and is run
again when the model at that path has changed (a rebuilt zoo reuses names).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cbpt_guard.triggers import Trigger

FAMILY_KEYS = ("family", "collapsed", "size", "target", "concentration", "inverted_asr", "steps_run")


def weights_digest(model_dir: Path) -> str:
    """SHA-256 of a zoo model's weights file: what a cached result is valid for."""
    return hashlib.sha256((model_dir / "open_clip_model.safetensors").read_bytes()).hexdigest()


def cached_evidence(model_dir: Path, cache: Path, seed: int = 0) -> dict:
    """The evidence summary of ``model_dir`` (zero-data probes, default budget), from ``cache`` or run now."""
    from safetensors.torch import save_file

    from cbpt_guard.detect.run import DetectBudget, gather_evidence
    from cbpt_guard.intake import load_checkpoint

    folder = cache / model_dir.name
    summary_path, digest = folder / "evidence.json", weights_digest(model_dir)
    if not summary_path.is_file() or json.loads(summary_path.read_text()).get("weights_sha256") != digest:
        loaded = load_checkpoint(model_dir)
        evidence = gather_evidence(loaded.model, loaded.report.classes, loaded.report.templates,
                                   budget=DetectBudget(), seed=seed)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({f"{f['family']}.{k}": v.contiguous() for f in evidence.families
                   for k, v in f["trigger"].state().items()}, str(folder / "triggers.safetensors"))
        summary = {"families": [{k: f[k] for k in FAMILY_KEYS} for f in evidence.families],
                   "features": evidence.features, "targets": evidence.targets,
                   "seconds": round(evidence.seconds, 2), "seed": seed,
                   "image_size": int(evidence.probes.images.shape[-1]), "weights_sha256": digest}
        summary_path.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return json.loads(summary_path.read_text())


def cached_triggers(model_dir: Path, cache: Path) -> dict[str, Trigger]:
    """Per family, the inverted trigger :func:`cached_evidence` stored for ``model_dir`` (frozen)."""
    from safetensors.torch import load_file

    from cbpt_guard.triggers import trigger_from_state

    summary = cached_evidence(model_dir, cache)
    tensors = load_file(str(cache / model_dir.name / "triggers.safetensors"))
    triggers = {}
    for family in summary["families"]:
        prefix = family["family"] + "."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        triggers[family["family"]] = trigger_from_state(family["family"], summary["image_size"], state)
    return triggers
