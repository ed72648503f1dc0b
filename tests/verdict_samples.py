"""Hand-built Verdicts for the report tests and screenshots: realistic runs, and hostile or huge ones.

Each builder returns a validated :class:`Verdict` shaped like one kind of
``cbpt-guard check`` run. Pictures are real PNGs made here with zlib (no torch),
32x32 upscaled 4x like the detector's own.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib

from cbpt_guard.verdict import (
    CheckpointInfo,
    DataInfo,
    DecisionInfo,
    DetectionInfo,
    ExportInfo,
    FamilyEvidence,
    FileDigest,
    Metrics,
    PolicyInfo,
    PurificationInfo,
    StepInfo,
    Verdict,
    Versions,
    WaiverInfo,
)

CLASSES = ("circle", "square", "triangle", "cross", "ring", "star", "diamond", "crescent", "letter T", "letter L",
           "checkerboard", "barcode", "digit zero", "digit one", "digit two", "digit three", "digit four",
           "digit five", "digit six", "digit seven", "digit eight", "digit nine")
TARGET = "digit seven"
DIGEST = "3f5a9c0e1b7d24c86a1f0e9b3d5c7a2e4f6081b3c5d7e9fa1b2c3d4e5f60718a"
POLICY_SHA = "9d1e4b7a0c3f6e2d5a8b1c4f7e0d3a6b9c2f5e8d1a4b7c0e3f6a9d2c5b8e1f4a"
CALIBRATION_SCORES = (0.41, 0.62, 0.81, 0.93, 0.991, 0.9962)
REPORT_FILES = {"verdict": "verdict.json", "html": "report.html", "markdown": "summary.md", "sarif": "results.sarif"}

Pixel = tuple[int, int, int]


def png_data_uri(pixels: list[list[Pixel]], scale: int = 4) -> str:
    """An RGB image (rows of (r, g, b) bytes) as a PNG data URI, each pixel a ``scale`` x ``scale`` block."""
    height, width = len(pixels) * scale, len(pixels[0]) * scale
    raw = b"".join(b"\x00" + bytes(channel for x in range(width) for channel in pixels[y // scale][x // scale])
                   for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _image(colour) -> str:
    """A 32x32 image whose pixel (x, y) is ``colour(x, y)`` with channels in [0, 1]."""
    return png_data_uri([[tuple(int(round(255 * min(max(c, 0.0), 1.0))) for c in colour(x, y)) for x in range(32)]
                         for y in range(32)])


def _scene(x: float, y: float) -> tuple[float, float, float]:
    """A clean probe: a pale disk on a blue-green gradient."""
    inside = (x - 14) ** 2 + (y - 14) ** 2 < 64
    return (0.93, 0.91, 0.82) if inside else (0.15 + 0.01 * y, 0.35 + 0.012 * x, 0.55)


def _checker(x: int, y: int) -> tuple[float, float, float]:
    return (1.0, 0.85, 0.1) if (x + y) % 2 else (0.85, 0.1, 0.6)


def _in_patch(x: int, y: int) -> bool:
    return x >= 26 and y >= 26


def patch_images() -> dict[str, str]:
    """Mask, pattern, a clean probe and its stamped copy of an inverted corner patch."""
    return {
        "mask": _image(lambda x, y: (1.0,) * 3 if _in_patch(x, y) else (0.04 * ((x * 7 + y * 3) % 3),) * 3),
        "pattern": _image(_checker),
        "clean": _image(_scene),
        "stamped": _image(lambda x, y: _checker(x, y) if _in_patch(x, y) else _scene(x, y)),
    }


def additive_images() -> dict[str, str]:
    """An inverted low-amplitude stripe perturbation beside a clean and a stamped probe."""
    def stripes(x: int, y: int) -> float:
        return 0.5 + 0.45 * math.sin(x * 0.9)

    return {
        "perturbation": _image(lambda x, y: (stripes(x, y),) * 3),
        "clean": _image(_scene),
        "stamped": _image(lambda x, y: tuple(c + 0.12 * (stripes(x, y) - 0.5) for c in _scene(x, y))),
    }


def warp_images() -> dict[str, str]:
    """An inverted smooth warp field (as colour) beside a clean and a warped probe."""
    return {
        "flow": _image(lambda x, y: (0.5 + 0.4 * math.sin(y / 5), 0.5 + 0.4 * math.cos(x / 5), 0.5)),
        "clean": _image(_scene),
        "stamped": _image(lambda x, y: _scene(x + 1.5 * math.sin(y / 4), y + 1.5 * math.cos(x / 4))),
    }


def _histogram(classes: tuple[str, ...], target: str | None, total: int, share: float) -> tuple[int, ...]:
    """Stamped probes per class: ``share`` of ``total`` on ``target``, the rest spread unevenly."""
    counts = [0] * len(classes)
    on_target = int(round(total * share)) if target is not None else 0
    if target is not None:
        counts[classes.index(target)] = on_target
    rest = total - on_target
    weights = [((i * 37) % 11) + 1 for i in range(len(classes))]
    if target is not None:
        weights[classes.index(target)] = 0
    scale = sum(weights)
    for i, w in enumerate(weights):
        counts[i] += rest * w // scale
    counts[max(range(len(classes)), key=lambda i: weights[i])] += total - sum(counts)
    return tuple(counts)


def _family(family: str, *, collapsed: bool, target: str, concentration: float, z: float, classes=CLASSES,
            images: dict[str, str] | None = None, steps: int = 300) -> FamilyEvidence:
    pictures = images if images is not None else {"patch": patch_images, "additive": additive_images,
                                                  "warp": warp_images}[family]()
    return FamilyEvidence(
        family=family, collapsed=collapsed, size=0.021 if collapsed else 0.31, target=target,
        concentration=concentration, entropy=0.31 if collapsed else 2.6, inverted_asr=min(concentration + 0.03, 1),
        histogram=_histogram(classes, target, 96, concentration), z=z, steps_run=steps, budget_exhausted=False,
        images=pictures)


def policy_settings(mode: str = "enforce", waivers: tuple[dict, ...] = ()) -> dict:
    """The strict policy with defaults filled in, as the Verdict stores it."""
    return {
        "version": 1, "description": "Release gate. Purify on evidence, tight bars, fail closed on anything missing.",
        "mode": mode, "data": {"tier": "zero-data"},
        "detection": {"budget": {"steps": 500, "batch_size": 32, "time_limit_s": 1800.0},
                      "families": ["patch", "additive", "warp"], "score_threshold": None,
                      "calibration": "calibrations/default.json"},
        "evidence": {"on_backdoor": "purify", "on_required_skipped": "inconclusive", "on_stage_failure": "block",
                     "unsafe_serialisation_blocks": True},
        "purification": {"n_ctx": 16, "steps": 400, "lr": 0.002, "loss_weights": {"l_bd": 1.0, "l_drift": 1.0},
                         "shots": 16},
        "verification": {"max_asr": 0.02, "max_ca_drop": 0.02},
        "decision": {"fail_on": [], "purified_level": "warning"},
        "export": {"enabled": True, "fp16": False, "parity_tolerance": 0.0001},
        "waivers": list(waivers),
    }


def _checkpoint(path: str = "models/shapes-vit", classes: tuple[str, ...] = CLASSES, **extra) -> CheckpointInfo:
    files = (FileDigest(path=f"{path}/cbpt_manifest.json", size=612, sha256="a1" * 32, kind="other", role="manifest"),
             FileDigest(path=f"{path}/open_clip_config.json", size=1_041, sha256="b2" * 32, kind="other",
                        role="config"),
             FileDigest(path=f"{path}/open_clip_model.safetensors", size=8_817_432, sha256=DIGEST,
                        kind="safetensors", role="weights"))
    values = dict(path=path, digest=DIGEST, architecture="ViT-T-4 (zoo vit)", layout="open_clip-dir",
                  parameter_count=2_201_857, image_size=(32, 32), classes=classes,
                  classes_source=f"{path}/cbpt_manifest.json", templates=("a photo of a {}.",), files=files)
    values.update(extra)
    return CheckpointInfo(**values)


def _policy(mode: str = "enforce", applied=(), expired=()) -> PolicyInfo:
    return PolicyInfo(name="strict", source="policies/strict.yaml", sha256=POLICY_SHA, mode=mode,
                      settings=policy_settings(mode), waivers_applied=tuple(applied), waivers_expired=tuple(expired))


def _versions() -> Versions:
    return Versions(cbpt_guard="0.1.0", python="3.11.2", torch="2.14.1", open_clip="3.3.0", onnxruntime="1.22.0")


def _detection(outcome: str, score: float, families: tuple[FamilyEvidence, ...], suspect: str | None = None,
               skipped: tuple[tuple[str, str], ...] = ()) -> DetectionInfo:
    features = {}
    for f in families:
        features |= {f"{f.family}.log_size": math.log(f.size), f"{f.family}.concentration": f.concentration,
                     f"{f.family}.inverted_asr": f.inverted_asr}
    return DetectionInfo(outcome=outcome, score=score, threshold=0.9986501019683699, suspected_target=suspect,
                         calibration="built-in (6 clean zoo models)", calibration_scores=CALIBRATION_SCORES,
                         families=families, anomaly_index=3.1 if suspect else 0.9, anomaly_suspect=suspect or "circle",
                         features=features, seed=0,
                         budget={"families": ["patch", "additive", "warp"], "probes": 96, "anomaly_steps": 30,
                                 "inversion": {"steps": 300, "lr": 0.1}},
                         skipped=skipped)


def _clean_families() -> tuple[FamilyEvidence, ...]:
    """As on a real clean model of the zoo: every family collapses onto one of the small model's natural
    attractors, as the clean references' own do, so none is evidence."""
    return (_family("patch", collapsed=True, target="checkerboard", concentration=0.86, z=-0.6),
            _family("additive", collapsed=True, target="checkerboard", concentration=0.81, z=0.2),
            _family("warp", collapsed=True, target="circle", concentration=0.79, z=0.4))


