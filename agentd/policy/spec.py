"""A tiny declarative schema language: one spec checks YAML nodes (with line numbers) and
renders the published JSON Schema, so the two can never disagree.

Each spec type has `check(node, path, problems) -> python value | None` working on PyYAML
nodes, and `json_schema() -> dict`. Unknown keys are errors (a typo must not silently do
nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from agentd import units
from agentd.policy.patterns import PatternInvalid, compile_pattern
from agentd.policy.problems import Problem

MAX_SIZE_BYTES = 1 << 50  # 1 PiB: anything above is a typo, not a policy
_SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*([KMGTkmgt]?)(i?[Bb])?\s*$"  # for the JSON Schema


def parse_size(text: str | int | float) -> int:
    """A policy size: '512M' -> 536870912 (binary units, as everywhere in agentd), at most 1P."""
    given = text
    if isinstance(text, float) and not isinstance(text, bool):
        if not math.isfinite(text) or text > MAX_SIZE_BYTES:
            raise ValueError(f"expected a size between 0 and 1P, got {given!r}")
        text = int(text)
    value = units.parse_size(text)
    if value > MAX_SIZE_BYTES:
        raise ValueError(f"expected a size between 0 and 1P, got {given!r}")
    return value


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _scalar_value(node: yaml.Node) -> Any:
    """Resolve a scalar node to a Python value with the safe constructor's rules.

    bounded_yaml already refused long numbers; a value the constructor still cannot
    build (a malformed timestamp, say) is a ValueError, reported like any bad value."""
    try:
        return yaml.constructor.SafeConstructor().construct_object(node)
    except (ValueError, OverflowError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the value {node.value[:80]!r}: {exc}") from None


class Spec:
    description: str = ""

    def check(self, node: yaml.Node, path: str, problems: list[Problem], file: str) -> Any:
        raise NotImplementedError

    def json_schema(self) -> dict:
        raise NotImplementedError

    def _problem(self, problems, file, node, path, message) -> None:
        problems.append(Problem(file, _line(node), path, message))


@dataclass
class Scalar(Spec):
    kind: str  # "int", "number", "str", "bool", "size", "regex", "enum"
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    description: str = ""
    max_len: int = 4096

    def check(self, node, path, problems, file):
        if not isinstance(node, yaml.ScalarNode):
            self._problem(problems, file, node, path, f"expected {self._expected()}, got a {_node_kind(node)}")
            return None
        try:
            value = self._convert(_scalar_value(node))
        except (ValueError, OverflowError) as exc:
            self._problem(problems, file, node, path, str(exc))
            return None
        return value

    def _expected(self) -> str:
        return {
            "int": "an integer",
            "number": "a number",
            "str": "a string",
            "bool": "true or false",
            "size": "a size such as 512M or 2G",
            "regex": "a regular expression",
            "enum": "one of " + ", ".join(self.choices),
        }[self.kind]

    def _range(self, value):
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"expected {self._expected()} >= {self.minimum:g}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"expected {self._expected()} <= {self.maximum:g}, got {value!r}")
        return value

    def _convert(self, raw):
        k = self.kind
        if k == "bool":
            if not isinstance(raw, bool):
                raise ValueError(f"expected true or false, got {raw!r}")
            return raw
        if k == "int":
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ValueError(f"expected an integer, got {raw!r}")
            return self._range(raw)
        if k == "number":
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
                raise ValueError(f"expected a finite number, got {raw!r}")
            return self._range(float(raw))
        if k == "size":
            return self._range(parse_size(raw))
        text = raw if isinstance(raw, str) else str(raw)
        if len(text) > self.max_len:
            raise ValueError(f"expected at most {self.max_len} characters, got {len(text)}")
        if k == "regex":
            try:
                compile_pattern(text)
            except PatternInvalid as exc:
                raise ValueError(str(exc)) from None
            return text
        if k == "enum":
            if text not in self.choices:
                raise ValueError(f"expected one of {', '.join(self.choices)}, got {text!r}")
            return text
        return text

    def json_schema(self):
        out: dict[str, Any]
        if self.kind == "int":
            out = {"type": "integer"}
        elif self.kind == "number":
            out = {"type": "number"}
        elif self.kind == "bool":
            out = {"type": "boolean"}
        elif self.kind == "size":
            out = {"type": ["integer", "string"], "pattern": _SIZE_PATTERN}
        elif self.kind == "enum":
            out = {"type": "string", "enum": list(self.choices)}
        else:
            out = {"type": "string", "maxLength": self.max_len}
            if self.kind == "regex":
                out["format"] = "regex"
        if self.minimum is not None and self.kind in ("int", "number"):
            out["minimum"] = self.minimum
        if self.maximum is not None and self.kind in ("int", "number"):
            out["maximum"] = self.maximum
        if self.description:
            out["description"] = self.description
        return out


@dataclass
class ListOf(Spec):
    item: Spec
    max_items: int = 1000
    description: str = ""

    def check(self, node, path, problems, file):
        if not isinstance(node, yaml.SequenceNode):
            self._problem(problems, file, node, path, f"expected a list, got a {_node_kind(node)}")
            return None
        if len(node.value) > self.max_items:
            self._problem(problems, file, node, path, f"expected at most {self.max_items} items, got {len(node.value)}")
            return None
        return [self.item.check(child, f"{path}[{i}]", problems, file) for i, child in enumerate(node.value)]

    def json_schema(self):
        out = {"type": "array", "items": self.item.json_schema(), "maxItems": self.max_items}
        if self.description:
            out["description"] = self.description
        return out


@dataclass
class Mapping(Spec):
    fields: dict[str, Spec]
    required: tuple[str, ...] = ()
    description: str = ""
    build: Callable[[dict], Any] | None = None  # turns the checked dict into a typed value
    extra: list[Callable[[dict], list[tuple[str, str]]]] = field(default_factory=list)  # cross-field checks

    def check(self, node, path, problems, file):
        if not isinstance(node, yaml.MappingNode):
            self._problem(problems, file, node, path, f"expected a mapping with keys {', '.join(self.fields)}, got a {_node_kind(node)}")
            return None
        values: dict[str, Any] = {}
        before = len(problems)
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            sub = f"{path}.{key}" if path else str(key)
            if key not in self.fields:
                self._problem(problems, file, key_node, sub, f"unknown key; expected one of {', '.join(self.fields)}")
                continue
            if key in values:
                self._problem(problems, file, key_node, sub, "duplicate key")
                continue
            values[key] = self.fields[key].check(value_node, sub, problems, file)
        for key in self.required:
            if key not in values:
                self._problem(problems, file, node, f"{path}.{key}" if path else key, "required key is missing")
        if len(problems) > before:
            return None
        for check in self.extra:
            for key, message in check(values):
                self._problem(problems, file, node, ".".join(k for k in (path, key) if k), message)
        if len(problems) > before:
            return None
        return self.build(values) if self.build else values

    def json_schema(self):
        out = {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: v.json_schema() for k, v in self.fields.items()},
        }
        if self.required:
            out["required"] = list(self.required)
        if self.description:
            out["description"] = self.description
        return out


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    return f"scalar ({node.value!r})"
