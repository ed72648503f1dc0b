"""Terminal and CI-log output that untrusted text cannot bend: one line stays one line, no workflow commands.

Paths, folder names, tensor names, class names, YAML keys and exception text all
come from files or pull requests the gate does not trust, and all of them reach
stdout or stderr. Two things must never follow from that:

- a GitHub Actions workflow command: the runner honours ``::name::`` at the start
  of a line (after leading blanks) and ``##[name]`` anywhere in it, so a folder
  named ``::error title=x::passed`` could write its own annotations or a
  ``::add-mask::``/``::stop-commands::`` of its choosing;
- a line break inside one message (``\\n``, ``\\r``, ``\\x85``, ``\\u2028``,
  ``\\u2029``), which lets a message start a fresh line of its choosing, or a
  control character that rewrites the terminal.

Everything the CLI prints passes through :class:`SafeStream`, installed over
``sys.stdout`` and ``sys.stderr`` by :func:`guarded_output` (the CLI's entry
point and the Action's both use it), so no command module can forget it, and
output from libraries (``warnings``, ``logging``) is covered too. Under GitHub
Actions (``GITHUB_ACTIONS=true``) the run is additionally wrapped in
``::stop-commands::<random token>`` ... ``::<token>::``, so even output that
escapes the stream (a C library writing to the file descriptor) cannot issue
commands; the gate's own annotations are queued and written after the resume.

The escapes are chosen to be valid JSON string escapes as well (``\\u0085``,
``#\\u0023[``), so JSON printed through the stream still parses to the exact
original text.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import sys
from collections.abc import Iterator

# Control characters, every Unicode line break, bidi controls and lone surrogates
# (which cannot even be encoded). Tab (\x09) and newline (\x0a) are handled apart.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\r": "\\r", "\n": "\\n"}
# Blanks and invisible format characters the runner might skip before a leading "::".
_LEADING = re.compile(r"^[\s\u200b-\u200d\u2060\ufeff]*")
_V1_COMMAND = "##["
_V1_NEUTRAL = "#\\u0023["
_ENV_FLAG = "GITHUB_ACTIONS"


def _escape_char(match: re.Match[str]) -> str:
    char = match.group(0)
    return _SHORT.get(char) or f"\\u{ord(char):04x}"


def one_line(value: object) -> str:
    """``value`` as exactly one line: every line break and control character (tab aside) written as an escape.

    ``\\n`` and ``\\r`` become ``\\n``/``\\r``; anything else (``\\x85``,
    ``\\u2028``, ESC, a lone surrogate) becomes ``\\uXXXX``. Use it for every
    message that must stay one line, such as ``cbpt-guard: error: ...``.
    """
    return _UNSAFE.sub(_escape_char, str(value).replace("\n", "\\n"))


def safe_line(line: str, *, keep_cr: bool = False) -> str:
    """One physical output line (no ``\\n`` in it) made inert for a terminal and for the Actions runner.

    Control characters are escaped (``\\r`` kept when ``keep_cr``, for a
    terminal's progress line); a ``::`` that would start the line after
    leading blanks gets a backslash in front; every ``##[`` becomes
    ``#\\u0023[``.
    """
    if keep_cr:
        line = "\r".join(_UNSAFE.sub(_escape_char, part) for part in line.split("\r"))
    else:
        line = _UNSAFE.sub(_escape_char, line)
    while _V1_COMMAND in line:
        line = line.replace(_V1_COMMAND, _V1_NEUTRAL)
    lead = _LEADING.match(line).end()
    if line.startswith("::", lead):
        line = line[:lead] + "\\" + line[lead:]
    return line


def safe_text(text: str, *, keep_cr: bool = False) -> str:
    """Multi-line ``text`` with :func:`safe_line` applied to each of its lines (split on ``\\n`` only)."""
    return "\n".join(safe_line(line, keep_cr=keep_cr) for line in text.split("\n"))


class SafeStream(io.TextIOBase):
    """A text stream that writes each complete line to ``raw`` only after :func:`safe_line`.

    A line is held until its newline, so a command cut across two writes
    (``"  ::"`` then ``"error::x\\n"``) is judged whole; :meth:`finish` writes
    what is left. On a terminal a partial line is written at each flush
    (progress output), and a ``\\r`` is kept there.
    """

    def __init__(self, raw):
        super().__init__()
        self._raw = raw
        self._pending = ""
        try:
            self._tty = bool(raw.isatty())
        except (AttributeError, ValueError, OSError):
            self._tty = False

    @property
    def raw_stream(self):
        """The stream being protected (for the gate's own workflow commands)."""
        return self._raw

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._raw, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return getattr(self._raw, "errors", None) or "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._tty

    def fileno(self) -> int:
        return self._raw.fileno()

    def write(self, text: str) -> int:  # type: ignore[override]
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._raw.write(safe_line(line, keep_cr=self._tty) + "\n")
        return len(text)

    def flush(self) -> None:
        if self._tty and self._pending:
            self._raw.write(safe_line(self._pending, keep_cr=True))
            self._pending = ""
        self._raw.flush()

    def finish(self) -> None:
        """Write the last, unterminated line (made safe) and flush."""
        if self._pending:
            self._raw.write(safe_line(self._pending, keep_cr=self._tty))
            self._pending = ""
        self._raw.flush()


class _Guard:
    """The active guard: the real streams, the stop-commands token, and the gate's own queued commands."""

    def __init__(self, out, err, token: str | None):
        self.out, self.err, self.token = out, err, token
        self.commands: list[str] = []


_ACTIVE: list[_Guard] = []


def in_github_actions(env=None) -> bool:
    """Whether this process runs as a GitHub Actions step (the runner sets ``GITHUB_ACTIONS=true``)."""
    return (os.environ if env is None else env).get(_ENV_FLAG) == "true"


@contextlib.contextmanager
def guarded_output(env=None) -> Iterator[None]:
    """Route ``sys.stdout``/``sys.stderr`` through :class:`SafeStream` for the block; under Actions, stop commands.

    Re-entrant: inside an active guard it does nothing more. On the way out the
    held lines are written, the streams restored, commands resumed, and the
    gate's own queued workflow commands written.
    """
    if _ACTIVE:
        yield
        return
    out, err = sys.stdout, sys.stderr
    token = secrets.token_hex(16) if in_github_actions(env) else None
    if token:
        for stream in (out, err):
            stream.write(f"::stop-commands::{token}\n")
            stream.flush()
    guard = _Guard(out, err, token)
    safe_out, safe_err = SafeStream(out), SafeStream(err)
    _ACTIVE.append(guard)
    sys.stdout, sys.stderr = safe_out, safe_err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
        _ACTIVE.pop()
        for stream in (safe_err, safe_out):
            with contextlib.suppress(Exception):
                stream.finish()
        if token:
            for stream in (err, out):
                with contextlib.suppress(Exception):
                    stream.write(f"::{token}::\n")
                    stream.flush()
        for command in guard.commands:
            out.write(command + "\n")
        with contextlib.suppress(Exception):
            out.flush()


def workflow_command(name: str, message: str) -> None:
    """Issue one of the gate's own workflow commands (``warning``, ``error``, ``notice``) with an untrusted message.

    The message is one line, escaped as the runner decodes it (``%``, CR, LF)
    and with ``##[`` neutralised. Inside a guard the command is queued and
    written after commands are resumed; outside one it is written at once.
    """
    if name not in ("warning", "error", "notice"):
        raise ValueError(f"not a workflow command the gate issues: {name!r}")
    text = one_line(message).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    while _V1_COMMAND in text:
        text = text.replace(_V1_COMMAND, _V1_NEUTRAL)
    line = f"::{name}::{text}"
    if _ACTIVE:
        _ACTIVE[-1].commands.append(line)
    else:
        sys.stdout.write(line + "\n")
