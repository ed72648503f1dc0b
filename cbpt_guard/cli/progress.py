"""The one place progress is printed: on a terminal one line per stage rewritten in place, in a CI log plain lines.

Library code reports :class:`~cbpt_guard.progress.ProgressEvent` records (and
plain lines between stages) through a callback; every command passes
:func:`progress_printer`. Events already come about ten per stage at fixed step
counts, so a log gets a short, steady trace with step counts and an ETA, and
no carriage returns (they pile up into one unreadable line in CI logs).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from cbpt_guard.progress import ProgressEvent


class ProgressPrinter:
    """A progress callback that writes to ``stream`` (default: stderr), timestamped."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self.line_open = False
        self.width = 0

    def __call__(self, event: ProgressEvent | str) -> None:
        # one line per event whatever it carries: a path or class name cannot start a line (``::`` would be
        # read as a workflow command in GitHub Actions) or break a terminal's in-place line
        text = f"[{time.strftime('%H:%M:%S')}] {' '.join(str(event).split())}"
        if self.tty and isinstance(event, ProgressEvent):
            finished = event.step >= event.total
            padded = text.ljust(self.width if self.line_open else 0)  # blanks over a longer line before it
            self.stream.write(f"\r{padded}" + ("\n" if finished else ""))
            self.line_open, self.width = not finished, len(text)
        else:
            self.stream.write(("\n" if self.line_open else "") + text + "\n")
            self.line_open = False
        self.stream.flush()


def progress_printer() -> ProgressPrinter:
    """The callback a command hands to the library: prints to stderr, in place only on a terminal."""
    return ProgressPrinter()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
