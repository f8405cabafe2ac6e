"""The control plane: HTTP/JSON over a Unix socket, authorized by peer credentials.

    contract.py    what the server needs from the daemon (Controller), ApiError, Peer
    server.py      aiohttp app on the socket: start_api(controller, path, ...) -> ApiServer
    auth.py        who may do what (root/admin group, managed agent, other local users)
    validation.py  names, strict JSON bodies, query parameters
    limits.py      body size, per-uid token buckets, streams
    client.py      stdlib client (ApiClient, declare_intent) used by agentctl and agents

Routes (JSON; errors are {"error": {"code", "message", "field"?, "details"?}}):

    GET  /v1/status                       admin
    GET  /v1/agents                       anyone (each sees what it may: admin all, an
                                          agent itself, a user the agents it owns)
    POST /v1/agents {name?, policy?}      admin or user: registers the CALLER's pid,
                                          owned by the caller's uid (201)
    GET  /v1/agents/{name}                admin, the agent itself, its owner
    GET  /v1/toolcalls?agent=&live=       as /v1/agents
    GET  /v1/toolcalls/{id}               admin, its agent, its owner (id "<agent>/<seq>-<tool>",
    GET  /v1/toolcalls/{id}/explain         with the "/" sent as %2F)
    POST /v1/toolcalls/{id}/cancel {reason?}   admin, owner
    POST /v1/intents {tool?, memory?, cpu?, duration_s?, priority?, pids?}
                                          a managed agent; the agent comes from its pid
    GET  /v1/events?agent=&level=&follow=&limit=   NDJSON; follow=1 streams; an event may
                                          carry "dropped": N (events lost before it)
    GET  /v1/policies, /v1/policies/{name}             admin
    POST /v1/policies/validate {filename, text}        anyone (changes nothing)
    POST /v1/policies/apply    {filename, text}        admin
    POST /v1/policies/diff     {filename, text}        admin
    GET  /metrics                         admin; Prometheus text (also on an optional TCP
                                          listener that serves nothing else)

Status codes: 400 bad input, 403 refused (with the reason; "peer_gone" when the process
that opened the connection has exited; "quota_exceeded" when a non-admin uid registering an
agent or admitting a job already holds the most it may), 404 unknown, 405, 409 conflict, 413 body too large,
429 rate limited (Retry-After; one bucket per managed agent, one per uid outside agents),
500, 503 too many streams or too many connections of one uid. Malformed HTTP gets aiohttp's
plain 400 and is counted (status "api.bad_http").
"""