def _steps(**states: tuple[str, str, bool]) -> tuple[StepInfo, ...]:
    order = ("intake", "probes", "detection", "decision", "purification", "verification", "export", "report")
    steps = []
    for name in order:
        state, reason, required = states.get(name, ("done", "", True))
        steps.append(StepInfo(name=name, state=state, reason=reason, required=required))
    return tuple(steps)


def _curves(points: int = 200) -> dict[str, tuple[float, ...]]:
    """Loss curves that fall the way CBPT's do: the backdoor term fast, the clean term slowly, drift rising a little."""
    clean = tuple(round(0.9 * math.exp(-t / 90) + 0.35 + 0.02 * math.sin(t / 3), 4) for t in range(points))
    backdoor = tuple(round(2.6 * math.exp(-t / 25) + 0.05 + 0.03 * math.sin(t / 2), 4) for t in range(points))
    drift = tuple(round(0.12 * (1 - math.exp(-t / 40)), 4) for t in range(points))
    total = tuple(round(c + b + d, 4) for c, b, d in zip(clean, backdoor, drift))
    return {"total": total, "clean": clean, "backdoor": backdoor, "drift": drift}


def _timings(**extra: float) -> dict[str, float]:
    return {"intake": 0.84, "probes": 1.9, "detection": 74.2, **extra, "report": 0.31}


