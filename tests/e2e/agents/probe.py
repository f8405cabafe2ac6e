"""An API caller for the security tests, run as an unprivileged user: each argument is one
request; prints one JSON line per request, {"ok": ...} or {"status": code, "code": ...}.

  agents | toolcalls:<agent> | events:<agent> | intent:<json> | register:<name>
"""

from __future__ import annotations

import json
import os
import sys

from agentd.api.client import ApiClient, ApiClientError


def one(client: ApiClient, what: str):
    verb, _, arg = what.partition(":")
    if verb == "agents":
        return client.agents()
    if verb == "toolcalls":
        return client.tool_calls(agent=arg)
    if verb == "events":
        return client.recent_events(agent=arg)
    if verb == "intent":
        return client.declare_intent(json.loads(arg))
    if verb == "register":
        return client.register_agent(name=arg)
    raise SystemExit(f"probe: unknown request {what!r}")


def main() -> None:
    client = ApiClient(os.environ["AGENTD_SOCKET"], timeout=10)
    for what in sys.argv[1:]:
        try:
            out = {"ok": one(client, what)}
        except ApiClientError as e:
            out = {"status": e.status, "code": e.code, "message": str(e)}
        print(json.dumps({"request": what, **out}, default=str), flush=True)


if __name__ == "__main__":
    main()
