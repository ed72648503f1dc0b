"""Detection evidence of one zoo model, gathered once and kept on disk for both benchmarks.

benchmarks/detection.py scores this evidence (zero-data tier) and
benchmarks/purification.py trains CBPT against its inverted triggers, so both
read the same detection run (default budget, seed 0, procedural probes)
instead of each repeating it. A model's folder holds ``evidence.json`` (per
family its statistics, the evidence features, the target each signal points
at, the seconds it took) and ``triggers.safetensors`` (every inverted
trigger's parameters); the JSON is written last and marks the entry complete.
An entry records the SHA-256 of the weights it was gathered on and of the
detector's source, and is run again when either changed (a rebuilt zoo reuses
names; a changed detector finds other triggers).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from pathlib import Path

from cbpt_guard.triggers import Trigger

FAMILY_KEYS = ("family", "collapsed", "size", "target", "concentration", "inverted_asr", "steps_run")
ROOT = Path(__file__).resolve().parent.parent
DETECTOR_SOURCES = ("cbpt_guard/detect", "cbpt_guard/triggers.py", "cbpt_guard/probes.py", "cbpt_guard/classifier.py")
"""What decides a detection run's result, besides the weights: a cached run of other sources is stale."""
BASELINE_SOURCES = ("benchmarks/decree_baseline.py", "cbpt_guard/classifier.py", "cbpt_guard/probes.py")
"""The same for the DECREE-style baseline that benchmarks/detection.py runs beside the detector."""


@functools.cache  # the sources do not change while a benchmark runs; it asks once per cached run
def source_digest(*names: str) -> str:
    """SHA-256 over the code of the Python files (or folders of them) named, relative to the repository root.

    The code, not the text: each file's syntax tree without its docstrings and
    comments, so rewording a docstring does not throw away an hour of cached runs.
    """
    files = sorted({f for name in names for f in ([ROOT / name] if name.endswith(".py")
                                                   else (ROOT / name).rglob("*.py"))})
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + _code_of(file.read_text()).encode())
    return digest.hexdigest()


def _code_of(source: str) -> str:
    """A canonical dump of ``source``'s syntax tree without docstrings (comments never reach the tree).

    Every bare string statement goes: module, class and function docstrings,
    and the attribute docstrings written under dataclass fields.
    """
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            kept = [statement for statement in body if not (isinstance(statement, ast.Expr)
                                                            and isinstance(statement.value, ast.Constant)
                                                            and isinstance(statement.value.value, str))]
            node.body = kept or [ast.Pass()]
    return ast.dump(tree)


def weights_digest(model_dir: Path) -> str:
    """SHA-256 of a zoo model's weights file: what a cached result is valid for."""
    return hashlib.sha256((model_dir / "open_clip_model.safetensors").read_bytes()).hexdigest()


def cached_evidence(model_dir: Path, cache: Path, seed: int = 0) -> dict:
    """The evidence summary of ``model_dir`` (zero-data probes, default budget), from ``cache`` or run now."""
    from safetensors.torch import save_file

    from cbpt_guard.detect.run import DetectBudget, gather_evidence
    from cbpt_guard.intake import load_checkpoint

    folder = cache / model_dir.name
    summary_path = folder / "evidence.json"
    key = {"weights_sha256": weights_digest(model_dir), "detector_sha256": source_digest(*DETECTOR_SOURCES)}
    stored = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if any(stored.get(name) != value for name, value in key.items()):
        loaded = load_checkpoint(model_dir)
        evidence = gather_evidence(loaded.model, loaded.report.classes, loaded.report.templates,
                                   budget=DetectBudget(), seed=seed)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({f"{family}.{k}": v.contiguous() for family, trigger in evidence.triggers.items()
                   for k, v in trigger.state().items()}, str(folder / "triggers.safetensors"))
        summary = {"families": [{k: getattr(f, k) for k in FAMILY_KEYS}
                                | {"trigger_family": evidence.triggers[f.family].family}
                                for f in evidence.families],
                   "features": evidence.features, "targets": evidence.targets,
                   "seconds": round(evidence.seconds, 2), "seed": seed,
                   "image_size": int(evidence.probes.images.shape[-1])} | key
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
        triggers[family["family"]] = trigger_from_state(family["trigger_family"], summary["image_size"], state)
    return triggers
