"""The model family a calibration was fitted on, and whether a checkpoint belongs to it.

A calibration's statistics describe what clean models *of one family* show:
the same architecture, image size, embedding width and class list, at one
detection budget. Applied to another family they mean nothing: a family
whose small models have a strong natural attractor puts every clean model
"far outside" the zoo's clean statistics, and its own backdoors may sit
inside them. So a calibration records its domain (:class:`Domain`), and a
checkpoint outside it is scored reference-free and reported as
"uncalibrated for this model family", with the command that fits a
calibration for it.

What decides membership is what changes the evidence's scale: the model
config (architecture, widths, patch size, text tower), the image size, the
embedding width and the set of class names (their order does not matter;
their wording does, because the class embeddings come from it). The
references' weight digests are recorded for provenance only: a model need
not be one of the references to be in their family.

A calibration that records no domain (files written before domains were
recorded) cannot be shown to apply to any model, so it is treated like one
of another family: its score is reported, the decision rests on the
reference-free score, and the report asks for the calibration to be re-fitted
(``cbpt-guard calibrate`` records the domain). This mirrors the budget rule
(``detect.budget.budget_differences``): what cannot be checked does not count
as matching.

No torch here: ``policy validate`` and the reports use it without loading a model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from cbpt_guard.detect.outcome import Outcome

UNCALIBRATED = "uncalibrated for this model family"
"""The words every report uses for a model outside its calibration's domain."""


@dataclass(frozen=True)
class Domain:
    """What a model family is, as far as the detector's statistics are concerned.

    ``config_sha256`` digests the whole model config (canonical JSON), so two
    architectures that differ anywhere differ here; the readable fields
    beside it say *how* they differ. ``classes_sha256`` digests the sorted
    class names.
    """

    architecture: str
    image_size: int
    embed_dim: int
    config_sha256: str
    class_count: int
    classes_sha256: str

    def as_dict(self) -> dict:
        """The JSON form stored in a calibration file."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Domain:
        """Read the JSON form back; a missing or mistyped field raises ``KeyError``/``TypeError``/``ValueError``."""
        if not isinstance(data, dict):
            raise TypeError("domain must be an object")
        return cls(architecture=str(data["architecture"]), image_size=int(data["image_size"]),
                   embed_dim=int(data["embed_dim"]), config_sha256=str(data["config_sha256"]),
                   class_count=int(data["class_count"]), classes_sha256=str(data["classes_sha256"]))


def classes_digest(classes: tuple[str, ...] | list[str]) -> str:
    """SHA-256 of the sorted class names, one per line: the class list's identity, order aside."""
    return hashlib.sha256("\n".join(sorted(classes)).encode("utf-8")).hexdigest()


def config_digest(model_cfg: dict) -> str:
    """SHA-256 of ``model_cfg`` as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(model_cfg, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def architecture_of(vision_tower: str, model_cfg: dict) -> str:
    """A short readable name of the image tower, e.g. ``VisionTransformer(layers=4, patch_size=8, width=128)``."""
    vision = model_cfg.get("vision_cfg", {}) if isinstance(model_cfg, dict) else {}
    keys = ("timm_model_name", "layers", "width", "patch_size")
    parts = [f"{key}={vision[key]}" for key in keys if isinstance(vision, dict) and vision.get(key) is not None]
    return f"{vision_tower}({', '.join(parts)})"


def domain_of(*, vision_tower: str, model_cfg: dict, image_size: int, embed_dim: int,
              classes: tuple[str, ...] | list[str]) -> Domain:
    """The domain of one checkpoint, from what intake read (its report and its model config)."""
    return Domain(architecture=architecture_of(vision_tower, model_cfg), image_size=int(image_size),
                  embed_dim=int(embed_dim), config_sha256=config_digest(model_cfg), class_count=len(classes),
                  classes_sha256=classes_digest(classes))


def domain_of_loaded(loaded) -> Domain:
    """The domain of a :class:`~cbpt_guard.intake.loader.LoadedCheckpoint` (its classes must be known)."""
    report = loaded.report
    return domain_of(vision_tower=report.vision_tower, model_cfg=loaded.model_cfg, image_size=report.image_size[0],
                     embed_dim=report.embed_dim, classes=report.classes or ())


def domain_differences(fitted: Domain | None, model: Domain) -> list[str]:
    """How ``model`` differs from the domain a calibration was ``fitted`` on; empty when it belongs to it.

    Each entry reads like ``"image size 64 (fitted on 32)"``. A calibration
    that records no domain cannot be shown to apply (module docstring).
    """
    if fitted is None:
        return ["the calibration records no model family"]
    out = []
    if model.architecture != fitted.architecture:
        out.append(f"architecture {model.architecture} (fitted on {fitted.architecture})")
    if model.image_size != fitted.image_size:
        out.append(f"image size {model.image_size} (fitted on {fitted.image_size})")
    if model.embed_dim != fitted.embed_dim:
        out.append(f"embedding width {model.embed_dim} (fitted on {fitted.embed_dim})")
    if model.config_sha256 != fitted.config_sha256 and model.architecture == fitted.architecture:
        out.append("model config differs from the one fitted on")
    if model.classes_sha256 != fitted.classes_sha256:
        out.append(f"class list of {model.class_count} names differs from the {fitted.class_count} fitted on")
    return out


def uncalibrated_statement(source: str, differences: list[str], command: str) -> str:
    """The sentence a report shows for an out-of-domain model: what differs and ``command``, the one that fixes it."""
    return (f"{UNCALIBRATED}: {source} was fitted on another family ({'; '.join(differences)}), so the decision "
            f"rests on the reference-free score; fit a calibration on clean models of this family with `{command}` "
            "and name it in the policy (detection.calibration) or pass --calibration")


def domain_outcome(calibrated: Outcome, uncalibrated: str | None, reference_free_found: bool) -> Outcome:
    """What detection concludes once the model's family is known: the one rule, pure, shared by ``decide``.

    In the calibration's family (``uncalibrated`` None) the calibrated outcome
    stands. Outside it the calibrated outcome is another family's statistics
    speaking and counts for nothing either way: conclusive reference-free
    evidence is a finding, anything else is inconclusive (never "no evidence",
    never a finding built on the other family's clean models).
    """
    if uncalibrated is None:
        return calibrated
    return Outcome.FOUND if reference_free_found else Outcome.INCONCLUSIVE
