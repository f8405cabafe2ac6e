"""The agentd API client: stdlib only (http.client over an AF_UNIX socket).

Used by agentctl and by agent frameworks:

    from agentd.api.client import declare_intent
    declare_intent(tool="pytest", memory="2G", cpu=2, duration_s=120)

Errors from the daemon raise ApiClientError(status, code, message, field); a missing or
refusing socket raises DaemonNotRunning.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import socket
import urllib.parse
from typing import Any, Iterator

from agentd.paths import DEFAULT_SOCKET as _DEFAULT_SOCKET
from agentd.units import format_size, parse_size

__all__ = ["ApiClient", "ApiClientError", "DaemonNotRunning", "declare_intent", "intent",
           "default_socket", "parse_size", "format_size"]

DEFAULT_SOCKET = str(_DEFAULT_SOCKET)  # a str for click's --socket default


def default_socket() -> str:
    return os.environ.get("AGENTD_SOCKET") or DEFAULT_SOCKET


class ApiClientError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 details: Any = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = details

    def to_json(self) -> dict:
        err: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.field:
            err["field"] = self.field
        if self.details is not None:
            err["details"] = self.details
        return {"error": err}

    def __str__(self) -> str:
        return f"{self.message} (field: {self.field})" if self.field else self.message


class DaemonNotRunning(ApiClientError):
    def __init__(self, socket_path: str):
        super().__init__(
            0, "daemon_not_running",
            f"agentd is not running (no socket at {socket_path}): "
            "start it with `systemctl start agentd`",
        )
        self.socket_path = socket_path


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def error_from_response(status: int, raw: bytes) -> ApiClientError:
    """An error reply ({"error": {code, message, field}}) to an ApiClientError."""
    try:
        err = json.loads(raw)["error"]
        return ApiClientError(status, str(err.get("code", "error")),
                              str(err.get("message", "")) or f"HTTP {status}",
                              err.get("field"), err.get("details"))
    except (ValueError, KeyError, TypeError):
        text = raw.decode("utf-8", "replace").strip()[:200]
        return ApiClientError(status, "bad_response",
                              f"agentd answered HTTP {status} without a JSON error: {text!r}")


class ApiClient:
    """One method per API route. Each call opens a connection (it is a local socket)."""

    def __init__(self, socket_path: str | os.PathLike | None = None, timeout: float = 30.0):
        self.socket_path = os.fspath(socket_path) if socket_path else default_socket()
        self.timeout = timeout

    # --- transport ---------------------------------------------------------------------

    def _open(self, method: str, path: str, body: Any = None,
              timeout: float | None = None) -> tuple[http.client.HTTPConnection,
                                                     http.client.HTTPResponse]:
        conn = _UnixConnection(self.socket_path, timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, path, body=data, headers=headers)
            return conn, conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError):
            conn.close()
            raise DaemonNotRunning(self.socket_path) from None
        except PermissionError:
            conn.close()
            raise ApiClientError(
                0, "socket_permission_denied",
                f"permission denied opening {self.socket_path}: run as root or as a member of "
                f"the socket's group (see `ls -l {self.socket_path}`)") from None
        except socket.timeout:
            conn.close()
            raise ApiClientError(0, "timeout", f"agentd did not answer within {timeout} s "
                                 f"on {self.socket_path}") from None
        except http.client.HTTPException as e:
            conn.close()
            raise ApiClientError(0, "bad_response",
                                 f"agentd answered something that is not HTTP: {e!r}") from None
        except OSError as e:
            conn.close()
            if e.errno in (errno.ENOTSOCK, errno.ECONNREFUSED, errno.ENOENT):
                raise DaemonNotRunning(self.socket_path) from None
            raise ApiClientError(0, "connection_failed",
                                 f"cannot talk to agentd on {self.socket_path}: {e}") from None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        conn, resp = self._open(method, path, body, self.timeout)
        try:
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise ApiClientError(0, "connection_failed",
                                 f"agentd closed the connection mid-answer: {e}") from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise error_from_response(resp.status, raw)
        ctype = resp.getheader("Content-Type", "")
        if "json" in ctype and "ndjson" not in ctype:
            return _loads(raw) if raw else None
        return raw.decode("utf-8", "replace")

    # --- routes ------------------------------------------------------------------------

    def status(self) -> dict:
        return self.request("GET", "/v1/status")

    def agents(self) -> list[dict]:
        return self.request("GET", "/v1/agents")["agents"]

    def agent(self, name: str) -> dict:
        return self.request("GET", f"/v1/agents/{_q(name)}")

    def register_agent(self, name: str | None = None, policy: str | None = None) -> dict:
        body = {k: v for k, v in (("name", name), ("policy", policy)) if v is not None}
        return self.request("POST", "/v1/agents", body)

    def tool_calls(self, agent: str | None = None, live: bool = False) -> list[dict]:
        query = _query(agent=agent, live="1" if live else None)
        return self.request("GET", f"/v1/toolcalls{query}")["tool_calls"]

    def tool_call(self, ident: str) -> dict:
        return self.request("GET", f"/v1/toolcalls/{_q(ident)}")

    def explain(self, ident: str) -> dict:
        return self.request("GET", f"/v1/toolcalls/{_q(ident)}/explain")

    def cancel(self, ident: str, reason: str | None = None) -> dict:
        body = {"reason": reason} if reason else {}
        return self.request("POST", f"/v1/toolcalls/{_q(ident)}/cancel", body)

    def declare_intent(self, intent: dict) -> dict:
        return self.request("POST", "/v1/intents", intent)

    def recent_events(self, agent: str | None = None, level: str | None = None,
                      limit: int | None = None) -> list[dict]:
        text = self.request("GET", "/v1/events" + _query(agent=agent, level=level, limit=limit))
        return [_loads(line) for line in text.splitlines() if line.strip()]

    def follow_events(self, agent: str | None = None, level: str | None = None,
                      limit: int | None = None) -> Iterator[dict]:
        """Events as they happen (blocks); each may carry "dropped": N events lost before it."""
        path = "/v1/events" + _query(agent=agent, level=level, follow="1", limit=limit)
        conn, resp = self._open("GET", path, None, self.timeout)
        try:
            if resp.status >= 400:
                raise error_from_response(resp.status, resp.read())
            conn.sock.settimeout(None)  # a quiet stream is not an error
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException):
                    return  # the daemon went away mid-stream (killed): the stream ends
                if not line:
                    return
                if line.strip():
                    yield _loads(line)
        finally:
            conn.close()

    def policies(self) -> list[dict]:
        return self.request("GET", "/v1/policies")["policies"]

    def policy(self, name: str) -> dict:
        return self.request("GET", f"/v1/policies/{_q(name)}")

    def policy_validate(self, text: str, filename: str) -> dict:
        return self.request("POST", "/v1/policies/validate", {"filename": filename, "text": text})

    def policy_apply(self, text: str, filename: str) -> dict:
        return self.request("POST", "/v1/policies/apply", {"filename": filename, "text": text})

    def policy_diff(self, text: str, filename: str) -> dict:
        return self.request("POST", "/v1/policies/diff", {"filename": filename, "text": text})

    def metrics(self) -> str:
        return self.request("GET", "/metrics")

    def kind_get(self, kind: str, command: str, **query: Any) -> Any:
        """GET /v1/<kind>/<command>: a policy kind's read (agentd.kinds.contract.Command)."""
        return self.request("GET", f"/v1/{_q(kind)}/{_q(command)}{_query(**query)}")

    def kind_post(self, kind: str, command: str, body: dict | None = None) -> Any:
        """POST /v1/<kind>/<command> with a JSON body."""
        return self.request("POST", f"/v1/{_q(kind)}/{_q(command)}", body or {})