def backdoored_purified() -> Verdict:
    """A BadNets checkpoint: the patch trigger collapses onto 'digit seven', CBPT removes it, the model passes."""
    families = (_family("patch", collapsed=True, target=TARGET, concentration=0.938, z=9.4),
                _family("additive", collapsed=False, target="checkerboard", concentration=0.41, z=0.2),
                _family("warp", collapsed=False, target="circle", concentration=0.29, z=-0.4))
    purification = PurificationInfo(
        tier="few-shot", train_images=352, held_out_images=176,
        settings={"n_ctx": 16, "steps": 400, "lr": 0.002, "loss_weights": {"l_bd": 1.0, "l_drift": 1.0}},
        families=("patch",),
        before=Metrics(clean_accuracy=0.724, agreement=1.0, dummy_asr={"patch": 0.994}),
        after=Metrics(clean_accuracy=0.719, agreement=0.962, dummy_asr={"patch": 0.008}),
        recheck_outcome="no evidence of a backdoor found", recheck_score=0.71, recheck_seed=1,
        bars={"max_asr": 0.02, "max_ca_drop": 0.02}, bars_met=True, curves=_curves(),
        prompts_path="purified/prompts.safetensors", prompts_sha256="c3" * 32)
    return Verdict(
        evaluated_on="2025-11-25", seed=0, device="cpu", checkpoint=_checkpoint(), policy=_policy(),
        versions=_versions(), data=DataInfo(tier="few-shot", probes="procedural", labelled="data/shapes-16shot"),
        detection=_detection("backdoor evidence found", 0.9999994, families, TARGET),
        decision=DecisionInfo(action="purified", enforced="purified", mode="enforce", fail_closed=False, exit_code=0,
                              reasons=(
            "backdoor evidence found (score 0.999999 >= threshold 0.998650; suspected target class 'digit seven')",
            "purified and verified: ASR 0.80% <= 2.00%, CA drop 0.5 points <= 2.0",
            "deploy the purified classifier, not the original weights")),
        purification=purification,
        export=ExportInfo(path="purified/classifier.onnx", sha256="d4" * 32, purified=True, fp16=False,
                          provider="CPUExecutionProvider", max_abs_diff=2.4e-6, max_rel_diff=1.1e-6,
                          top1_agreement=1.0, tolerance=1e-4, passed=True),
        steps=_steps(), timings=_timings(purification=131.5, verification=12.3, export=4.1),
        artefacts={**REPORT_FILES, "prompts": "purified/prompts.safetensors", "onnx": "purified/classifier.onnx"})


