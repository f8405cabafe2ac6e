"""The attacks of issue 8 as functions, shared by the host tests (tests/e2e/test_security.py,
test_hostile_input.py: the daemon as plain root) and the VM's systemd guest
(tests/vm/systemd_unit_guest.py: the daemon under the shipped unit). Each one performs the
attack for real against the socket it is given and returns what the attacker and root got,
as plain data; the callers assert.

Every command runs as `prefix + argv`: on the host the prefix is empty, in the VM it enters
systemd's pid and mount namespaces (nsenter). The guest runs them through this module's
command line, inside those namespaces:

    python -m tests.e2e.attacks toolcall|results-symlink|register-as|agents|flood|policies|streams|lookalike|pidreuse|state|second-daemon SOCKET [ARGS]

prints one JSON object.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from agentd.api.client import ApiClient, ApiClientError
from agentd.cgroups import fs

NOBODY = 65534
AGENTS = Path(__file__).parent / "agents"
REPO = Path(__file__).resolve().parents[2]
HOSTILE = AGENTS / "hostile_client.py"
FLOOD_PAYLOADS = ("deep_flow", "deep_block", "long_int", "inf", "many", "redos", "deep_json", "deep_json_intent")


def as_user(uid: int = NOBODY, gid: int = NOBODY) -> list[str]:
    """setpriv to an unprivileged uid, no supplementary groups (gid nogroup: the socket's
    group where the daemon runs with --socket-group nogroup)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]


def user_env(socket_path: str) -> dict:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "AGENTD_SOCKET": socket_path,
            "HOME": "/", "PYTHONDONTWRITEBYTECODE": "1"}


def parse_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --- 1. an agent's symlinks where root writes its result ------------------------------------

AGENTCTL = [sys.executable, "-m", "cli.agentctl"]  # this checkout's (user_env's PYTHONPATH)

# The agent's runtime (an unprivileged uid): a first tool call makes agentd create the results
# folder, a second plants links where root writes its result (.<pid>.json.tmp to $1, then
# <pid>.json to $2) and exits. On a daemon that chowned the folder to the agent, root then
# wrote the result through them.
PLANT_RESULT_LINKS = r"""
sh -c 'true'
i=0; while [ ! -d "$AGENTD_RESULTS_DIR" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
sh -c 'ln -s "$1" "$AGENTD_RESULTS_DIR/.$$.json.tmp" 2>/dev/null && echo planted-tmp
       ln -s "$2" "$AGENTD_RESULTS_DIR/$$.json" 2>/dev/null && echo planted-final
       echo "pid=$$"' tool "$1" "$2"
"""


