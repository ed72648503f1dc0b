"""The calibrated backdoor score: evidence -> standardised features -> one number in [0, 1].

Thresholds are data, not code (METHOD.md section 4): ``cbpt-guard calibrate``
runs the detector over clean reference models and stores, per feature, the
mean and spread of what clean models show, plus the score threshold. A model's
score is the normal CDF of its most anomalous family's standardised evidence,
so 0.5 means "typical of clean models" and values near 1 mean "far outside them".

Per family the evidence is the log size at collapse (smaller = more suspicious),
the target concentration and the inverted trigger's ASR (higher = more
suspicious); the per-class anomaly index counts as one more family-like signal.

Small models have natural attractors: universal patterns send clean models'
probes to the same few classes (on the zoo, a texture, a blurry digit, one
shape). A family whose inverted trigger lands on a class the clean references'
same family also landed on is evidence of the model's nature, not of a
backdoor, so its z is lowered by ``attractor_margin`` before the maximum is
taken: such evidence must clear the threshold by that margin again. The cost,
stated plainly: a backdoor aimed at an attractor class needs stronger evidence
to be flagged. The zoo's targets exclude those classes, so the detection
benchmark cannot measure that cost; it reports the AUROC without the discount
beside the one with it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cbpt_guard.detect.domain import Domain
from cbpt_guard.detect.findings import AnomalyFinding, FamilyFinding
from cbpt_guard.detect.outcome import z_to_score
from cbpt_guard.errors import UsageError

CALIBRATION_VERSION = 1
MIN_SPREAD = {"log_size": 0.15, "concentration": 0.05, "inverted_asr": 0.05, "anomaly": 0.5}


@dataclass(frozen=True)
class Calibration:
    """Clean-model statistics per feature and the score threshold."""

    stats: dict[str, tuple[float, float]]
    threshold: float
    references: tuple[str, ...]
    source: str = "built-in"
    typical_targets: dict[str, str] = dataclasses.field(default_factory=dict)
    reference_scores: tuple[float, ...] = ()
    """The clean references' own (in-sample) scores, sorted: what a report plots a model's score against."""
    attractors: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    """Per family, every class a clean reference's inverted trigger landed on (sorted)."""
    attractor_margin: float = 0.0
    """How many z units a family pointing at one of its attractors is lowered by (0: no discount)."""
    budget: dict | None = None
    """The detection settings the references were run at (``detect.budget.scoring_settings``); None: not recorded.

    Scores are comparable only at this budget: a run at another is refused as
    uncalibrated (``detect.run.check_calibrated``)."""
    domain: Domain | None = None
    """The model family the references belong to (``detect.domain``); None: not recorded (an older file).

    A model outside it is scored reference-free and reported as uncalibrated
    for its family; a calibration with no domain counts as fitted on another
    family (``detect.domain.domain_differences``)."""
    reference_sha256: dict[str, str] = dataclasses.field(default_factory=dict)
    """Per reference, the SHA-256 of its weights file: which models the statistics came from."""

    def to_json(self) -> str:
        """The calibration file's text."""
        return json.dumps({"calibration_version": CALIBRATION_VERSION, "threshold": self.threshold,
                           "stats": {k: list(v) for k, v in sorted(self.stats.items())},
                           "typical_targets": dict(sorted(self.typical_targets.items())),
                           "attractors": {k: list(v) for k, v in sorted(self.attractors.items())},
                           "attractor_margin": self.attractor_margin,
                           "budget": self.budget,
                           "domain": self.domain.as_dict() if self.domain else None,
                           "references": list(self.references),
                           "reference_sha256": dict(sorted(self.reference_sha256.items())),
                           "reference_scores": list(self.reference_scores)}, indent=2) + "\n"


def features_of(families: Sequence[FamilyFinding], anomaly: AnomalyFinding | None) -> dict[str, float]:
    """The scalar features the score uses: per family its log size, concentration and inverted ASR; the anomaly."""
    out = {}
    for finding in families:
        for name in ("log_size", "concentration", "inverted_asr"):
            out[f"{finding.family}.{name}"] = getattr(finding, name)
    if anomaly is not None:
        out["anomaly"] = anomaly.anomaly_index
    return out


def classifier_level(features: dict[str, float]) -> dict[str, float]:
    """The features that depend on the class embeddings, not on the image encoder alone.

    A purified classifier keeps the backdoored image encoder (CBPT changes no
    weight), so an inverted trigger still collapses image features: the size at
    collapse stays small. What purification must remove is where the collapsed
    features *land*: target concentration, inverted-trigger ASR and the
    per-class anomaly. Verification scores only these.
    """
    return {name: value for name, value in features.items() if not name.endswith(".log_size")}


def _z(name: str, value: float, stats: dict[str, tuple[float, float]]) -> float | None:
    if name not in stats:
        return None
    mean, spread = stats[name]
    kind = name.rsplit(".", 1)[-1]
    z = (value - mean) / max(spread, MIN_SPREAD[kind])
    return -z if kind == "log_size" else z