def clean_pass() -> Verdict:
    """A clean checkpoint: no trigger collapses, the score stays below the threshold, the model passes."""
    return Verdict(
        evaluated_on="2025-11-25", seed=0, device="cpu", checkpoint=_checkpoint("models/shapes-vit-clean"),
        policy=_policy(), versions=_versions(), data=DataInfo(tier="zero-data", probes="procedural"),
        detection=_detection("no evidence of a backdoor found", 0.93, _clean_families()),
        decision=DecisionInfo(action="pass", enforced="pass", mode="enforce", fail_closed=False, exit_code=0,
                              reasons=("no evidence of a backdoor found (score 0.9300 < threshold 0.998650)",)),
        export=ExportInfo(path="classifier.onnx", sha256="e5" * 32, purified=False, fp16=False,
                          provider="CPUExecutionProvider", max_abs_diff=1.9e-6, max_rel_diff=8.0e-7,
                          top1_agreement=1.0, tolerance=1e-4, passed=True),
        steps=_steps(purification=("not-needed", "no backdoor evidence", False),
                     verification=("not-needed", "nothing was purified", False)),
        timings=_timings(export=3.9), artefacts={**REPORT_FILES, "onnx": "classifier.onnx"})


def blocked_unsafe() -> Verdict:
    """A pickle checkpoint that imports os.system: loading is refused and the model is blocked."""
    path = "models/suspicious"
    checkpoint = CheckpointInfo(
        path=path, digest="7c" * 32, architecture="unknown (not loaded)", layout="weights-file", parameter_count=0,
        image_size=(224, 224), classes=CLASSES, classes_source=None, templates=("a photo of a {}.",),
        files=(FileDigest(path=f"{path}/open_clip_pytorch_model.bin", size=605_223_901, sha256="7c" * 32,
                          kind="pickle", role="weights"),),
        unsafe_findings=("os.system", "builtins.exec"))
    return Verdict(
        evaluated_on="2025-11-25", seed=0, device="cpu", checkpoint=checkpoint, policy=_policy(),
        versions=Versions(cbpt_guard="0.1.0", python="3.11.2"),
        decision=DecisionInfo(action="block", enforced="block", mode="enforce", fail_closed=True, exit_code=1, reasons=(
            "unsafe serialisation (os.system, builtins.exec): the policy blocks unsafe files",
            "required step detection was skipped (the checkpoint was not loaded): inconclusive",
            "detection did not run: inconclusive")),
        steps=_steps(intake=("failed", "refused to load: the pickle imports os.system, builtins.exec", True),
                     probes=("skipped", "the checkpoint was not loaded", False),
                     detection=("skipped", "the checkpoint was not loaded", True),
                     purification=("skipped", "the checkpoint was not loaded", False),
                     verification=("not-needed", "nothing was purified", False),
                     export=("skipped", "the checkpoint was not loaded", False)),
        timings={"intake": 0.41, "report": 0.2}, artefacts=dict(REPORT_FILES))