def run_agent(socket_path: str, name: str, command: list[str], uid: int = NOBODY, timeout: float = 300) -> dict:
    """`uid` runs `agentctl --json run --name NAME -- COMMAND`; its exit status, output and
    the agent record agentctl printed (results_dir among it)."""
    r = subprocess.run([*as_user(uid), *AGENTCTL, "--json", "--socket", socket_path, "run", "--name", name, "--",
                        *command], env=user_env(socket_path), cwd="/", capture_output=True, text=True, timeout=timeout)
    agent = next((json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")), {})
    return {"rc": r.returncode, "stdout": r.stdout[-2000:], "stderr": r.stderr[-2000:], "agent": agent}


def await_result(socket_path: str, agent: str, results_dir: str, uid: int, match, timeout: float = 180) -> dict:
    """Wait for the agent's tool call that match(record) picks to be `done` and for its
    result file; then how the file is (owner, mode, a regular file) and what `uid` reads."""
    client = ApiClient(socket_path, timeout=60)
    deadline = time.monotonic() + timeout
    call = None
    while time.monotonic() < deadline:
        call = next((c for c in client.tool_calls(agent=agent) if match(c)), None)
        if call is not None and call["state"] == "done":
            break
        time.sleep(0.3)
    out: dict = {"toolcall": call and {k: call[k] for k in ("id", "pid", "argv", "state", "outcome", "exit_code")}}
    if call is None or call["state"] != "done":
        return {**out, "error": f"no tool call of {agent} done within {timeout:.0f}s"}
    path = os.path.join(results_dir, f"{call['pid']}.json")
    while time.monotonic() < deadline and not os.path.lexists(path):
        time.sleep(0.2)
    if not os.path.lexists(path):
        return {**out, "error": f"no result file {path} within {timeout:.0f}s"}
    st = os.lstat(path)
    folder = os.stat(results_dir)
    read = subprocess.run([*as_user(uid), "cat", path], capture_output=True, text=True)
    try:
        got = json.loads(read.stdout) if read.returncode == 0 else {}
    except ValueError:
        got = {}
    return {**out, "path": path, "regular": stat.S_ISREG(st.st_mode), "uid": st.st_uid, "mode": oct(stat.S_IMODE(st.st_mode)),
            "folder": {"uid": folder.st_uid, "mode": oct(stat.S_IMODE(folder.st_mode))},
            "read_by_uid": read.returncode == 0, "read_error": read.stderr[-300:],
            "names_the_call": got.get("tool_call") == call["id"]}


def tool_call_result(socket_path: str, name: str, uid: int = NOBODY) -> dict:
    """`uid`'s agent makes one tool call, `bash -c true`, and ends: is the call tracked,
    does it end, and does its result file reach that uid?"""
    ran = run_agent(socket_path, name, ["sh", "-c", "bash -c true; echo ran"], uid)
    if ran["rc"] != 0 or not ran["agent"].get("results_dir"):
        return {"run": ran, "error": "agentctl run failed"}
    got = await_result(socket_path, name, ran["agent"]["results_dir"], uid, lambda c: c["argv"] == ["bash", "-c", "true"])
    return {"run": {k: ran[k] for k in ("rc", "stdout")}, "results_dir": ran["agent"]["results_dir"], **got}


def file_facts(path: str) -> dict:
    st = os.lstat(path)
    with open(path, "rb") as f:
        data = f.read()
    return {"uid": st.st_uid, "mode": oct(stat.S_IMODE(st.st_mode)), "size": st.st_size,
            "sha256": hashlib.sha256(data).hexdigest(), "head": data[:16].decode("latin-1")}


def results_symlink(socket_path: str, name: str, tmp_target: str, final_target: str, uid: int = NOBODY) -> dict:
    """Item 1 for real: `uid`'s agent plants `.<pid>.json.tmp -> tmp_target` and
    `<pid>.json -> final_target` in its $AGENTD_RESULTS_DIR from a tool call that then exits.
    Returns the two targets before and after (as root sees them), what was planted, and the
    planting call's own result as `uid` reads it."""
    before = {t: file_facts(t) for t in (tmp_target, final_target)}
    ran = run_agent(socket_path, name, ["sh", "-c", PLANT_RESULT_LINKS, "agent", tmp_target, final_target], uid)
    planted = [w for w in ("planted-tmp", "planted-final") if w in ran["stdout"]]
    out = {"run": {k: ran[k] for k in ("rc", "stdout", "stderr")}, "planted": planted, "before": before}
    try:
        pid = int(ran["stdout"].split("pid=")[1].split()[0])
    except (IndexError, ValueError):
        return {**out, "error": "the planting tool call did not run"}
    got = await_result(socket_path, name, ran["agent"].get("results_dir", ""), uid, lambda c: c["pid"] == pid)
    return {**out, "pid": pid, "after": {t: file_facts(t) for t in (tmp_target, final_target)}, **got}


# --- 6. the validation flood -----------------------------------------------------------------


def validation_flood(socket_path: str, *, users: int = 16, payloads=FLOOD_PAYLOADS, timeout: float = 240) -> dict:
    """`users` concurrent uid 65534 clients each send every hostile payload (policies nested
    100,000 deep, a 5,000-digit integer, .inf, a catastrophic regex, JSON nested 100,000
    deep) while root polls GET /v1/status. Returns root's latencies and every answer's status."""
    root = ApiClient(socket_path, timeout=60)
    idle = []
    for _ in range(20):  # the same request with nobody flooding: what this machine gives
        t0 = time.monotonic()
        root.status()
        idle.append(time.monotonic() - t0)
    stop = threading.Event()
    latencies: list[float] = []

    def poll_status() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            root.status()
            latencies.append(time.monotonic() - t0)
            time.sleep(0.02)

    poller = threading.Thread(target=poll_status)
    poller.start()
    answers: list = []
    errors: list[str] = []
    try:
        # nice 19: what is measured is the daemon's event loop, not 16 interpreters starting
        # at once on a small machine
        procs = [subprocess.Popen([*as_user(), "nice", "-n", "19", sys.executable, str(HOSTILE), socket_path, *payloads],
                                  env=user_env(socket_path), cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(users)]
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                errors.append(err[-500:])
            else:
                answers.extend(json.loads(out))
        time.sleep(0.3)
    finally:
        stop.set()
        poller.join()
    statuses = [status for _, status in answers]
    return {"root_idle_max_s": round(max(idle), 3), "root_requests": len(latencies),
            "root_max_s": round(max(latencies), 3) if latencies else None,
            "statuses": statuses, "answers": answers, "expected": users * len(payloads),
            "counts": {str(s): statuses.count(s) for s in sorted(set(statuses))}, "client_errors": errors}


def hostile_policies() -> dict[str, str]:
    """tests/e2e/agents/hostile_client.py's POLICIES (that file runs alone as uid 65534)."""
    if str(AGENTS) not in sys.path:
        sys.path.insert(0, str(AGENTS))
    import hostile_client

    return hostile_client.POLICIES


def hostile_policy(name: str) -> str:
    return hostile_policies()[name]


def hostile_policies_as_root(socket_path: str) -> dict:
    """Root (not rate-limited) validates each hostile policy: {name: (valid, first problem's
    file and line, seconds)}; each must be a clean file:line problem, answered in well under
    a second."""
    root = ApiClient(socket_path, timeout=60)
    out = {}
    for name, text in hostile_policies().items():
        t0 = time.monotonic()
        try:
            res = root.policy_validate(text, f"{name}.yaml")
        except ApiClientError as e:  # e.g. the parse worker's time limit: a 4xx, never a 500
            out[name] = {"status": e.status, "code": e.code, "message": str(e), "seconds": round(time.monotonic() - t0, 3)}
            continue
        first = (res.get("problems") or [{}])[0]
        out[name] = {"valid": res["valid"], "file": first.get("file"), "line": first.get("line"),
                     "seconds": round(time.monotonic() - t0, 3)}
    return out


# --- 9. the stream-hogging user --------------------------------------------------------------

# One process per user holds all of that user's streams: 77 interpreters would cost minutes
# under the VM's emulation.
_STREAMS = ("import socket, sys, time\n"
            "held = []\n"
            "for _ in range(int(sys.argv[2])):\n"
            "    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "    s.sendall(b'GET /v1/events?follow=1 HTTP/1.1\\r\\nHost: agentd\\r\\n\\r\\n')\n"
            "    print(s.recv(4096).split(b' ')[1].decode(), flush=True)\n"
            "    held.append(s)\n"
            "print('held', flush=True)\n"
            "time.sleep(float(sys.argv[3]))\n")


def open_streams(socket_path: str, uid: int, count: int, hold_s: float = 120) -> tuple[subprocess.Popen, list[str]]:
    """`count` follow streams opened one after the other and held by one process of `uid`
    (0: root). Returns it and the HTTP status of each stream."""
    argv = [sys.executable, "-c", _STREAMS, socket_path, str(count), str(hold_s)]
    proc = subprocess.Popen(argv if uid == 0 else [*as_user(uid), *argv], env=user_env(socket_path), cwd="/",
                            stdout=subprocess.PIPE, text=True)
    statuses = []
    for line in proc.stdout:
        if line.strip() == "held":
            break
        statuses.append(line.strip())
    return proc, statuses


def hog_streams(socket_path: str, hold_s: float = 120, then=None) -> dict:
    """uid 65534 asks for 12 streams, then eight more users for 8 each; then root asks for
    one. Returns the HTTP status each got, and what then() returned, called while every
    stream is still held. All streams are closed before it returns."""
    procs: list[subprocess.Popen] = []
    try:
        proc, nobody = open_streams(socket_path, NOBODY, 12, hold_s)
        procs.append(proc)
        others = []
        for uid in range(60000, 60008):
            proc, got = open_streams(socket_path, uid, 8, hold_s)
            procs.append(proc)
            others += got
        proc, root = open_streams(socket_path, 0, 1, hold_s)
        procs.append(proc)
        extra = then() if then is not None else None
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return {"nobody": nobody, "other_users": others, "root": root[0] if root else None, "then": extra}


# --- 2. passing for another agent through a look-alike cgroup ------------------------------


def make_delegated(parent: str) -> str:
    """A cgroup under `parent` delegated to uid 65534 the way systemd delegates
    user@.service (the directory and its cgroup.procs/subtree_control/threads), with a
    start/ leaf for the user's processes. Remove it with remove_delegated()."""
    root = os.path.join(parent, f"deleg-{uuid.uuid4().hex[:8]}")
    os.mkdir(root)
    start = os.path.join(root, "start")
    os.mkdir(start)
    for d in (root, start):
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            os.chown(os.path.join(d, name), NOBODY, NOBODY)
    return root


def remove_delegated(root: str) -> None:
    for _ in range(50):
        pids = fs.subtree_pids(root) if os.path.isdir(root) else []
        if not pids:
            break
        fs.signal_pids(pids, 9)
        time.sleep(0.05)
    if os.path.isdir(root):
        fs.rmdir_tree(root)


def lookalike_cgroup(socket_path: str, delegated: str, victim: str) -> dict:
    """uid 65534, placed (by root, as systemd places a session) in its delegated cgroup,
    makes <delegated>/agents/<victim>/x, moves itself in, and from there asks for the
    victim's tool calls and events and declares an intent (1 ms) for the victim's next call."""
    fake = os.path.join(delegated, "agents", victim, "x")

    def into_delegated_cgroup() -> None:
        with open(os.path.join(delegated, "start", "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    shell = (f'mkdir -p {fake} && echo $$ > {fake}/cgroup.procs && grep ^0:: /proc/self/cgroup >&2 && '
             f'exec {sys.executable} {AGENTS / "probe.py"} toolcalls:{victim} events:{victim} '
             '\'intent:{"duration_s": 0.001, "tool": "sleep"}\'')
    out = subprocess.run([*as_user(), "sh", "-c", shell], env=user_env(socket_path), capture_output=True, text=True,
                         timeout=120, preexec_fn=into_delegated_cgroup)
    answers = parse_lines(out.stdout) if out.returncode == 0 else []
    keys = ("toolcalls", "events", "intent")
    return {"rc": out.returncode, "cgroup": out.stderr.strip(), "sat_in_lookalike": f"/agents/{victim}/x" in out.stderr,
            **dict(zip(keys, answers)), "stdout": out.stdout}


def register_as(socket_path: str, name: str, uid: int) -> dict:
    """`uid` registers an agent named `name` (tests/e2e/agents/probe.py register:<name>)."""
    argv = [sys.executable, str(AGENTS / "probe.py"), f"register:{name}"]
    out = subprocess.run(argv if uid == 0 else [*as_user(uid), *argv], env=user_env(socket_path), cwd="/",
                         capture_output=True, text=True, timeout=120)
    return (parse_lines(out.stdout) or [{"rc": out.returncode, "stderr": out.stderr[-1000:]}])[0]


# --- 3. registration while the caller's pid changes hands ----------------------------------


def reuse_pid(pid: int, argv: list[str], tries: int = 300) -> subprocess.Popen | None:
    """Start argv (as root) with exactly `pid`, through ns_last_pid: what a user gets by
    cycling through pids, in milliseconds. None when other processes keep taking it."""
    for _ in range(tries):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        p = subprocess.Popen(argv)
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    return None


def pid_reuse_registration(socket_path: str, name: str = "stolen") -> dict:
    """uid 65534 sends POST /v1/agents but for the body's last byte and exits; a root
    process is given its pid (ns_last_pid); then the last byte arrives from a child that
    kept the connection. Returns the answer, and where root's process ended up."""
    body = json.dumps({"name": name}).encode()
    head = (f"POST /v1/agents HTTP/1.1\r\nHost: agentd\r\nContent-Type: application/json\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    caller = os.fork()
    if caller == 0:  # the caller: uid 65534, sends the headers and all but the body's last byte
        try:
            os.close(go_w)
            os.close(res_r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(socket_path)
            s.sendall(head + body[:-1])
            time.sleep(0.5)  # the daemon has read the headers and checked this process
            if os.fork() == 0:  # a child keeps the connection; the caller itself exits
                os.read(go_r, 1)
                s.sendall(body[-1:])
                s.settimeout(60)
                answer = b""
                while chunk := s.recv(65536):  # Connection: close: the answer ends at EOF
                    answer += chunk
                os.write(res_w, answer)
        except BaseException as e:  # noqa: BLE001 - reported through the pipe
            os.write(res_w, repr(e).encode())
        os._exit(0)
    os.close(go_r)
    os.close(res_w)
    os.waitpid(caller, 0)  # the caller exited and is reaped: its pid is free
    root_proc = reuse_pid(caller, ["sleep", "120"])
    try:
        os.write(go_w, b"x")  # now the body's last byte arrives
        with os.fdopen(res_r, "rb") as f:
            answer = f.read().decode(errors="replace")
        if root_proc is None:
            return {"skipped": f"could not get pid {caller} back for a root process (a busy host took it)"}
        status = int(answer.split()[1]) if answer.startswith("HTTP/1.1 ") else None
        with open(f"/proc/{root_proc.pid}/cgroup") as f:
            cgroup = next((line[3:].strip() for line in f if line.startswith("0::")), "")
        return {"pid": caller, "root_uid": os.stat(f"/proc/{root_proc.pid}").st_uid, "status": status,
                "answer": answer[-1500:], "root_cgroup": cgroup}
    finally:
        if root_proc is not None:
            root_proc.kill()
            root_proc.wait()
        os.close(go_w)


# --- 5. the state directory ------------------------------------------------------------------


def read_state_as_nobody(state_dir: str, names=("agentd.db", "agentd.db-wal", "journal.jsonl")) -> dict:
    """The mode and owner of the state directory and of each file in it, and what uid 65534
    gets when it reads each of `names` (every agent's argv is in them)."""
    out = {"dir": _mode(state_dir), "files": {}}
    for entry in sorted(os.listdir(state_dir)):
        out["files"][entry] = _mode(os.path.join(state_dir, entry))
    for name in names:
        r = subprocess.run([*as_user(), "cat", os.path.join(state_dir, name)], capture_output=True)
        out["files"].setdefault(name, {}).update(read_rc=r.returncode, read_bytes=len(r.stdout),
                                                 denied=b"Permission denied" in r.stderr)
    return out


def _mode(path: str) -> dict:
    st = os.lstat(path)
    return {"mode": oct(st.st_mode & 0o7777), "uid": st.st_uid, "dir": os.path.isdir(path)}


# --- 8. a second daemon on the same state directory -----------------------------------------


def second_daemon(argv: list[str], timeout: float = 120) -> dict:
    """Start another daemon (argv: its full command line) and see how it ends."""
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    return {"rc": r.returncode, "lines": lines[-20:], "seconds": round(time.monotonic() - t0, 2)}


def _victim_then(socket_path: str, attack) -> dict:
    """A root process registers agent `victim-<id>` and stays (it never execs: a live agent
    is all the attack needs), the attack runs against it, then it is killed."""
    name = f"victim-{uuid.uuid4().hex[:6]}"
    code = ("import sys, time\nfrom agentd.api.client import ApiClient\n"
            "ApiClient(sys.argv[1]).register_agent(name=sys.argv[2])\nprint('registered', flush=True)\ntime.sleep(300)\n")
    victim = subprocess.Popen([sys.executable, "-c", code, socket_path, name], env=user_env(socket_path), cwd="/",
                              stdout=subprocess.PIPE, text=True)
    try:
        ready = victim.stdout.readline().strip()
        return {"victim": name, "victim_registered": ready == "registered", **attack(name)}
    finally:
        victim.kill()
        victim.wait()


def main(argv: list[str]) -> int:
    what, socket_path, *rest = argv
    if what == "toolcall":  # rest: the agent's name
        out = tool_call_result(socket_path, rest[0])
    elif what == "results-symlink":  # rest: the agent's name, the targets of .<pid>.json.tmp and <pid>.json
        out = results_symlink(socket_path, *rest)
    elif what == "register-as":  # rest: the name, the uid asking for it
        out = register_as(socket_path, rest[0], int(rest[1]))
    elif what == "agents":  # root's view of every agent record
        out = ApiClient(socket_path).agents()
    elif what == "flood":  # rest: how many concurrent clients (16 when not given)
        out = validation_flood(socket_path, users=int(rest[0]) if rest else 16)
    elif what == "policies":
        out = hostile_policies_as_root(socket_path)
    elif what == "streams":
        out = hog_streams(socket_path)
    elif what == "lookalike":  # rest: the parent cgroup directory of the delegated one
        delegated = make_delegated(rest[0])
        try:
            out = _victim_then(socket_path, lambda v: {"lookalike": lookalike_cgroup(socket_path, delegated, v),
                                                       "register_same_name": register_as(socket_path, v, NOBODY)})
        finally:
            remove_delegated(delegated)
    elif what == "pidreuse":
        out = pid_reuse_registration(socket_path, f"stolen-{uuid.uuid4().hex[:6]}")
        out["agents"] = [a["name"] for a in ApiClient(socket_path).agents()]
    elif what == "state":  # rest: the state directory
        out = read_state_as_nobody(rest[0])
    elif what == "second-daemon":  # rest: the second daemon's command line
        out = second_daemon(rest)
    else:
        raise SystemExit(f"unknown attack {what!r}")
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
