"""Checks on what a caller sends before any controller method sees it: names, JSON bodies
(strict: an unknown field is an error, not a silent no-op), query parameters."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from agentd.api.contract import ApiError

NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
LEVELS = ("debug", "info", "warn", "error")


def check_name(value: Any, field: str) -> str:
    """An agent, tool-call, policy or file name: [A-Za-z0-9._-]{1,64}, no '..', not '.'."""
    if not isinstance(value, str):
        raise ApiError(400, "invalid_type", f"{field} must be a string", field)
    if not NAME_RE.fullmatch(value) or ".." in value or value == ".":
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ApiError(
            400,
            "invalid_name",
            f"{field} {shown!r} is not a valid name: use 1 to 64 letters, digits, '.', '_' "
            "or '-', without '..'",
            field,
        )
    return value


def check_toolcall_id(value: Any, field: str = "id") -> str:
    """A tool-call id: <agent>/<seq>-<tool>, each part a valid name."""
    if isinstance(value, str) and value.count("/") == 1:
        agent, rest = value.split("/")
        check_name(agent, field)
        check_name(rest, field)
        return value
    return check_name(value, field)


@dataclass(frozen=True)
class Field:
    types: tuple[type, ...]
    required: bool = False
    name: bool = False  # also check it as a name


def _type_label(types: tuple[type, ...]) -> str:
    labels = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
              list: "a list", dict: "an object"}
    return " or ".join(labels.get(t, t.__name__) for t in types)


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is an int in Python, never in a body
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


MAX_JSON_DEPTH = 32  # nesting of a request body; no route needs more than 3
MAX_JSON_NUMBER_DIGITS = 30  # longer integers cost seconds to convert (and 4,300 digits raise)
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def _json_depth(raw: bytes) -> int:
    """The deepest nesting of brackets outside strings, found without parsing (linear)."""
    depth = deepest = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub(b"", raw)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    break
        else:
            depth -= 1
    return deepest


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_NUMBER_DIGITS:
        raise ApiError(400, "invalid_json",
                       f"the request body has a number of {len(text.lstrip('-'))} digits; "
                       f"expected at most {MAX_JSON_NUMBER_DIGITS}")
    return int(text)


def _json_float(text: str) -> float:
    if sum(c.isdigit() for c in text) > MAX_JSON_NUMBER_DIGITS:
        raise ApiError(400, "invalid_json",
                       f"the request body has a number {text[:40]!r}...; expected at most "
                       f"{MAX_JSON_NUMBER_DIGITS} digits")
    value = float(text)
    if not math.isfinite(value):
        raise ApiError(400, "invalid_json", f"the request body has the number {text[:40]!r}, "
                       "which is out of range; JSON numbers must be finite")
    return value


def _json_constant(name: str) -> None:
    raise ApiError(400, "invalid_json", f"the request body has {name}; JSON numbers must be finite")


def parse_json_body(raw: bytes) -> dict:
    """A request body to a JSON object; an empty body is {}.

    Bounded before parsing (nesting) and while parsing (number digits, NaN/Infinity):
    a hostile body is a 400, never a RecursionError or a ValueError (a 500)."""
    if not raw.strip():
        return {}
    if _json_depth(raw) > MAX_JSON_DEPTH:
        raise ApiError(400, "invalid_json",
                       f"the request body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = json.loads(raw, parse_int=_json_int, parse_float=_json_float,
                          parse_constant=_json_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ApiError(
            400, "invalid_json", f"the request body is not valid JSON: {e.msg} "
            f"at line {e.lineno} column {e.colno}"
        ) from None
    except (RecursionError, ValueError):  # belt and braces: the checks above should catch it
        raise ApiError(400, "invalid_json", "the request body is not JSON agentd can read") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the request body must be a JSON object")
    try:  # a lone surrogate (\\ud800) would fail later, when the text is written or logged
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "invalid_json", "the request body has a string that is not valid "
                       "Unicode (a lone surrogate escape)") from None
    return body


def check_body(body: dict, spec: dict[str, Field]) -> dict:
    """Refuse unknown fields, missing required ones and wrong types; the first fault wins."""
    for key in body:
        if key not in spec:
            allowed = ", ".join(sorted(spec)) or "none"
            raise ApiError(400, "unknown_field", f"unknown field {key!r} (allowed: {allowed})", key)
    for key, f in spec.items():
        if key not in body or body[key] is None:
            if f.required:
                raise ApiError(400, "missing_field", f"field {key!r} is required", key)
            continue
        value = body[key]
        if not _type_ok(value, f.types):
            raise ApiError(
                400, "invalid_type",
                f"field {key!r} must be {_type_label(f.types)}, got {type(value).__name__}", key,
            )
        if f.name:
            check_name(value, key)
    return body


def check_query(query: dict[str, str], allowed: set[str]) -> None:
    for key in query:
        if key not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise ApiError(
                400, "unknown_parameter", f"unknown query parameter {key!r} (allowed: {names})", key
            )


def query_bool(query: dict[str, str], key: str, default: bool = False) -> bool:
    value = query.get(key)
    if value is None or value == "":
        return default
    low = value.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ApiError(400, "invalid_type", f"parameter {key!r} must be 1 or 0, got {value!r}", key)


def query_int(query: dict[str, str], key: str, default: int, lo: int, hi: int) -> int:
    value = query.get(key)
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise ApiError(400, "invalid_type", f"parameter {key!r} must be an integer", key) from None
    if not lo <= n <= hi:
        raise ApiError(400, "out_of_range", f"parameter {key!r} must be in {lo}..{hi}", key)
    return n


def query_level(query: dict[str, str], key: str = "level", default: str = "info") -> str:
    value = query.get(key) or default
    if value == "warning":
        value = "warn"
    if value not in LEVELS:
        raise ApiError(
            400, "invalid_level", f"level must be one of {', '.join(LEVELS)}, got {value!r}", key
        )
    return value


def level_at_least(level: str, minimum: str) -> bool:
    try:
        return LEVELS.index(level) >= LEVELS.index(minimum)
    except ValueError:
        return True  # an unknown level from the daemon is shown rather than hidden