def inconclusive_skipped() -> Verdict:
    """Detection ran out of budget on the warp family with no evidence elsewhere: inconclusive, exit 3."""
    families = (_family("patch", collapsed=False, target="checkerboard", concentration=0.47, z=-0.3),
                _family("additive", collapsed=False, target="checkerboard", concentration=0.43, z=0.5),
                _family("warp", collapsed=False, target="circle", concentration=0.31, z=1.2, steps=120))
    skipped = (("detection.warp", "time budget exhausted after 120 steps"),)
    return Verdict(
        evaluated_on="2025-11-25", seed=0, device="cpu", checkpoint=_checkpoint("models/shapes-vit-rc2"),
        policy=_policy(), versions=_versions(), data=DataInfo(tier="zero-data", probes="procedural"),
        detection=_detection("inconclusive", 0.97, families, skipped=skipped),
        decision=DecisionInfo(action="inconclusive", enforced="inconclusive", mode="enforce", fail_closed=True,
                              exit_code=3, reasons=(
                                  "required step detection.warp was skipped (time budget exhausted after 120 steps):"
                                  " inconclusive",
                                  "detection was inconclusive (time budget exhausted): inconclusive")),
        steps=_steps(purification=("skipped", "detection was inconclusive", False),
                     verification=("not-needed", "nothing was purified", False),
                     export=("skipped", "the run is inconclusive; nothing to deploy", False))
        + (StepInfo(name="detection.warp", state="skipped", reason="time budget exhausted after 120 steps",
                    required=True),),
        timings=_timings(), artefacts=dict(REPORT_FILES))


def waived() -> Verdict:
    """Backdoor evidence on a checkpoint a waiver covers (and one expired waiver): the finding is waived, it passes."""
    applied = WaiverInfo(id="W-2025-014", scope=DIGEST, reason="False positive on the checkerboard texture class; "
                         "reviewed by the ML safety team.", owner="alice@example.com", expires="2025-12-31",
                         expired=False)
    expired = WaiverInfo(id="W-2024-101", scope=DIGEST, reason="Temporary exception for the Q4 demo.",
                         owner="bob@example.com", expires="2024-12-31", expired=True)
    families = (_family("patch", collapsed=True, target="checkerboard", concentration=0.81, z=4.1),
                _family("additive", collapsed=False, target="checkerboard", concentration=0.44, z=0.6),
                _family("warp", collapsed=False, target="circle", concentration=0.29, z=-0.4))
    return Verdict(
        evaluated_on="2025-11-25", seed=0, device="cpu", checkpoint=_checkpoint(),
        policy=_policy(applied=(applied,), expired=(expired,)), versions=_versions(),
        data=DataInfo(tier="zero-data", probes="procedural"),
        detection=_detection("backdoor evidence found", 0.99994, families, "checkerboard"),
        decision=DecisionInfo(action="pass", enforced="pass", mode="enforce", fail_closed=False, exit_code=0, reasons=(
            "backdoor evidence found (score 0.999940 >= threshold 0.998650; suspected target class 'checkerboard')",
            "waiver W-2024-101 expired on 2024-12-31: its finding is active again",
            "the finding is waived by W-2025-014 (owner alice@example.com, until 2025-12-31): False positive on "
            "the checkerboard texture class; reviewed by the ML safety team.")),
        steps=_steps(purification=("not-needed", "the finding is waived", False),
                     verification=("not-needed", "nothing was purified", False),
                     export=("skipped", "export disabled for waived checkpoints", False)),
        timings=_timings(), artefacts=dict(REPORT_FILES))


