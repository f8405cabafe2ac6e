"""Who may call a kind's command (contract.Access), decided from the caller the API server
derived from SO_PEERCRED. Pure."""

from __future__ import annotations

from agentd.api.auth import Caller, Decision
from agentd.kinds.contract import Access

ALLOW = Decision(True)


def decide_access(access: Access, caller: Caller, admin_group: str | None = None) -> Decision:
    role = caller.role
    if access == Access.ANYONE:
        return ALLOW
    if access == Access.AGENT:
        if role == "agent":
            return ALLOW
        return Decision(False, f"{caller.describe()} is not inside a managed agent; this command acts on the "
                               "caller's own agent (start it with `agentctl run`)")
    if role == "agent":
        return Decision(False, f"{caller.describe()} is a managed agent; this command is not for agents")
    if access == Access.USER or role == "admin":
        return ALLOW
    group_hint = f" or members of group '{admin_group}'" if admin_group else ""
    return Decision(False, f"this command is reserved to root{group_hint}; uid {caller.peer.uid} is neither")
