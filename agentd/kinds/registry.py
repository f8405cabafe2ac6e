"""The list of policy kinds: adding a kind is one package plus one line here.

Each package `agentd/<kind>/` holds, by convention:
  kind.py     KIND: the Kind subclass (agentd.kinds.contract), with its hooks and commands
  policy.py   SPEC: the schema of its policy section, top-level key = the kind's name; pure
              (imported by `agentctl policy validate` without the daemon)
  model.py    the pure state and decisions; actuators in their own module(s)
and `cli/<kind>_commands.py` a click group `group` that agentctl adds as `agentctl <kind>`.

This module imports nothing at load time, so the loader and the CLI can read it cheaply.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KindEntry:
    name: str  # the policy section key, /v1/<name>/..., agentctl <name>
    package: str  # holds kind.py (KIND) and policy.py (SPEC)
    cli: str | None = None  # module with a click group `group`


KINDS: tuple[KindEntry, ...] = (
    KindEntry("budget", "agentd.budget"),
    KindEntry("colocation", "agentd.colocation", "cli.colocation_commands"),
    KindEntry("tiers", "agentd.tiers", "cli.tiers_commands"),
    KindEntry("kv", "agentd.kv", "cli.kv_commands"),
)


def policy_sections(kinds: tuple[KindEntry, ...] = KINDS) -> dict[str, Any]:
    """{section key: Spec} for the policy schema."""
    return {k.name: importlib.import_module(f"{k.package}.policy").SPEC for k in kinds}


def load_kinds(kinds: tuple[KindEntry, ...] = KINDS) -> list[Any]:
    """One instance of every kind, checked against the contract (a bad kind stops start-up)."""
    from agentd.kinds.contract import KindInvalid, check_kind

    out = []
    for entry in kinds:
        cls = importlib.import_module(f"{entry.package}.kind").KIND
        kind = cls()
        check_kind(kind)
        if kind.name != entry.name:
            raise KindInvalid(f"{entry.package}.kind.KIND is named {kind.name!r}; the registry calls it {entry.name!r}")
        out.append(kind)
    return out


def cli_groups(kinds: tuple[KindEntry, ...] = KINDS) -> list[Any]:
    return [importlib.import_module(k.cli).group for k in kinds if k.cli]
