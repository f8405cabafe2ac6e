"""The policy kinds' routes: METHOD /v1/<kind>/<command> for every Command a kind declares
(agentd.kinds.contract), authorized by its Access before the handler runs. POST bodies are
checked against the command's schema; GET takes only the query keys the schema names."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from aiohttp import web

from agentd.api.contract import ApiError
from agentd.api.validation import check_body, check_query
from agentd.kinds.access import decide_access
from agentd.kinds.contract import Command

log = logging.getLogger("agentd.api")


def add_kind_routes(router: web.UrlDispatcher, commands: list[tuple[str, Command]], *,
                    caller_of: Callable[[web.Request], Any], read_body: Callable, respond: Callable,
                    admin_group: str | None) -> None:
    for kind, cmd in commands:
        handler = _handler(kind, cmd, caller_of, read_body, respond, admin_group)
        path = f"/v1/{kind}/{cmd.name}"
        if cmd.method == "GET":
            router.add_get(path, handler)
        else:
            router.add_post(path, handler)


def _handler(kind: str, cmd: Command, caller_of, read_body, respond, admin_group):
    async def handle(request: web.Request) -> web.Response:
        caller = caller_of(request)
        decision = decide_access(cmd.access, caller, admin_group)
        if not decision.allowed:
            log.info("Refused %s %s to %s: %s.", kind, cmd.name, caller.describe(), decision.reason)
            raise ApiError(403, "forbidden", decision.reason)
        if cmd.method == "GET":
            query = dict(request.query)
            check_query(query, set(cmd.body or ()))
            args = check_body(query, cmd.body) if cmd.body else {}
        else:
            args = await read_body(request, cmd.body)
        result = cmd.handler(caller, args)
        if asyncio.iscoroutine(result):
            result = await result
        return respond(result)

    handle.__name__ = f"h_{kind}_{cmd.name}"
    return handle

