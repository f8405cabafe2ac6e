"""The policies in force: the embedded default plus the files of the policy directory.

Reload is atomic: every file is parsed first, and only when all of them are valid does the
new set replace the old one. A bad file never replaces a good policy. At start-up there is
no old set to keep: a bad file is skipped (and reported in `skipped`), the rest run.

Apply is crash-safe: the new file is written under a temporary name, fsynced, renamed over
the old one and the directory fsynced, so after a crash the directory holds either the old
file or the new one, whole. A rollback goes the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path

from agentd.paths import DEFAULT_POLICY
from agentd.policy.loader import PolicyInvalid, load_file, parse_text, read_policy_file
from agentd.policy.problems import Problem
from agentd.policy.schema import Policy, valid_name


class PolicySet:
    def __init__(self, policy_dir: Path | None = None, default_path: Path = DEFAULT_POLICY, require_root_owned: bool = True):
        self.policy_dir = policy_dir
        self.default_path = default_path
        self.require_root_owned = require_root_owned
        self.policies: dict[str, Policy] = {}
        self._parsed: dict[tuple[str, str], Policy] = {}  # (path, text) -> policy: no second parse
        self.skipped: list[Problem] = []  # what start-up left out; the daemon reports it loudly
        fresh, self.skipped = self._load()
        self.policies = fresh

    def reload(self) -> list[str]:
        """Parse everything, swap in only when all is valid; raise PolicyInvalid otherwise."""
        fresh, problems = self._load()
        if problems:
            raise PolicyInvalid(problems)
        self.policies = fresh
        return sorted(fresh)

    def _load(self) -> tuple[dict[str, Policy], list[Problem]]:
        """Every valid policy file, and the problems of the others (which are left out)."""
        fresh = {"default": load_file(self.default_path)}
        problems: list[Problem] = []
        parsed: dict[tuple[str, str], Policy] = {}
        for path in self._files():
            try:
                policy = self._load_one(path, parsed)
            except PolicyInvalid as exc:
                problems.extend(exc.problems)
                continue
            if policy.name in fresh and policy.name != "default":
                problems.append(Problem(str(path), 0, "name", f"policy {policy.name!r} is defined twice"))
                continue
            fresh[policy.name] = policy
        self._parsed = parsed
        return fresh, problems

    def _load_one(self, path: Path, parsed: dict) -> Policy:
        text = read_policy_file(path, require_root_owned=self.require_root_owned)
        key = (str(path), text)
        policy = self._parsed.get(key)
        if policy is None:
            policy, problems = parse_text(text, str(path))
            if problems:
                raise PolicyInvalid(problems)
        parsed[key] = policy
        return policy

    def _files(self) -> list[Path]:
        if self.policy_dir is None or not self.policy_dir.is_dir():
            return []
        return sorted(p for p in self.policy_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())

    def get(self, name: str) -> Policy:
        return self.policies.get(name) or self.policies["default"]

    def validate(self, text: str, filename: str) -> list[Problem]:
        return parse_text(text, filename)[1]

    def apply(self, text: str, filename: str, parsed: Policy | None = None) -> Policy:
        """Validate, write crash-safely into the policy directory, reload. Nothing changes on
        error. `parsed` is the policy a parse worker already made of `text`."""
        policy, problems = (parsed, []) if parsed is not None else parse_text(text, filename)
        if problems:
            raise PolicyInvalid(problems)
        assert policy is not None
        if self.policy_dir is None:
            raise PolicyInvalid([Problem(filename, 0, "", "this daemon has no policy directory to apply into")])
        if not valid_name(policy.name):
            raise PolicyInvalid([Problem(filename, 0, "name", "invalid policy name")])
        self.policy_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        target = self.policy_dir / f"{policy.name}.yaml"
        previous = target.read_bytes() if target.exists() else None
        self._parsed[(str(target), text)] = dataclasses.replace(policy, source=str(target))
        write_durably(target, text.encode("utf-8"))
        try:
            self.reload()
        except PolicyInvalid:
            if previous is None:
                target.unlink()
                fsync_dir(self.policy_dir)
            else:
                write_durably(target, previous)
            raise
        return policy

    def diff(self, text: str, filename: str, parsed: Policy | None = None) -> str:
        policy, problems = (parsed, []) if parsed is not None else parse_text(text, filename)
        if problems:
            raise PolicyInvalid(problems)
        assert policy is not None
        current = self.policies.get(policy.name)
        old = current.text if current else ""
        return "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                            f"{policy.name} (in force)", f"{filename} (proposed)"))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace target with data so that a crash at any point leaves the old or the new file
    whole: write a temporary file, fsync it, rename it over target, fsync the directory."""
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, target)
    fsync_dir(target.parent)
