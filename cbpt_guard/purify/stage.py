"""Purification as the pipeline runs it: CBPT and verification under the policy, the prompts saved, the Verdict's view.

:func:`run_purification` raises whatever purification raises (the pipeline
records it as a failed or skipped step). The bars the purified model misses
are worded by the decision, a sibling layer, so :meth:`PurificationStage.info`
takes them as an argument.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cbpt_guard.verdict import Metrics, PurificationInfo
from cbpt_guard.verification import Verification

if TYPE_CHECKING:  # torch, loaded only when purification runs
    import torch

    from cbpt_guard.detect.stage import DetectionStage
    from cbpt_guard.policy import LoadedPolicy
    from cbpt_guard.progress import Progress
    from cbpt_guard.purify.api import PurificationRun, PurifySettings
    from cbpt_guard.user_images import UserImages

PROMPTS_DIR = "purified"
CURVE_POINTS = 200


@dataclass(frozen=True)
class PurificationStage:
    """What purification hands on: the verification records, the purified class embeddings, the Verdict's view."""

    run: PurificationRun
    settings: PurifySettings
    verification: Verification
    bars: dict[str, float]
    prompts_path: str | None
    prompts_sha256: str | None

    @property
    def class_embeddings(self) -> torch.Tensor:
        """The purified classifier's class embeddings (C, d), which the export uses."""
        return self.run.tuning.class_embeddings

    def info(self, misses: tuple[str, ...]) -> PurificationInfo:
        """The Verdict's record, with the bars missed as the decision words them."""
        from cbpt_guard.purify.verify import recheck_wording

        result = self.run
        return PurificationInfo(
            tier=result.tier, train_images=result.train_images, held_out_images=result.held_out_images,
            settings=settings_dict(self.settings, result.tier), families=tuple(d.family for d in result.dummies),
            before=metrics(result.before), after=metrics(result.after),
            recheck_outcome=recheck_wording(result.recheck, result.residual, result.residual_evidence),
            recheck_score=result.residual.score, recheck_seed=result.recheck.seed,
            bars=self.bars, bars_met=not misses, misses=misses,
            dummy_bars={dummy.family: dummy.bar for dummy in self.verification.dummies},
            curves={name: thin(values) for name, values in result.tuning.curves.items()},
            prompts_path=self.prompts_path, prompts_sha256=self.prompts_sha256)


def run_purification(model, report, detection: DetectionStage, inputs: UserImages, loaded: LoadedPolicy, *,
                     target: str | None, seed: int, progress: Progress, out: Path | None) -> PurificationStage:
    """CBPT against detection's dummy triggers, verification, and (with ``out``) the prompts saved under it."""
    from cbpt_guard.detect.stage import detect_budget
    from cbpt_guard.purify.api import PurifySettings, purify_and_verify
    from cbpt_guard.purify.artifacts import load_prompts, save_prompts
    from cbpt_guard.purify.verify import verify

    policy = loaded.policy
    settings = PurifySettings.from_policy(policy.purification)
    result = purify_and_verify(model, report.classes, report.templates, detection.evidence, detection.calibration,
                               settings=settings, data=inputs.data, probes=inputs.probes,
                               detect_budget=detect_budget(loaded), seed=seed, target=target, progress=progress)
    bars = policy.verification
    verification = verify(result.dummies, result.before, result.after, result.ca_drop, result.residual_evidence,
                          report.classes, detection.info, bars)
    prompts_path = prompts_digest = None
    if out is not None:
        summary = {"before": metrics(result.before).model_dump(), "after": metrics(result.after).model_dump(),
                   "ca_drop": result.ca_drop, "recheck_score": result.residual.score,
                   "recheck_residual": result.residual_evidence}
        saved = save_prompts(out / PROMPTS_DIR, ctx=result.tuning.ctx, class_embeddings=result.tuning.class_embeddings,
                             original_embeddings=result.tuning.original_embeddings,
                             source_digest=report.checkpoint_sha256, classes=report.classes,
                             settings=settings_dict(settings, result.tier), metrics=summary)
        prompts_path = saved.relative_to(out).as_posix()
        prompts_digest = load_prompts(saved).sha256
    return PurificationStage(result, settings, verification, {"max_asr": bars.max_asr, "max_ca_drop": bars.max_ca_drop},
                             prompts_path, prompts_digest)


def metrics(measured) -> Metrics:
    """The Verdict's record of one classifier's measurements (a ``purify.verify.ClassifierMetrics``)."""
    return Metrics(clean_accuracy=measured.clean_accuracy, agreement=measured.agreement,
                   dummy_asr=dict(measured.dummy_asr))


def settings_dict(settings, tier: str) -> dict:
    """The CBPT settings as the Verdict and the prompts' manifest record them, with the data tier."""
    return {**asdict(settings), "tier": tier}


def thin(values: list[float]) -> tuple[float, ...]:
    """At most CURVE_POINTS evenly spaced points of a curve, the last one kept."""
    if len(values) <= CURVE_POINTS:
        return tuple(values)
    stride = len(values) / CURVE_POINTS
    return tuple(values[min(len(values) - 1, round(i * stride))] for i in range(CURVE_POINTS - 1)) + (values[-1],)
