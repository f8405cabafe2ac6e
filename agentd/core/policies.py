"""The policies in force: the embedded default plus the files of the policy directory.

Reload is atomic: every file is parsed first, and only when all of them are valid does the
new set replace the old one. A bad file never replaces a good policy.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from agentd.paths import DEFAULT_POLICY
from agentd.policy.loader import PolicyInvalid, load_file, parse_text
from agentd.policy.problems import Problem
from agentd.policy.schema import Policy, valid_name


class PolicySet:
    def __init__(self, policy_dir: Path | None = None, default_path: Path = DEFAULT_POLICY, require_root_owned: bool = True):
        self.policy_dir = policy_dir
        self.default_path = default_path
        self.require_root_owned = require_root_owned
        self.policies: dict[str, Policy] = {}
        self.reload()

    def reload(self) -> list[str]:
        """Parse everything, swap in only when all is valid; raise PolicyInvalid otherwise."""
        fresh = {"default": load_file(self.default_path)}
        problems: list[Problem] = []
        for path in self._files():
            try:
                policy = load_file(path, require_root_owned=self.require_root_owned)
            except PolicyInvalid as exc:
                problems.extend(exc.problems)
                continue
            if policy.name in fresh and policy.name != "default":
                problems.append(Problem(str(path), 0, "name", f"policy {policy.name!r} is defined twice"))
            fresh[policy.name] = policy
        if problems:
            raise PolicyInvalid(problems)
        self.policies = fresh
        return sorted(fresh)

    def _files(self) -> list[Path]:
        if self.policy_dir is None or not self.policy_dir.is_dir():
            return []
        return sorted(p for p in self.policy_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())

    def get(self, name: str) -> Policy:
        return self.policies.get(name) or self.policies["default"]

    def validate(self, text: str, filename: str) -> list[Problem]:
        return parse_text(text, filename)[1]

    def apply(self, text: str, filename: str) -> Policy:
        """Validate, write atomically into the policy directory, reload. Nothing changes on error."""
        policy, problems = parse_text(text, filename)
        if problems:
            raise PolicyInvalid(problems)
        assert policy is not None
        if self.policy_dir is None:
            raise PolicyInvalid([Problem(filename, 0, "", "this daemon has no policy directory to apply into")])
        if not valid_name(policy.name):
            raise PolicyInvalid([Problem(filename, 0, "name", "invalid policy name")])
        self.policy_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        target = self.policy_dir / f"{policy.name}.yaml"
        previous = target.read_text() if target.exists() else None
        tmp = self.policy_dir / f".{policy.name}.yaml.tmp"
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(target)
        try:
            self.reload()
        except PolicyInvalid:
            if previous is None:
                target.unlink()
            else:
                target.write_text(previous)
            raise
        return policy

    def diff(self, text: str, filename: str) -> str:
        policy, problems = parse_text(text, filename)
        if problems:
            raise PolicyInvalid(problems)
        assert policy is not None
        current = self.policies.get(policy.name)
        old = current.text if current else ""
        return "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                            f"{policy.name} (in force)", f"{filename} (proposed)"))
