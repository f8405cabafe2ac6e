"""Human output for agentctl: tables, nested mappings, event lines. No daemon imports."""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

from agentd.api.client import format_size

SIZE_HINTS = ("memory", "bytes", "rss", "swap", "kv")
MAYBE_SIZE = ("granted", "requested", "asked")  # sizes when as large as a MiB


def cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and (
            (any(h in key for h in SIZE_HINTS) and value >= 1024)
            or (key in MAYBE_SIZE and value >= 1 << 20)):
        return format_size(value)
    if isinstance(value, float):
        if key in ("ts", "started", "ended", "since", "created") and value > 1e9:
            return time.strftime("%H:%M:%S", time.localtime(value))
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(key, v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={cell(k, v)}" for k, v in value.items()) or "-"
    return str(value)


def table(rows: Sequence[dict], columns: Sequence[str] | None = None,
          headers: Sequence[str] | None = None) -> str:
    """Columns default to the keys of the first row; missing values print as '-'."""
    if not rows:
        return "(none)"
    columns = list(columns or rows[0].keys())
    headers = [h.upper() for h in (headers or columns)]
    body = [[cell(c, r.get(c)) for c in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)).rstrip() for b in body]
    return "\n".join(lines)


def mapping(data: Any, indent: int = 0) -> str:
    """A nested dict/list as an indented outline, scalars formatted like table cells."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict) and value:
                lines.append(f"{pad}{key}:")
                lines.append(mapping(value, indent + 1))
            elif isinstance(value, list) and value and (
                    any(isinstance(v, (dict, list)) for v in value)
                    or sum(len(str(v)) for v in value) > 60):
                lines.append(f"{pad}{key}:")
                for item in value:
                    sub = mapping(item, indent + 2).lstrip()
                    lines.append(f"{pad}  - {sub}")
            else:
                lines.append(f"{pad}{key}: {cell(str(key), value)}")
    elif isinstance(data, list):
        lines.extend(f"{pad}- {mapping(item, indent + 1).lstrip()}" for item in data)
    else:
        lines.append(f"{pad}{cell('', data)}")
    return "\n".join(line for line in lines if line)


LEVEL_MARK = {"debug": "DEBUG", "info": "INFO ", "warn": "WARN ", "error": "ERROR"}


def event_line(ev: dict) -> str:
    ts = ev.get("ts")
    when = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}" \
        if isinstance(ts, (int, float)) else "--:--:--.---"
    who = ev.get("agent") or "agentd"
    call = ev.get("tool_call")
    if call:  # daemon ids already start with "<agent>/"
        who = call if str(call).startswith(f"{who}/") else f"{who}/{call}"
    level = LEVEL_MARK.get(ev.get("level", ""), str(ev.get("level", "")).upper())
    data = ev.get("data") or {}
    figures = " ".join(f"{k}={cell(k, v)}" for k, v in data.items()  # the numbers only
                       if isinstance(v, (int, float)) and not isinstance(v, bool)) \
        if isinstance(data, dict) else ""
    line = f"{when} {level} {ev.get('kind', '?'):<20} {who:<16} {ev.get('message', '')}"
    if figures:
        line += f"  [{figures}]"
    if ev.get("dropped"):
        line = f"... {ev['dropped']} event(s) dropped here: this reader was too slow ...\n" + line
    return line


def problems_lines(problems: Iterable[dict]) -> list[str]:
    out = []
    for p in problems:
        where = f"{p.get('file', '?')}:{p['line']}" if p.get("line") else str(p.get("file", "?"))
        out.append(f"{where}: {p.get('key') or '<document>'}: {p.get('message', '')}")
    return out
