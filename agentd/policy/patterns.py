"""Policy `match` patterns, compiled with RE2: matching time is linear in the input.

Python's re backtracks: `^(\\w+\\s?)+$` against a crafted argv held the daemon (GIL
included) for 31 s. RE2 has no backtracking, so it cannot compile backreferences or
lookaround; such patterns are refused when a policy is validated, with the reason.
Compiled patterns are cached: the same few policy strings are matched on every exec.
"""

from __future__ import annotations

import functools
import re

import re2

MAX_PATTERN_MEMORY = 8 << 20  # RE2's bound on a compiled program; beyond, compile fails

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # errors come back as exceptions; RE2 would also print them
_OPTIONS.max_mem = MAX_PATTERN_MEMORY


_BACKREFERENCE = re.compile(r"escape sequence: \\[1-9]")


class PatternInvalid(ValueError):
    pass


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str):
    """A compiled RE2 pattern; PatternInvalid with RE2's reason if it cannot be compiled."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        hint = ""
        if "perl operator" in reason or _BACKREFERENCE.search(reason):
            hint = " (backreferences and lookaround cannot run in linear time and are not supported)"
        raise PatternInvalid(f"expected a regular expression RE2 can run, got {pattern!r}: {reason}{hint}") from None


def search(pattern: str, text: str) -> bool:
    """Whether the pattern matches anywhere in text (re.search semantics), in linear time."""
    return compile_pattern(pattern).search(text) is not None
