"""A hostile local user (run through setpriv as uid 65534): sends each payload named on the
command line to the daemon's API and prints the HTTP status of each answer as JSON.

Payloads are the ones that stalled or crashed the daemon before (issue 8 item 6): policies
nested 100,000 deep, a 5,000-digit integer, `.inf` sizes, a 100,000-value document, a
catastrophic regex, and JSON bodies nested 100,000 deep."""

import json
import socket
import sys

DEEP_FLOW = "[" * 100_000
DEEP_BLOCK = "version: 1\nname: x\nagents:\n" + "".join(" " * i + "- \n" for i in range(1, 600))
LONG_INT = "version: 1\nname: x\ntoolcalls:\n  defaults:\n    pids_max: " + "9" * 5000 + "\n"
INF = "version: 1\nname: x\nagent: {memory_max: .inf, cpu_max: .nan}\n"
MANY = "version: 1\nname: x\nagents: [" + ",".join(["1"] * 99_000) + "]\n"
REDOS = "version: 1\nname: x\ntoolcalls:\n  tools:\n    - name: t\n      match: {argv: '^(\\\\w+\\\\s?)+$'}\n"

POLICIES = {"deep_flow": DEEP_FLOW, "deep_block": DEEP_BLOCK, "long_int": LONG_INT, "inf": INF,
            "many": MANY, "redos": REDOS}


def request(path: str, method: str, url: str, body: bytes) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(120)
    sock.connect(path)
    head = (f"{method} {url} HTTP/1.1\r\nHost: agentd\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    sock.sendall(head + body)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return int(data.split(b" ", 2)[1])


def main() -> None:
    path, names = sys.argv[1], sys.argv[2:]
    out = []
    for name in names:
        if name in POLICIES:
            body = json.dumps({"filename": f"{name}.yaml", "text": POLICIES[name]}).encode()
            out.append((name, request(path, "POST", "/v1/policies/validate", body)))
        elif name == "deep_json":
            out.append((name, request(path, "POST", "/v1/policies/validate", b'{"a":' * 100_000)))
        elif name == "deep_json_intent":
            out.append((name, request(path, "POST", "/v1/intents", b"[" * 100_000)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
