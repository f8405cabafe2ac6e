"""Policy files in, typed Policy out, or a list of Problems (file, line, key, expected).

Hostile input is refused before it is built: files over MAX_POLICY_BYTES here, and while
the parser streams (bounded_yaml): nesting, scalar length, integer digits, anchors and
aliases (billion laughs), non-core tags (!!python/...).
"""

from __future__ import annotations

import os
from pathlib import Path

from agentd.policy import bounded_yaml
from agentd.policy.problems import Problem
from agentd.policy.schema import KIND_SECTIONS, POLICY_SPEC, Policy, ResourceLimits, ToolCallPolicy

MAX_POLICY_BYTES = 1 << 20
MAX_DEPTH = bounded_yaml.MAX_DEPTH


class PolicyInvalid(ValueError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def parse_text(text: str, filename: str) -> tuple[Policy | None, list[Problem]]:
    problems: list[Problem] = []
    if len(text.encode("utf-8", "replace")) > MAX_POLICY_BYTES:
        return None, [Problem(filename, 0, "", f"file is larger than {MAX_POLICY_BYTES} bytes")]
    node, problems = bounded_yaml.compose(text, filename)
    if node is None:
        return None, problems
    values = POLICY_SPEC.check(node, "", problems, filename)
    if problems or values is None:
        return None, problems
    policy = Policy(
        name=values["name"],
        version=values["version"],
        priority=values.get("priority") or "normal",
        agents=tuple(values.get("agents") or ()),
        agent=values.get("agent") or ResourceLimits(),
        toolcalls=values.get("toolcalls") or ToolCallPolicy(),
        source=filename,
        text=text,
        sections={key: values[key] for key in KIND_SECTIONS if values.get(key) is not None},
    )
    return policy, []


def validate_text(text: str, filename: str) -> list[Problem]:
    return parse_text(text, filename)[1]


def read_policy_file(path: str | os.PathLike, *, require_root_owned: bool = False) -> str:
    """Read a policy file's text; raise PolicyInvalid with a whole-file problem if unreadable.

    The daemon passes require_root_owned: a policy it enforces as root must not be
    writable by anyone else (bpftune's trust check)."""
    path = Path(path)
    try:
        st = path.stat()
        if not path.is_file():
            raise PolicyInvalid([Problem(str(path), 0, "", "not a regular file")])
        if st.st_size > MAX_POLICY_BYTES:
            raise PolicyInvalid([Problem(str(path), 0, "", f"file is larger than {MAX_POLICY_BYTES} bytes")])
        if require_root_owned and (st.st_uid != 0 or st.st_mode & 0o022):
            raise PolicyInvalid([Problem(str(path), 0, "", "refused: a policy file must be owned by root and not writable by group or others")])
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PolicyInvalid([Problem(str(path), 0, "", "not UTF-8 text")]) from None
    except OSError as exc:
        raise PolicyInvalid([Problem(str(path), 0, "", f"cannot read: {exc.strerror}")]) from None


def validate_file(path: str | os.PathLike) -> list[Problem]:
    try:
        text = read_policy_file(path)
    except PolicyInvalid as exc:
        return exc.problems
    return validate_text(text, str(path))


def load_file(path: str | os.PathLike, *, require_root_owned: bool = False) -> Policy:
    text = read_policy_file(path, require_root_owned=require_root_owned)
    policy, problems = parse_text(text, str(path))
    if problems:
        raise PolicyInvalid(problems)
    assert policy is not None
    return policy
