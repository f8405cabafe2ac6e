"""Sizes as people write them (512M, 2G, 1.5GiB, 4096) to bytes and back: the one home for
sizes. Pure and stdlib only: the policy spec, the decision code, the API client and every
CLI command (agentctl, the gpu commands) use it."""

from __future__ import annotations

import math
import re

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_MAX_SIZE_CHARS = 64  # a longer size is a typo or an attack (and would be a float infinity)
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """'512M' -> 536870912. Units are binary (K = 1024), as in cgroups and systemd."""
    if isinstance(text, bool):
        raise ValueError("a size must be a number of bytes or a string such as 512M")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a size cannot be negative, got {text}")
        return text
    text = str(text)
    m = _SIZE.fullmatch(text) if len(text) <= _MAX_SIZE_CHARS else None
    if not m:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ValueError(f"expected a size such as 512M, 2G or 1048576, got {shown!r}")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value):  # '9' * 400 + 'M' is a float infinity
        raise ValueError(f"expected a size such as 512M, 2G or 1048576, got {text!r}")
    return int(value)


def format_size(n: int | float | None) -> str:
    """536870912 -> '512M'; the shortest exact-ish form for tables."""
    if n is None:
        return "-"
    n = float(n)
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if abs(n) >= factor:
            v = n / factor
            return f"{v:.0f}{unit}" if v == int(v) or v >= 100 else f"{v:.1f}{unit}"
    return f"{n:.0f}"
