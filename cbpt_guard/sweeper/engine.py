"""Run a sweep on Ray: identify, look up the store, intake for all, detection for what passed, report.

The driver (this module) finds the candidates, hashes them, and groups them by
digest; a digest whose check already finished under the same policy,
calibration, tool version and options is reused from the store. The rest go
to Ray in two stages, cheapest first: batches of safe intake (CPU only, many
models per task), then one check per distinct digest that passed intake
(asking for a GPU share where the cluster has GPUs). Every finished model is
written to the store at once, so a killed sweep resumes where it stopped.

A worker that dies (killed, out of memory, its node lost) has its model
submitted once more, so Ray places it on another worker; a second death, or a
per-model budget that runs out, is recorded through the policy's own
fail-closed rules (``evidence.on_stage_failure``, ``on_required_skipped``) and
the sweep goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from cbpt_guard import __version__
from cbpt_guard.errors import UsageError
from cbpt_guard.policy import DataTier, Mode, resolve_policy
from cbpt_guard.sweeper.identity import calibration_digest, folder_digest, store_key
from cbpt_guard.sweeper.records import Candidate, ModelResult, StageCounts, SweepResult, worst_exit_code
from cbpt_guard.sweeper.sources import discover
from cbpt_guard.sweeper.store import ResultStore
from cbpt_guard.sweeper.tasks import CheckOptions, TaskOutcome, check_model, intake_batch

STORE_DIR = "store"
SOURCES_DIR = "sources"
ATTEMPTS = 2
"""A model's check is submitted at most twice: once, and once more after its worker died."""
RAY_INSTALL_HINT = "cbpt-guard sweep runs on Ray, which is not installed: pip install 'cbpt-guard[sweep]'"

SweepProgress = Callable[[StageCounts], None]


@dataclass(frozen=True)
class RayOptions:
    """Where the sweep runs: a local Ray, or the cluster at ``address``.

    A local Ray (``address`` None) is sized to this machine, or to
    ``num_cpus``/``num_gpus``; ``runtime_env`` is handed to ``ray.init`` (e.g.
    env vars for a cluster's workers). A Ray already initialised in this process is used as it is.
    """

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    runtime_env: dict | None = None


def run_sweep(sources: list[str], *, policy: str | Path, out_dir: str | Path, ray_options: RayOptions = RayOptions(),
              data=None, probes=None, classes_file=None, arch: str | None = None, seed: int = 0,
              mode: str | None = None, tracking_uri: str | None = None, retry_failed: bool = False,
              today: dt.date | None = None, progress: SweepProgress | None = None) -> SweepResult:
    """Sweep every checkpoint ``sources`` name under ``policy``; write the reports to ``out_dir``; return the result.

    Raises :class:`UsageError` for a bad source, policy or flag, and when Ray is
    missing, all before any model is scanned; every model's problem is recorded
    in its result instead.
    """
    started = time.perf_counter()
    loaded = resolve_policy(policy)
    if mode is not None:
        try:
            mode = Mode(mode).value
        except ValueError:
            raise UsageError(f"unknown mode {mode!r}; choose one of {', '.join(m.value for m in Mode)}") from None
    for name, folder in (("--data", data), ("--probes", probes)):
        if folder is not None and not Path(folder).is_dir():
            raise UsageError(f"{name} {folder!r} is not a folder")
    if classes_file is not None and not Path(classes_file).is_file():
        raise UsageError(f"--classes {classes_file!r} is not a file")
    ray = _import_ray()
    if ray.is_initialized() and ray_options != RayOptions():
        raise UsageError("Ray is already initialised in this process: the sweep runs on it as it is, so "
                         "address, CPU and GPU counts and a runtime environment cannot be set for it")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    candidates = discover(list(sources), staging=out / SOURCES_DIR, tracking_uri=tracking_uri)
    settings = loaded.policy.sweep
    today = today or dt.date.today()
    policy_arg = str(Path(policy).resolve()) if Path(str(policy)).is_file() else str(policy)
    options = CheckOptions(policy=policy_arg, data=_abs(data), probes=_abs(probes), classes_file=_abs(classes_file),
                           arch=arch, seed=seed, mode=mode, time_budget_s=settings.time_budget_s,
                           memory_budget_mb=settings.memory_budget_mb, today=today.isoformat())
    # a waiver that has expired since a verdict was stored changes the decision: its expiry is part of the key
    expired = sorted(w.id for w in loaded.policy.waivers if w.is_expired(today))
    keyed = {"seed": seed, "arch": arch, "mode": mode, "data": folder_digest(data), "probes": folder_digest(probes),
             "classes": folder_digest(classes_file), "waivers_expired": expired}
    calibration = calibration_digest(loaded)
    store = ResultStore(out / STORE_DIR)
    primaries: dict[str, Candidate] = {}
    for candidate in candidates:
        primaries.setdefault(candidate.digest, candidate)
    keys = {digest: store_key(digest, loaded.sha256, calibration, __version__, keyed) for digest in primaries}
    entries: dict[str, dict] = {}
    for digest, key in keys.items():
        entry = store.get(key)
        if entry is not None and not (retry_failed and entry["status"] == "failed"):
            entries[digest] = entry
    reused = set(entries)
    todo = [primaries[d] for d in primaries if d not in entries]
    if todo:
        runner = _Runner(ray, ray_options, options, store, keys, loaded, today, progress,
                         len(candidates), len(primaries), len(reused), started, settings.gpus_per_model)
        entries.update(runner.run(todo))
    results = _results(candidates, primaries, entries, reused, keys)
    from cbpt_guard.sweeper.report import write_sweep_reports

    result = SweepResult(results=results, exit_code=worst_exit_code(r.exit_code for r in results), out_dir=str(out),
                         policy=loaded.name, policy_sha256=loaded.sha256,
                         scanned=sum(1 for d in primaries if d not in reused),
                         reused=len(reused), failed=sum(1 for r in results if r.status == "failed"),
                         wall_s=round(time.perf_counter() - started, 3),
                         nodes=tuple(sorted({r.node for r in results if r.node and r.status == "scanned"})))
    files = write_sweep_reports(result, out, store)
    return replace(result, files=files)


