"""Who may do what: authorization decisions from a caller's peer credentials.

Three roles, decided per request from SO_PEERCRED and the daemon's process tree:

- admin: uid 0 or a member of the admin group, outside every managed agent: everything.
- agent: the caller's pid is inside a managed agent's tree (whatever its uid): it may
  declare intents for, and read, its own agent only. The agent is derived from the pid.
- user: any other local uid: may register a new agent (owned by that uid), read and
  cancel the agents it owns, and check a policy. Everything else is refused.

`decide` is pure; `peer_groups` and `resolve_group` are the only functions that read the
system.
"""

from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass
from enum import Enum

from agentd import procfs
from agentd.api.contract import Peer


class Action(str, Enum):
    STATUS = "status"
    METRICS = "metrics"
    AGENT_LIST = "agent.list"  # results filtered by `can_see`
    AGENT_READ = "agent.read"
    AGENT_REGISTER = "agent.register"
    TOOLCALL_LIST = "toolcall.list"  # results filtered by `can_see`
    TOOLCALL_READ = "toolcall.read"
    TOOLCALL_CANCEL = "toolcall.cancel"
    INTENT = "intent.declare"
    EVENTS = "events.read"  # target None: the events of every agent the caller may see
    POLICY_READ = "policy.read"
    POLICY_VALIDATE = "policy.validate"
    POLICY_APPLY = "policy.apply"


ADMIN_ONLY = {Action.STATUS, Action.METRICS, Action.POLICY_READ, Action.POLICY_APPLY}
ANYONE = {Action.POLICY_VALIDATE, Action.AGENT_LIST, Action.TOOLCALL_LIST}
# What a managed agent may do with its own agent.
AGENT_OWN = {Action.AGENT_READ, Action.TOOLCALL_READ, Action.INTENT, Action.EVENTS}
# What a user may do with an agent its uid owns.
OWNER = {Action.AGENT_READ, Action.TOOLCALL_READ, Action.TOOLCALL_CANCEL, Action.EVENTS}


@dataclass(frozen=True)
class Caller:
    peer: Peer
    admin: bool  # uid 0 or in the admin group
    agent: str | None  # the managed agent whose process tree holds peer.pid

    @property
    def role(self) -> str:
        if self.agent is not None:
            return "agent"
        return "admin" if self.admin else "user"

    def describe(self) -> str:
        who = f"pid {self.peer.pid} (uid {self.peer.uid})"
        if self.agent is not None:
            return f"{who} in managed agent '{self.agent}'"
        return who


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


ALLOW = Decision(True)


def decide(
    action: Action,
    caller: Caller,
    target_agent: str | None = None,
    target_owner_uid: int | None = None,
    admin_group: str | None = None,
) -> Decision:
    """May `caller` perform `action` on `target_agent` (owned by `target_owner_uid`)?"""
    role = caller.role
    if action in ANYONE:
        return ALLOW
    if role == "agent":
        if action == Action.AGENT_REGISTER:
            return Decision(
                False,
                f"{caller.describe()} is already managed; an agent cannot register another agent",
            )
        if action not in AGENT_OWN:
            return Decision(
                False,
                f"{caller.describe()} may only declare intents and read its own agent and events",
            )
        if action == Action.EVENTS and target_agent is None:
            return ALLOW  # the server narrows the stream to the caller's own agent
        if target_agent != caller.agent:
            return Decision(
                False,
                f"{caller.describe()} may not read agent '{target_agent}': "
                "an agent sees only itself",
            )
        return ALLOW
    if role == "admin":
        if action == Action.INTENT:
            return Decision(
                False,
                f"{caller.describe()} is not inside a managed agent; "
                "intents come from an agent's own process tree (start it with `agentctl run`)",
            )
        return ALLOW
    # user
    group_hint = f" or members of group '{admin_group}'" if admin_group else ""
    if action == Action.AGENT_REGISTER:
        return ALLOW  # the new agent is owned by the caller's uid
    if action == Action.INTENT:
        return Decision(
            False,
            f"{caller.describe()} is not inside a managed agent; "
            "intents come from an agent's own process tree (start it with `agentctl run`)",
        )
    if action in OWNER:
        if action == Action.EVENTS and target_agent is None:
            return ALLOW  # the server narrows the stream to the caller's own agents
        if target_owner_uid is not None and target_owner_uid == caller.peer.uid:
            return ALLOW
        return Decision(
            False,
            f"uid {caller.peer.uid} does not own agent '{target_agent}'; "
            f"only its owner, root{group_hint} may act on it",
        )
    return Decision(
        False, f"{action.value} is reserved to root{group_hint}; uid {caller.peer.uid} is neither"
    )


def can_see(caller: Caller, agent: str | None, owner_uid: int | None) -> bool:
    """Whether a listed agent (or an event about it) is shown to `caller`."""
    if caller.role == "agent":
        return agent == caller.agent
    if caller.role == "admin":
        return True
    return agent is not None and owner_uid == caller.peer.uid


def is_admin(peer: Peer, admin_gid: int | None, groups: set[int]) -> bool:
    """Root, or a member (primary or supplementary) of the admin group."""
    if peer.uid == 0:
        return True
    if admin_gid is None:
        return False
    return peer.gid == admin_gid or admin_gid in groups


def peer_groups(peer: Peer) -> set[int]:
    """The peer's supplementary groups: from /proc/<pid>/status, else the uid's membership."""
    groups = procfs.read_groups(peer.pid)
    if groups is not None:
        return set(groups)
    try:
        user = pwd.getpwuid(peer.uid).pw_name
    except KeyError:
        return set()
    return {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}


def resolve_group(group: str | int | None) -> int | None:
    """A group name or gid to a gid; None when not given. KeyError for an unknown name."""
    if group is None or group == "":
        return None
    if isinstance(group, int):
        return group
    if group.isdigit():
        return int(group)
    return grp.getgrnam(group).gr_gid