def family_z(features: dict[str, float], stats: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Per family, the mean of its standardised features (positive = more backdoor-like)."""
    groups: dict[str, list[float]] = {}
    for name, value in features.items():
        z = _z(name, value, stats)
        if z is not None:
            groups.setdefault(name.split(".")[0], []).append(z)
    return {group: sum(zs) / len(zs) for group, zs in groups.items()}


def score(features: dict[str, float], calibration: Calibration,
          targets: dict[str, str] | None = None) -> tuple[float, dict[str, float]]:
    """The backdoor score in [0, 1] and the per-family z values behind it.

    With ``targets`` (per family, the class its inverted trigger pointed to), a
    family pointing at one of its clean attractors has its z lowered by the
    calibration's ``attractor_margin`` (module docstring); the z values
    returned are the ones the score used.
    """
    zs = family_z(features, calibration.stats)
    if not zs:
        raise UsageError("the calibration shares no feature with this detection run")
    for family, target in (targets or {}).items():
        if family in zs and target in calibration.attractors.get(family, ()):
            zs[family] -= calibration.attractor_margin
    return z_to_score(max(zs.values())), zs


def fit(reference_features: dict[str, dict[str, float]], z_margin: float = 3.0,
        reference_targets: dict[str, dict[str, str]] | None = None,
        attractor_margin: float | None = None, budget: dict | None = None, domain: Domain | None = None,
        reference_sha256: dict[str, str] | None = None) -> Calibration:
    """Fit clean statistics; the threshold is the score of a family ``z_margin`` spreads out.

    ``reference_targets`` (per reference, per family: the class its inverted
    trigger pointed to) gives each family's typical target on clean models: the
    class small models drift to under any universal pattern. A backdoored model's
    suspected target is then read from its most anomalous family that points
    elsewhere (see :func:`suspected_target`). Every class they pointed to is
    one of that family's attractors, discounted by ``attractor_margin`` z units
    (default ``z_margin``: evidence toward an attractor must reach twice the
    threshold's distance from the clean mean). ``budget`` records the
    detection settings the references ran at (``detect.budget.scoring_settings``),
    ``domain`` the model family they belong to and ``reference_sha256`` their
    weights' digests (``detect.domain``).
    """
    names = sorted(set.intersection(*(set(f) for f in reference_features.values())))
    stats = {}
    for name in names:
        values = [features[name] for features in reference_features.values()]
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        stats[name] = (statistics.fmean(values), spread)
    threshold = z_to_score(z_margin)
    typical, attractors = {}, {}
    for family in sorted({f for targets in (reference_targets or {}).values() for f in targets}):
        votes = collections.Counter(t[family] for t in reference_targets.values() if family in t)
        typical[family] = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        attractors[family] = tuple(sorted(votes))
    margin = z_margin if attractor_margin is None else attractor_margin
    fitted = Calibration(stats, threshold, tuple(sorted(reference_features)), typical_targets=typical,
                         attractors=attractors, attractor_margin=margin if attractors else 0.0, budget=budget,
                         domain=domain, reference_sha256=dict(reference_sha256 or {}))
    scores = sorted(round(score(features, fitted, (reference_targets or {}).get(name))[0], 6)
                    for name, features in reference_features.items())
    return dataclasses.replace(fitted, reference_scores=tuple(scores))


def suspected_target(zs: dict[str, float], targets: dict[str, str], calibration: Calibration) -> str:
    """The class named by the most anomalous family whose target is not its clean-typical one.

    Falls back to the most anomalous family when every family points at its
    typical target. A backdoor aimed at exactly that class is named too, only
    with less certainty; the report lists every family's target either way.
    """
    ranked = sorted(zs, key=lambda name: -zs[name])
    for name in ranked:
        if name in targets and targets[name] != calibration.typical_targets.get(name):
            return targets[name]
    return targets[ranked[0]]


BUILTIN = "default.json"


def builtin_calibration() -> Calibration:
    """The calibration shipped with the package, fitted by ``benchmarks/detection.py`` on the zoo's clean twins."""
    from importlib import resources

    path = resources.files("cbpt_guard.detect") / "calibrations" / BUILTIN
    with resources.as_file(path) as real:
        loaded = load_calibration(real)
    return dataclasses.replace(loaded, source=f"built-in {BUILTIN}")


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file; every problem is a one-line :class:`UsageError`."""
    source = Path(path)
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
        if document.get("calibration_version") != CALIBRATION_VERSION:
            raise ValueError(f"calibration_version must be {CALIBRATION_VERSION}")
        stats = {str(k): (float(v[0]), float(v[1])) for k, v in document["stats"].items()}
        threshold = float(document["threshold"])
        if not 0.0 < threshold < 1.0:
            raise ValueError("threshold must lie in (0, 1)")
        typical = {str(k): str(v) for k, v in document.get("typical_targets", {}).items()}
        scores = tuple(float(v) for v in document.get("reference_scores", []))
        attractors = {str(k): tuple(map(str, v)) for k, v in document.get("attractors", {}).items()}
        margin = float(document.get("attractor_margin", 0.0))
        if not math.isfinite(margin) or margin < 0:
            raise ValueError("attractor_margin must be a finite number >= 0")
        budget = document.get("budget")
        if budget is not None and not isinstance(budget, dict):
            raise ValueError("budget must be an object")
        domain = Domain.from_dict(document["domain"]) if document.get("domain") is not None else None
        digests = {str(k): str(v) for k, v in document.get("reference_sha256", {}).items()}
        return Calibration(stats, threshold, tuple(map(str, document.get("references", []))), str(source), typical,
                           scores, attractors, margin, budget, domain, digests)
    except FileNotFoundError:
        raise UsageError(f"{source}: no such calibration file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError,
            AttributeError) as error:
        raise UsageError(f"{source}: not a valid calibration file ({error})") from None