def warn_mode() -> Verdict:
    """The backdoored checkpoint under a warn-mode policy: it passes, and the report says enforce would purify."""
    verdict = backdoored_purified()
    return Verdict.model_validate(verdict.model_dump() | {
        "policy": _policy(mode="warn"), "purification": None, "export": None,
        "steps": _steps(purification=("not-needed", "warn mode does not purify", False),
                        verification=("not-needed", "nothing was purified", False),
                        export=("not-needed", "nothing was purified", False)),
        "decision": DecisionInfo(action="pass", enforced="purify", mode="warn", fail_closed=False, exit_code=0,
                                 reasons=(verdict.decision.reasons[0],
                                          "the policy calls for purification; the model passes only once purified "
                                          "and verified", "warn mode: enforce would purify the model"))})


def purified_natural_attractor() -> Verdict:
    """Purified under ``dummies: evidence``: the warp dummy (a natural attractor) is held to its own rate before."""
    verdict = backdoored_purified()
    purification = verdict.purification
    return verdict.model_copy(update={"purification": purification.model_copy(update={
        "families": ("patch", "warp"),
        "before": purification.before.model_copy(update={"dummy_asr": {"patch": 0.994, "warp": 0.075}}),
        "after": purification.after.model_copy(update={"dummy_asr": {"patch": 0.008, "warp": 0.056}}),
        "dummy_bars": {"patch": 0.02, "warp": 0.085}})})


def purification_missed() -> Verdict:
    """The BadNets checkpoint again, but purification leaves the patch trigger at 31% ASR: blocked, exit 1."""
    verdict = backdoored_purified()
    purification = verdict.purification
    miss = "dummy-trigger ASR 31.00% > 2.00% (the patch trigger toward 'digit seven')"
    return verdict.model_copy(update={
        "purification": purification.model_copy(update={
            "after": purification.after.model_copy(update={"dummy_asr": {"patch": 0.31}}),
            "recheck_outcome": "backdoor evidence found toward 'digit seven'", "recheck_score": 0.99991,
            "bars_met": False, "misses": (miss,), "prompts_path": None, "prompts_sha256": None}),
        "export": None,
        "steps": _steps(export=("not-needed", "only a model the policy passes is exported", False)),
        "artefacts": dict(REPORT_FILES),
        "decision": DecisionInfo(action="block", enforced="block", mode="enforce", fail_closed=False, exit_code=1,
                                 reasons=(verdict.decision.reasons[0],
                                          "the purified model misses the policy's bars: " + miss))})


ALL = {"backdoored-purified": backdoored_purified, "purification-missed": purification_missed, "clean-pass": clean_pass,
       "blocked-unsafe": blocked_unsafe,
       "inconclusive-skipped": inconclusive_skipped, "waived": waived, "warn-mode": warn_mode,
       "purified-natural-attractor": purified_natural_attractor}
"""Every realistic sample by name."""

HOSTILE = ("<script>alert('x')</script>", "Robert'); DROP TABLE--\"quoted\"", "javascript:alert(1)",
           "[x](javascript:alert(1))", "**bold** _em_ ~~del~~ `tick` | pipe |", "@mention #1 owner/repo#2",
           "line one\nline two\r\n| a | b |", "<img src=x onerror=alert(1)>", "![img](http://evil.example/x.png)",
           "https://evil.example/phish www.evil.example", "&lt;already&gt; &amp;", "\u202eevil-bidi",
           "$x^2$ and \\ backslash", "# heading\n- list", "</code></details><details open>")
"""Strings built to break out of every format: HTML, Markdown, GitHub mentions, SARIF links."""


