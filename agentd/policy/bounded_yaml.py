"""YAML text to a PyYAML node tree, with every bound checked while the parser streams.

PyYAML's composer recurses once per nesting level and builds the whole tree before anyone
can look at it: a 100,000-deep document costs seconds and ends in a RecursionError. Here
the parser's events are read one at a time and the tree is built without recursion, so the
first event past a bound stops the parse (a deep document is refused in milliseconds):

- nesting depth (MAX_DEPTH), number of nodes (MAX_NODES), scalar length (MAX_SCALAR_CHARS);
- integers of more than MAX_INT_DIGITS digits (Python would need seconds to convert a
  million digits, and refuses more than 4,300 with a ValueError);
- anchors and aliases (billion laughs) and any tag outside YAML's core schema
  (!!python/object and friends).

Each refusal is a Problem with the file and line of the offending event.
"""

from __future__ import annotations

import yaml

from agentd.policy.problems import Problem

MAX_DEPTH = 32
MAX_NODES = 25_000  # the largest valid policy (500 tools, 500 agents) has about 14,000
MAX_SCALAR_CHARS = 64 * 1024
MAX_INT_DIGITS = 30

_CORE_TAG_PREFIX = "tag:yaml.org,2002:"
CORE_TAGS = frozenset(_CORE_TAG_PREFIX + t for t in ("str", "int", "float", "bool", "null", "map", "seq"))
INT_TAG = _CORE_TAG_PREFIX + "int"
FLOAT_TAG = _CORE_TAG_PREFIX + "float"
STR_TAG = _CORE_TAG_PREFIX + "str"

# libyaml is several times faster than the pure-Python parser; both stream events.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Refused(Exception):
    def __init__(self, line: int, message: str):
        self.line = line
        self.message = message


def _line(event: yaml.Event) -> int:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 0


def _resolve(loader, kind, event) -> str:
    tag = getattr(event, "tag", None)
    if tag is not None and tag != "!":
        return tag
    if kind is yaml.ScalarNode:
        return loader.resolve(yaml.ScalarNode, event.value, event.implicit)
    return loader.resolve(kind, None, getattr(event, "implicit", True))


def _scalar(loader, event: yaml.ScalarEvent) -> yaml.ScalarNode:
    if len(event.value) > MAX_SCALAR_CHARS:
        raise _Refused(_line(event), f"a value longer than {MAX_SCALAR_CHARS} characters; expected a short value")
    tag = _resolve(loader, yaml.ScalarNode, event)
    if tag not in CORE_TAGS and event.tag in (None, "!"):
        tag = STR_TAG  # an implicit timestamp is text here; the spec then says what it expected
    if tag not in CORE_TAGS:
        raise _Refused(_line(event), f"tag {tag!r} is not allowed; use plain YAML values")
    if tag in (INT_TAG, FLOAT_TAG):
        digits = sum(c.isdigit() for c in event.value)
        if digits > MAX_INT_DIGITS:
            raise _Refused(_line(event), f"a number with {digits} digits; expected at most {MAX_INT_DIGITS}")
    return yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)


def compose(text: str, file: str) -> tuple[yaml.Node | None, list[Problem]]:
    """The document's root node, or the problems that stopped it (one, with its line)."""
    loader = _Loader(text)
    stack: list[tuple[yaml.Node, list]] = []  # open collections and their items so far
    root: yaml.Node | None = None
    documents = nodes = 0
    try:
        while loader.check_event():
            event = loader.get_event()
            if getattr(event, "anchor", None) or isinstance(event, yaml.AliasEvent):
                raise _Refused(_line(event), "YAML anchors and aliases are not allowed in policies")
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise _Refused(_line(event), "more than one YAML document; expected exactly one")
                continue
            if isinstance(event, (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentEndEvent)):
                continue
            if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                node, items = stack.pop()
                if isinstance(node, yaml.MappingNode):
                    node.value = list(zip(items[0::2], items[1::2]))
                else:
                    node.value = items
                node.end_mark = event.end_mark
                continue
            nodes += 1
            if nodes > MAX_NODES:
                raise _Refused(_line(event), f"more than {MAX_NODES} values; expected a policy-sized document")
            if isinstance(event, yaml.ScalarEvent):
                node = _scalar(loader, event)
            else:
                kind = yaml.MappingNode if isinstance(event, yaml.MappingStartEvent) else yaml.SequenceNode
                if len(stack) >= MAX_DEPTH:
                    raise _Refused(_line(event), f"nested deeper than {MAX_DEPTH} levels; expected a flatter document")
                tag = _resolve(loader, kind, event)
                if tag not in CORE_TAGS:
                    raise _Refused(_line(event), f"tag {tag!r} is not allowed; use plain YAML values")
                node = kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
            if stack:
                stack[-1][1].append(node)
            else:
                root = node
            if not isinstance(node, yaml.ScalarNode):
                stack.append((node, []))
    except _Refused as exc:
        return None, [Problem(file, exc.line, "", exc.message)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        return None, [Problem(file, mark.line + 1 if mark else 0, "", f"not valid YAML: {exc.problem or exc}")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, 0, "", f"not valid YAML: {exc}")]
    finally:
        loader.dispose()
    if root is None:
        return None, [Problem(file, 0, "", "the file is empty; expected a mapping with version and name")]
    return root, []