def _loads(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        text = raw[:200] if isinstance(raw, str) else raw[:200].decode("utf-8", "replace")
        raise ApiClientError(0, "bad_response", f"agentd sent something that is not JSON: "
                             f"{text!r}") from None


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _query(**params: Any) -> str:
    items = {k: v for k, v in params.items() if v is not None and v != ""}
    return "?" + urllib.parse.urlencode(items) if items else ""


def declare_intent(tool: str | None = None, memory: str | int | None = None,
                   cpu: float | None = None, duration_s: float | None = None,
                   priority: str | int | None = None, pids: list[int] | None = None, *,
                   socket_path: str | None = None, strict: bool = False,
                   **extra: Any) -> dict | None:
    """Tell agentd what the next tool call of this agent will need.

    Returns what was granted (and what was clipped). With strict=False (the default) it
    returns None when agentd is not running, so frameworks can call it unconditionally.
    Memory accepts bytes or a size such as "512M"; it is sent as bytes.
    """
    body: dict[str, Any] = dict(extra)
    for key, value in (("tool", tool), ("cpu", cpu), ("duration_s", duration_s),
                       ("priority", priority), ("pids", pids)):
        if value is not None:
            body[key] = value
    if memory is not None:
        body["memory"] = parse_size(memory)
    try:
        return ApiClient(socket_path).declare_intent(body)
    except DaemonNotRunning:
        if strict:
            raise
        return None


intent = declare_intent