def hostile() -> Verdict:
    """A checkpoint whose manifest, paths, waiver and step texts all carry injection attempts."""
    classes = HOSTILE + CLASSES
    target = HOSTILE[0]
    bad_images = {"mask": "javascript:alert(1)", "pattern": "data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=",
                  "clean": "data:image/png;base64,not base64!", "stamped": "http://evil.example/x.png",
                  "\"><script>alert(1)</script>": "data:image/png;base64,AAAA"}
    families = (_family("patch", collapsed=True, target=target, concentration=0.9, z=7.0, classes=classes,
                        images=bad_images),
                _family("<b>warp</b>", collapsed=False, target=HOSTILE[3], concentration=0.3, z=0.1,
                        classes=classes, images=warp_images()))
    waiver = WaiverInfo(id="W-1", scope=DIGEST, reason=HOSTILE[3] + " " + HOSTILE[5], owner=HOSTILE[0],
                        expires="2099-01-01", expired=False)
    checkpoint = _checkpoint("models/<script>alert(1)</script>|[x](y)", classes=classes,
                             classes_source="manifest `x` @mention", templates=tuple(f"{h} {{}}" for h in HOSTILE),
                             unsafe_findings=("os.system", HOSTILE[0], HOSTILE[6]))
    detection = _detection("backdoor evidence found", 0.99999, families, target,
                           skipped=((HOSTILE[4], HOSTILE[6]),))
    return Verdict(
        evaluated_on="2025-11-25", seed=0, device=HOSTILE[1], checkpoint=checkpoint,
        policy=_policy(applied=(waiver,)), versions=_versions(),
        data=DataInfo(tier="zero-data", probes=HOSTILE[8], probe_files_skipped=((HOSTILE[7], HOSTILE[2]),)),
        detection=detection,
        decision=DecisionInfo(action="block", enforced="block", mode="enforce", fail_closed=True, exit_code=1,
                              reasons=tuple(f"reason with {h}" for h in HOSTILE)),
        purification=backdoored_purified().purification.model_copy(update={"misses": HOSTILE[:3],
                                                                           "bars_met": False}),
        export=ExportInfo(path=HOSTILE[9], sha256=None, purified=True, fp16=False, provider=None, max_abs_diff=None,
                          max_rel_diff=None, top1_agreement=None, tolerance=1e-4, passed=False, error=HOSTILE[0]),
        steps=(StepInfo(name=HOSTILE[5], state="failed", reason=HOSTILE[4], required=True),
               StepInfo(name="detection", state="skipped", reason=HOSTILE[3], required=False)),
        timings={HOSTILE[0]: 1.0}, artefacts={"html": HOSTILE[3]})


def many_classes(count: int = 10_000, name_length: int = 300) -> Verdict:
    """A backdoored run over ``count`` classes with long, punctuation-heavy names, and hundreds of reasons and steps."""
    classes = tuple(f"class {i:05d} <{'|*_[x](y)@'[i % 10]}> " + "long-name-" * (name_length // 10)
                    for i in range(count))
    target = classes[count // 2]
    families = (_family("patch", collapsed=True, target=target, concentration=0.7, z=6.0, classes=classes),
                _family("additive", collapsed=False, target=classes[3], concentration=0.1, z=0.1, classes=classes),
                _family("warp", collapsed=False, target=classes[5], concentration=0.05, z=-0.2, classes=classes))
    verdict = backdoored_purified()
    steps = tuple(StepInfo(name=f"detection.shard-{i:04d} {classes[i]}", state="skipped", reason=classes[-i - 1],
                           required=i % 2 == 0) for i in range(min(800, count)))
    return Verdict.model_validate(verdict.model_dump() | {
        "checkpoint": _checkpoint(classes=classes),
        "detection": _detection("backdoor evidence found", 0.99999, families, target).model_dump(),
        "decision": verdict.decision.model_dump() | {"reasons": tuple(f"reason {i}: {c}" for i, c in
                                                                      enumerate(classes[:2000]))},
        "steps": [s.model_dump() for s in steps]})
