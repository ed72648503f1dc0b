"""Exit codes and the typed errors that carry them.

Every failure the tool knows how to name is a :class:`CbptError` subclass whose
``exit_code`` says how a pipeline should read it. The CLI is the only place that
turns these into a process exit; library code just raises.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """The process exit codes, as documented in the README (one row each)."""

    PASS = 0
    """No evidence of a backdoor, or purified and verified, per the policy."""
    BLOCKED = 1
    """Blocked: by the policy, or because the input is unsafe to load."""
    TOOL_ERROR = 2
    """The tool itself failed (an internal error)."""
    INCONCLUSIVE = 3
    """Nothing scannable, an unsupported architecture, a required step skipped."""
    USAGE = 4
    """A bad flag, a missing path, an invalid policy or class list."""
    INTERRUPTED = 130
    """Stopped by the user (Ctrl-C, SIGINT): the run did not finish, so nothing was judged.

    130 is the shell's own code for a process ended by SIGINT (128 + 2), which
    CI runners and ``make`` already read as "interrupted"; it is neither a
    verdict (0, 1, 3) nor a failure of the tool (2).
    """


class CbptError(Exception):
    """Base of every error the tool raises on purpose.

    ``str(error)`` is a complete one-line message fit for a terminal or a CI log.
    """

    exit_code: ExitCode = ExitCode.TOOL_ERROR


class UsageError(CbptError):
    """The caller asked for something that cannot work: a missing path, a bad flag value."""

    exit_code = ExitCode.USAGE


class ClassListError(UsageError):
    """The deployment's class names are missing, empty or malformed."""


class ManifestError(UsageError):
    """The model manifest (class names, templates) is not valid."""


class UnsafeCheckpointError(CbptError):
    """A file would run code, or import something no checkpoint needs, if it were loaded.

    ``findings`` lists what was found (for a pickle: the offending globals), so
    the report can name them.
    """

    exit_code = ExitCode.BLOCKED

    def __init__(self, message: str, findings: tuple[str, ...] = ()):
        super().__init__(message)
        self.findings = tuple(findings)


class MalformedCheckpointError(CbptError):
    """A file is truncated, inconsistent or not what it claims to be; nothing could be scanned."""

    exit_code = ExitCode.INCONCLUSIVE


class UnsupportedArchitectureError(CbptError):
    """The architecture is unknown, or cannot be built without downloading or running code."""

    exit_code = ExitCode.INCONCLUSIVE


class RemoteSourceError(UnsupportedArchitectureError):
    """A config names a remote source (a hub model, a URL, pretrained weights) that building it would fetch.

    Refused before anything is built, whatever the environment says about
    offline mode: the gate never downloads, so such an architecture is one it
    cannot build (exit 3, like any unsupported architecture).
    """


class ConfigMismatchError(MalformedCheckpointError):
    """The config describes a model other than the one the weights file holds.

    Found by comparing the config with the tensors' names and shapes before the
    model is built, so a config cannot make the gate allocate more than the
    weights file it came with.
    """


class NothingScannableError(CbptError):
    """A path held nothing the tool could scan; ``skipped`` says what was passed over and why."""

    exit_code = ExitCode.INCONCLUSIVE

    def __init__(self, message: str, skipped: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.skipped = tuple(skipped)


class TimeLimitExceeded(CbptError):
    """A run went past its time limit; what it had computed so far is not a result.

    Exit 3: budgets are counted in steps, so a run cut short by the clock would
    give an answer that depends on the machine's load. It gives none instead.
    """

    exit_code = ExitCode.INCONCLUSIVE


class OutOfMemory(CbptError):
    """A stage ran out of accelerator memory even after one retry with half the chunk of images.

    Exit 3, like a run past its time limit: the stage could not look, so its
    step is reported as skipped with this message, never as a crash of the tool.
    """

    exit_code = ExitCode.INCONCLUSIVE


class UncalibratedBudgetError(CbptError):
    """Detection would run at a budget its calibration was not fitted at, so its score would mean nothing.

    Exit 3: the run could not look properly. The message names the settings
    that differ and the command that fits a calibration for the budget asked for.
    """

    exit_code = ExitCode.INCONCLUSIVE


class ExportError(CbptError):
    """The classifier could not be exported to ONNX, or the export failed its parity check.

    Exit 3: the deployable artefact could not be produced and checked, so the
    run cannot vouch for it. ``operator`` names the operator the exporter could
    not trace, when that is the cause.
    """

    exit_code = ExitCode.INCONCLUSIVE

    def __init__(self, message: str, operator: str | None = None):
        super().__init__(message)
        self.operator = operator


class OnnxRuntimeMissingError(ExportError):
    """onnxruntime cannot be imported, so the export's parity cannot be checked.

    Exit 3 like every :class:`ExportError`; the pipeline records the export as a
    required step skipped (inconclusive), never as a failure that blocks the model.
    """
