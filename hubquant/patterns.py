"""Regular expressions read from shared files, matched in linear time.

A config's ``match: {path: ...}`` and a Hugging Face folder's compressed-tensors
``re:`` targets come from files a stranger may have written. Python's ``re``
backtracks: ``(.|.)*Z`` takes exponential time on a 40-character layer path.
hubquant matches them with RE2, whose time is linear in the text and whose memory
is bounded. RE2 speaks Python's syntax except backreferences and lookaround
(``(?=``, ``(?!``, ``(?<=``), which it refuses with a clear error.
"""

from __future__ import annotations

import functools

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the error comes back as an exception, not on stderr
_OPTIONS.max_mem = 8 << 20


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str):
    return re2.compile(pattern, options=_OPTIONS)


def problem(pattern: object) -> str | None:
    """Why ``pattern`` is not a usable regular expression, or None."""
    if not isinstance(pattern, str):
        return f"a string, not {type(pattern).__name__}"
    try:
        _compiled(pattern)
    except re2.error as e:
        reason = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        return f"RE2 syntax: {reason}"
    return None


def fullmatch(pattern: str, text: str) -> bool:
    """``pattern`` matches all of ``text``."""
    return _compiled(pattern).fullmatch(text) is not None


def match(pattern: str, text: str) -> bool:
    """``pattern`` matches at the start of ``text`` (as ``re.match``)."""
    return _compiled(pattern).match(text) is not None