class _Runner:
    """The Ray part of one sweep: submits the stages, retries dead workers once, stores each outcome."""

    def __init__(self, ray, ray_options: RayOptions, options: CheckOptions, store: ResultStore, keys: dict[str, str],
                 loaded, today: dt.date, progress: SweepProgress | None, candidates: int, unique: int, reused: int,
                 started: float, gpus_per_model: float):
        self.ray, self.ray_options, self.options, self.store, self.keys = ray, ray_options, options, store, keys
        self.loaded, self.today, self.progress = loaded, today, progress
        self.counts = dict(candidates=candidates, unique=unique, reused=reused, intake_done=0, intake_total=0,
                           detection_done=0, detection_total=0, failed=0)
        self.started, self.gpus_per_model = started, gpus_per_model
        self.pending: dict = {}  # ObjectRef -> ("intake", [candidates], attempt) or ("check", candidate, attempt)
        self.entries: dict[str, dict] = {}
        self.stage_seconds: dict[str, list[float]] = {"intake": [], "detection": []}
        self.last_report = 0.0

    def run(self, todo: list[Candidate]) -> dict[str, dict]:
        ray = self.ray
        owned = not ray.is_initialized()
        if owned:
            _init_ray(ray, self.ray_options)
        try:
            resources = ray.cluster_resources()
            self.slots = max(1, int(resources.get("CPU", 1)))
            gpus = self.gpus_per_model if resources.get("GPU", 0) > 0 else 0
            self.intake_remote = ray.remote(num_cpus=1, max_retries=0)(intake_batch)
            # a check is the heavy part: SPREAD places them over the cluster's nodes rather than filling one first
            check_kwargs = dict(num_cpus=1, num_gpus=gpus, max_retries=0, scheduling_strategy="SPREAD")
            if self.options.memory_budget_mb is not None:
                check_kwargs["memory"] = self.options.memory_budget_mb * 2**20
            self.check_remote = ray.remote(**check_kwargs)(check_model)
            self.options_ref = ray.put(self.options)
            size = max(1, min(16, math.ceil(len(todo) / (4 * self.slots))))
            for start in range(0, len(todo), size):
                self._submit_intake(todo[start:start + size], 1)
            self.counts["intake_total"] = len(todo)
            self._report(force=True)
            while self.pending:
                ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    self._collect(ref)
                self._report()
            self._report(force=True)
        finally:
            if owned:
                ray.shutdown()
        return self.entries

    def _submit_intake(self, batch: list[Candidate], attempt: int) -> None:
        ref = self.intake_remote.remote([(c.digest, c.path) for c in batch], self.options_ref)
        self.pending[ref] = ("intake", batch, attempt)

    def _submit_check(self, candidate: Candidate, attempt: int) -> None:
        ref = self.check_remote.remote(candidate.digest, candidate.path, self.options_ref)
        self.pending[ref] = ("check", candidate, attempt)

    def _collect(self, ref) -> None:
        stage, what, attempt = self.pending.pop(ref)
        try:
            value = self.ray.get(ref)
        except Exception as error:  # noqa: BLE001 - a lost worker or a task that raised: retry once, then fail closed
            self._lost(stage, what, attempt, error)
            return
        if stage == "intake":
            by_digest = {c.digest: c for c in what}
            for outcome in value:
                self._intake_outcome(by_digest[outcome.digest], outcome, attempt)
        else:
            self._store(what, value, attempt)
            self.counts["detection_done"] += 1

    def _intake_outcome(self, candidate: Candidate, outcome: TaskOutcome, attempt: int) -> None:
        self.counts["intake_done"] += 1
        self.stage_seconds["intake"].append(outcome.seconds)
        if outcome.kind == "passed-intake":
            self.counts["detection_total"] += 1
            self._submit_check(candidate, 1)
        else:
            self._store(candidate, outcome, attempt)

    def _lost(self, stage: str, what, attempt: int, error: BaseException) -> None:
        """A task that did not come back: submit it once more, then record its models as failed."""
        system = isinstance(error, (self.ray.exceptions.RaySystemError, self.ray.exceptions.WorkerCrashedError,
                                    self.ray.exceptions.ObjectLostError, self.ray.exceptions.NodeDiedError,
                                    self.ray.exceptions.OutOfMemoryError))
        if system and attempt < ATTEMPTS:
            if stage == "intake":
                for candidate in what:  # one model per task now, so a model that kills workers takes no other down
                    self._submit_intake([candidate], attempt + 1)
            else:
                self._submit_check(what, attempt + 1)
            return
        why = ("its worker died twice" if system else "its task failed") + f" ({type(error).__name__}: " \
              f"{_first_line(error)})"
        for candidate in (what if stage == "intake" else [what]):
            self._failed(candidate, "intake" if stage == "intake" else "detection", f"the check could not finish: "
                         f"{why}", attempt, stage_failure=True)
            if stage == "intake":
                self.counts["intake_done"] += 1
            else:
                self.counts["detection_done"] += 1

    def _store(self, candidate: Candidate, outcome: TaskOutcome, attempt: int) -> None:
        if outcome.stage == "detection":
            self.stage_seconds["detection"].append(outcome.seconds)
        if outcome.kind == "budget":
            self._failed(candidate, outcome.stage, outcome.reason, attempt, stage_failure=False, outcome=outcome)
            return
        if outcome.kind == "unjudgeable":
            self._failed(candidate, outcome.stage, f"the model could not be judged: {outcome.reason}", attempt,
                         stage_failure=False, outcome=outcome)
            return
        verdict = json.loads(outcome.verdict_json)
        decision = verdict["decision"]
        detection = verdict.get("detection") or {}
        entry = {"status": "scanned", "stage": outcome.stage, "action": decision["action"],
                 "enforced": decision["enforced"], "exit_code": decision["exit_code"],
                 "reasons": list(decision["reasons"]), "score": detection.get("score"),
                 "threshold": detection.get("threshold"), "suspected_target": detection.get("suspected_target"),
                 "seconds": outcome.seconds, "node": outcome.node, "gpus": list(outcome.gpus), "attempts": attempt,
                 "report": "report.html"
                 if "report.html" in outcome.files else None, "digest": candidate.digest, "name": candidate.name}
        self.store.put(self.keys[candidate.digest], entry, outcome.files)
        self.entries[candidate.digest] = entry

    def _failed(self, candidate: Candidate, stage: str, reason: str, attempt: int, *, stage_failure: bool,
                outcome: TaskOutcome | None = None) -> None:
        """Record a model with no Verdict under the policy's fail-closed rules, never as clean."""
        from cbpt_guard.decide import DecisionInput, SkippedStep, StageFailure, decide

        failures = (StageFailure(stage, reason),) if stage_failure else ()
        skipped = () if stage_failure else (SkippedStep(stage, reason, True),)
        policy = self.loaded.policy
        if self.options.mode is not None:
            policy = policy.model_copy(update={"mode": Mode(self.options.mode)})
        decision = decide(DecisionInput(checkpoint_digest=candidate.digest, data_tier=DataTier(policy.data.tier),
                                        detection=None, skipped=skipped, failures=failures), policy, today=self.today)
        entry = {"status": "failed", "stage": stage, "action": decision.action.value,
                 "enforced": decision.enforced.value, "exit_code": int(decision.exit_code),
                 "reasons": [reason, *decision.reasons], "score": None, "threshold": None, "suspected_target": None,
                 "seconds": outcome.seconds if outcome else None, "node": outcome.node if outcome else None,
                 "attempts": attempt, "report": None, "digest": candidate.digest, "name": candidate.name}
        self.store.put(self.keys[candidate.digest], entry, {})
        self.entries[candidate.digest] = entry
        self.counts["failed"] += 1

    def _report(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.progress is None or (not force and now - self.last_report < 1.0):
            return
        self.last_report = now
        self.progress(StageCounts(**self.counts, elapsed_s=round(now - self.started, 1), eta_s=self._eta()))

    def _eta(self) -> float | None:
        """Seconds left: the work not done at the mean time per model so far, spread over the cluster's CPUs."""
        left = 0.0
        for stage, done, total in (("intake", "intake_done", "intake_total"),
                                   ("detection", "detection_done", "detection_total")):
            times = self.stage_seconds[stage]
            remaining = self.counts[total] - self.counts[done]
            if remaining and not times:
                return None
            left += remaining * (sum(times) / len(times) if times else 0.0)
        # models still in intake may go on to detection: count them at detection's rate too
        undecided = self.counts["intake_total"] - self.counts["intake_done"]
        if undecided and self.stage_seconds["detection"]:
            left += undecided * sum(self.stage_seconds["detection"]) / len(self.stage_seconds["detection"])
        return left / self.slots


def _results(candidates: list[Candidate], primaries: dict[str, Candidate], entries: dict[str, dict],
             reused: set[str], keys: dict[str, str]) -> tuple[ModelResult, ...]:
    """One result per candidate, blocked first (worst exit code), then by name."""
    results = []
    for candidate in candidates:
        entry = entries[candidate.digest]
        primary = primaries[candidate.digest]
        status = entry["status"]
        if primary is not candidate:
            status = "duplicate"
        elif candidate.digest in reused and status != "failed":
            status = "reused"
        report = f"{STORE_DIR}/{keys[candidate.digest]}/{entry['report']}" if entry.get("report") else None
        results.append(ModelResult(
            name=candidate.name, path=candidate.path, source=candidate.source, digest=candidate.digest,
            status=status, stage=entry["stage"], action=entry["action"], enforced=entry["enforced"],
            exit_code=int(entry["exit_code"]), reasons=tuple(entry["reasons"]), score=entry.get("score"),
            threshold=entry.get("threshold"), suspected_target=entry.get("suspected_target"),
            seconds=entry.get("seconds"), report=report, node=entry.get("node"), gpus=tuple(entry.get("gpus", ())),
            attempts=entry.get("attempts", 0),
            duplicate_of=primary.name if primary is not candidate else None))
    from cbpt_guard.sweeper.records import SEVERITY

    return tuple(sorted(results, key=lambda r: (-SEVERITY.get(r.exit_code, 2), r.name)))


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_INSTALL_HINT) from None
    return ray


def _init_ray(ray, options: RayOptions) -> None:
    """Start a local Ray sized to this machine (or the given counts), or join the cluster at ``options.address``."""
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if options.runtime_env:
        kwargs["runtime_env"] = options.runtime_env
    if options.address:
        try:
            ray.init(address=options.address, **kwargs)
        except Exception as error:  # noqa: BLE001 - an unreachable cluster is the caller's to fix, not a verdict
            raise UsageError(f"cannot join the Ray cluster at {options.address}: {_first_line(error)}") from None
        return
    # "local": a new Ray of this machine, never a cluster that `ray start` left running here
    ray.init(address="local", num_cpus=options.num_cpus, num_gpus=options.num_gpus, **kwargs)


def _abs(path) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
