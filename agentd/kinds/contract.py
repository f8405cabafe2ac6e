"""The contract every policy kind implements (bpftune's tuner contract, tuned's plugin).

A kind is one room of the house: a package with a pure model (its state and decisions),
thin actuators (one kernel- or GPU-facing effect each, returning the old value so it can be
reverted), its section of the policy file, and the hooks below. The daemon calls the hooks
of every kind the same way, from its event loop's thread, and isolates their failures
(`agentd.kinds.host.KindHost`); the API serves each kind's commands under /v1/<kind>/<name>.

Kinds read the daemon's shared model (`KindContext.model`: agents, tool calls, their
cgroups, the process tree) and the journal's events; they never import each other.

Tool-call placement is the exception that proves the rule: a gated exec is placed on the
tracker's thread (`agentd.toolcalls.placement`), because the exec stays stopped until it is done
and a hop through the event loop would add the loop's latency to every tool call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:
    from agentd.api.auth import Caller
    from agentd.api.validation import Field
    from agentd.kinds.context import KindContext

KIND_NAME_RE = re.compile(r"[a-z][a-z0-9_]{1,31}")
COMMAND_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
HOOKS = ("attach", "readopt", "on_event", "on_sample", "on_tick", "on_policy", "commands", "status",
         "metrics", "stop")


class Access(str, Enum):
    """Who may call a kind's command; decided from SO_PEERCRED before the handler runs."""

    ADMIN = "admin"  # root or the admin group, from outside every managed agent
    USER = "user"  # any local uid outside managed agents; the handler acts only on what that uid owns
    AGENT = "agent"  # a process inside a managed agent, acting on its own agent (caller.agent)
    ANYONE = "anyone"  # every caller; for reads the handler filters by the caller


@dataclass(frozen=True)
class Command:
    """One API route of a kind: METHOD /v1/<kind>/<name>.

    `handler(caller, body)` gets the authorized caller and the checked body (POST) or query
    (GET) and returns JSON-able data, or raises agentd.api.contract.ApiError. It runs on the
    event loop: anything slower than a millisecond or two belongs in ctx.run_blocking.
    """

    name: str
    method: str  # "GET" | "POST"
    access: Access
    handler: Callable[["Caller", dict], Any]
    body: dict[str, "Field"] | None = None  # POST body schema (unknown fields are errors); GET: query keys
    summary: str = ""


class Kind:
    """Base class: every hook has a harmless default, so a kind writes only what it needs.

    Order of calls: attach(ctx) -> on_policy(...) -> readopt() -> [on_event / on_sample /
    on_tick / commands]* -> stop(revert). All on the event loop's thread.
    """

    name: ClassVar[str] = ""  # routes /v1/<name>/..., metrics agentd_<name>_..., status["kinds"][name]
    journal_prefix: ClassVar[str] = ""  # the journal event kinds it emits: "<prefix>.<what>"

    ctx: "KindContext"

    def attach(self, ctx: "KindContext") -> None:
        """Receive the shared model, journal, clock, saved values and kernel facts."""
        self.ctx = ctx

    def readopt(self) -> dict[str, int]:
        """After a restart: take back what the previous daemon left (from ctx.state), report counts."""
        return {}

    def on_event(self, event: Any) -> None:
        """A kernel process event (agentd.events.ProcEvent) or a journal record (a dict with
        "kind", e.g. "toolcall.start" / "toolcall.end", "agent", "tool_call", "data")."""

    def on_sample(self, snapshot: Any) -> None:
        """A GPU sample (agentd.gpu.sampler.GpuSnapshot), about once a second when a GPU is there."""

    def on_tick(self, now: float) -> None:
        """The daemon's tick (every 0.2 s): time-driven decisions (expiry, rate limits, guards)."""

    def on_policy(self, sections: dict[str, Any]) -> None:
        """The kind's policy section from every policy in force, by policy name ({} when none)."""

    def commands(self) -> list[Command]:
        return []

    def status(self) -> dict:
        """For `agentctl status` and GET /v1/<kind>/status: state, and what is missing and why."""
        return {}

    def metrics(self) -> dict[str, float]:
        """Counters and gauges; keys without the agentd_<kind>_ prefix (the host adds it)."""
        return {}

    def stop(self, revert: bool) -> None:
        """Daemon stopping. revert=True (policy removed, `agentctl <kind> revert`): put back
        every saved value (ctx.changes.revert_all()). revert=False: leave things as they are
        for the next daemon to re-adopt."""


class KindInvalid(TypeError):
    """A kind that does not meet the contract: refused at start-up, with the reason."""


def check_kind(kind: Kind) -> None:
    """bpftune's load-time check: the name, the hooks and the command table are well formed."""
    cls = type(kind)
    if not KIND_NAME_RE.fullmatch(cls.name or ""):
        raise KindInvalid(f"{cls.__qualname__}: kind name {cls.name!r} must match {KIND_NAME_RE.pattern}")
    for hook in HOOKS:
        if not callable(getattr(kind, hook, None)):
            raise KindInvalid(f"kind {cls.name}: hook {hook} is missing or not callable")


def check_commands(kind_name: str, commands: list[Command]) -> None:
    seen: set[tuple[str, str]] = set()
    for cmd in commands:
        if not isinstance(cmd, Command):
            raise KindInvalid(f"kind {kind_name}: commands() must return Command objects, got {cmd!r}")
        if not COMMAND_NAME_RE.fullmatch(cmd.name):
            raise KindInvalid(f"kind {kind_name}: command name {cmd.name!r} must match {COMMAND_NAME_RE.pattern}")
        if cmd.method not in ("GET", "POST"):
            raise KindInvalid(f"kind {kind_name}: command {cmd.name} has method {cmd.method!r}; expected GET or POST")
        if not isinstance(cmd.access, Access):
            raise KindInvalid(f"kind {kind_name}: command {cmd.name} needs an Access, got {cmd.access!r}")
        if (cmd.method, cmd.name) in seen:
            raise KindInvalid(f"kind {kind_name}: command {cmd.method} {cmd.name} is defined twice")
        seen.add((cmd.method, cmd.name))


@dataclass
class KindReport:
    """What the host learned from a kind at start-up (for status)."""

    name: str
    readopted: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    last_error: str = ""
