"""Attacks on the root daemon by a local user (uid 65534) and by a non-root agent, performed
for real against the daemon as a process (issue 8, items 1-5 and 8). Each test fails on a
daemon without the defence it checks:

1. a non-root agent plants symlinks where root writes its result files;
2. a user with a delegated cgroup makes <it>/agents/victim/x, moves in, and asks for the
   victim's tool calls and declares intents for it;
3. a caller exits between its request's headers and its body and a root process is given
   its pid (through ns_last_pid) before the body arrives;
4. a user registers the name of another uid's ended agent, then reads its history;
5. a user reads the state directory (argv of every agent);
8. a second daemon is started on the same state directory.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agentd import procfs
from benchmarks.daemon_process import BIN, REPO, DaemonProcess, parse_lines
from tests.e2e import attacks

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the daemon, and setpriv to uid 65534")]

NOBODY = 65534
AGENTS = Path(__file__).parent / "agents"
AS_NOBODY = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", "--"]
SECRET = "s3cret-token-" + uuid.uuid4().hex[:8]


@pytest.fixture
def daemon():
    d = DaemonProcess(tracker="auto")
    try:
        d.start()
        os.chmod(d.socket, 0o666)  # every local user may connect (as with --socket-group users)
        yield d
    finally:
        d.cleanup()


def nobody_env(d: DaemonProcess) -> dict:
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "AGENTD_SOCKET": str(d.socket), "HOME": "/"}


def probe(d: DaemonProcess, *requests: str, preexec=None) -> list[dict]:
    """tests/e2e/agents/probe.py as uid 65534: one JSON answer per request."""
    out = subprocess.run([*AS_NOBODY, sys.executable, str(AGENTS / "probe.py"), *requests], env=nobody_env(d),
                         capture_output=True, text=True, timeout=60, preexec_fn=preexec)
    assert out.returncode == 0, out.stderr
    return parse_lines(out.stdout)


def wait_for(pred, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def agent_record(d: DaemonProcess, name: str) -> dict | None:
    return next((a for a in d.client.agents() if a["name"] == name), None)


def run_root_agent_with_secret(d: DaemonProcess, name: str, *, stay: bool) -> subprocess.Popen:
    """A root agent whose one tool call has a secret in its argv; it then sleeps or ends."""
    steps = [json.dumps(["sh", "-c", "true", SECRET])]
    proc = d.spawn_agent(name, AGENTS / "scripted.py", *steps)
    if stay:
        return proc
    proc.communicate(timeout=60)
    return proc


# --- 1. results ---------------------------------------------------------------------------

def test_an_agent_cannot_make_root_write_through_its_symlinks(daemon):
    secret_dir = daemon.dir / "root-only"
    secret_dir.mkdir(mode=0o700)
    target = secret_dir / "precious"
    target.write_text("root's data\n")
    os.chmod(target, 0o600)
    # tests/e2e/attacks.py: the same attack the VM runs against the shipped unit's daemon
    got = attacks.results_symlink(str(daemon.socket), "evil", str(target), str(target))
    assert got["run"]["rc"] == 0, got
    assert "pid" in got and not got.get("error"), got
    assert got["planted"] == [], got  # the agent cannot even create a name in its results folder
    assert target.read_text() == "root's data\n"  # root did not write through a link
    assert got["after"] == got["before"], got
    assert got["toolcall"]["state"] == "done", got
    assert got["regular"] and got["uid"] == NOBODY and got["mode"] == "0o400", got
    assert got["names_the_call"] and got["read_by_uid"], got  # the agent reads its own result
    assert got["folder"] == {"uid": 0, "mode": "0o755"}, got
    result = Path(got["path"])
    assert stat.S_IMODE(result.parent.parent.stat().st_mode) == 0o711
    # another uid cannot read it
    other = subprocess.run(["setpriv", "--reuid", "65533", "--regid", "65533", "--clear-groups", "--", "cat", str(result)],
                           capture_output=True, text=True)
    assert other.returncode != 0 and "Permission denied" in other.stderr


# --- 2. identity by cgroup id --------------------------------------------------------------


def _own_v2_path() -> str:
    with open("/proc/self/cgroup") as f:
        return next(line[3:].strip() for line in f if line.startswith("0::"))


@pytest.fixture
def delegated():
    """A cgroup under this test's own v2 cgroup, delegated to uid 65534 the way systemd
    delegates user@.service (tests/e2e/attacks.py)."""
    root = attacks.make_delegated(os.path.join(procfs.v2_mount(), _own_v2_path().lstrip("/")))
    try:
        yield root
    finally:
        attacks.remove_delegated(root)


def test_a_delegated_cgroup_named_like_an_agent_is_not_that_agent(daemon, delegated):
    # A root agent whose first tool call has a secret in its argv; it then sleeps (live).
    victim = daemon.spawn_agent("victim", AGENTS / "scripted.py", json.dumps(["sh", "-c", "true", SECRET]),
                                json.dumps(["sleep", "30"]))
    try:
        wait_for(lambda: len(daemon.toolcalls("victim")) == 2, what="the victim's tool calls")
        # The user makes <delegated>/agents/victim/x and moves itself in (it may: it owns
        # both ends), then calls the API from there.
        got = attacks.lookalike_cgroup(str(daemon.socket), delegated, "victim")
        assert got["rc"] == 0, got
        assert got["sat_in_lookalike"], got  # the attacker really sat in the look-alike cgroup
        assert got["toolcalls"].get("status") == 403, got
        assert got["events"].get("status") == 403, got
        assert got["intent"].get("status") == 403 and "not inside a managed agent" in got["intent"]["message"], got
        assert SECRET not in got["stdout"]
    finally:
        victim.kill()
        victim.communicate(timeout=10)


# --- 3. registration and pid reuse --------------------------------------------------------


def test_a_pid_that_changes_hands_during_registration_is_not_registered(daemon):
    got = attacks.pid_reuse_registration(str(daemon.socket), "stolen")
    if "skipped" in got:
        pytest.skip(got["skipped"])
    assert got["root_uid"] == 0, got
    assert got["status"] != 201, got  # on the old daemon: 201, root's sleep in agent "stolen"
    assert got["status"] in (403, 409) and ("peer_gone" in got["answer"] or "process_gone" in got["answer"]), got
    assert "/agents/" not in got["root_cgroup"], got
    assert agent_record(daemon, "stolen") is None


# --- 4. names have an owner ---------------------------------------------------------------


def test_an_ended_agents_name_and_history_stay_with_its_owner(daemon):
    proc = run_root_agent_with_secret(daemon, "shared", stay=False)
    assert proc.returncode == 0
    wait_for(lambda: (agent_record(daemon, "shared") or {}).get("state") == "done", what="agent shared to end")
    old_calls = daemon.toolcalls("shared")
    assert any(SECRET in c["argv"] for c in old_calls)
    # uid 65534 asks for the name, then for its history.
    r = subprocess.run([*AS_NOBODY, str(BIN / "agentctl"), "--socket", str(daemon.socket), "run", "--name", "shared",
                        "--", "true"], env=nobody_env(daemon), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "belongs to uid 0" in r.stderr, (r.returncode, r.stderr)
    toolcalls, events = probe(daemon, "toolcalls:shared", "events:shared")
    assert toolcalls.get("status") == 403 and events.get("status") == 403
    record = agent_record(daemon, "shared")
    assert record["uid"] == 0 and record["state"] == "done"  # not overwritten
    # The owner itself may run the name again; its earlier tool calls stay as they were.
    again = run_root_agent_with_secret(daemon, "shared", stay=False)
    assert again.returncode == 0
    calls = wait_for(lambda: (lambda cs: len(cs) > len(old_calls) and all(c["state"] == "done" for c in cs) and cs)(
        daemon.toolcalls("shared")), what="the second run's tool call")
    assert [c["id"] for c in calls][:len(old_calls)] == [c["id"] for c in old_calls]
    assert len({c["id"] for c in calls}) == len(calls)


# --- 5. the state directory ---------------------------------------------------------------


def test_the_state_is_roots_alone():
    d = DaemonProcess(tracker="auto")
    try:
        # Left by an older daemon under umask 022: a 0755 directory and a 0644 journal.
        d.state.mkdir(mode=0o755)
        os.chmod(d.state, 0o755)
        (d.state / "journal.jsonl").write_text("")
        os.chmod(d.state / "journal.jsonl", 0o644)
        d.start()
        os.chmod(d.socket, 0o666)
        run_root_agent_with_secret(d, "private", stay=False)
        got = attacks.read_state_as_nobody(str(d.state))
        assert got["dir"] == {"mode": "0o700", "uid": 0, "dir": True}, got
        for name in ("agentd.db", "agentd.db-wal", "journal.jsonl", "agentd.lock"):
            assert got["files"][name]["mode"] == "0o600" and got["files"][name]["uid"] == 0, (name, got)
        for name in ("agentd.db", "agentd.db-wal", "journal.jsonl"):
            f = got["files"][name]
            assert f["read_rc"] != 0 and f["denied"] and f["read_bytes"] == 0, (name, got)
        # The secret is there for root, so the reads above were refused, not empty (the journal
        # and the database are written in batches: wait for it)
        wait_for(lambda: any(SECRET.encode() in (d.state / name).read_bytes()
                             for name in ("journal.jsonl", "agentd.db-wal", "agentd.db") if (d.state / name).exists()),
                 timeout=30, what="the secret in the journal or the database")
    finally:
        d.cleanup()


def test_status_says_how_the_socket_state_and_results_are_protected(daemon):
    lines = " | ".join(daemon.client.status()["lines"])
    assert f"socket: {daemon.socket} (0660, group root: who may connect; callers known by SO_PEERCRED" in lines, lines
    assert f"state: {daemon.state} (0700, files 0600, locked by pid {daemon.proc.pid})" in lines, lines
    assert f"results: {daemon.dir / 'results'} (root's folders, each file 0400 to its agent's uid)" in lines, lines
    human = subprocess.run([str(BIN / "agentctl"), "--socket", str(daemon.socket), "status"], capture_output=True,
                           text=True, timeout=30).stdout
    assert "    socket: " in human and "    state: " in human and "capabilities: " in human, human


# --- 8. one daemon per state directory ----------------------------------------------------


def test_a_second_daemon_on_the_same_state_refuses_to_start(daemon):
    second = DaemonProcess(tracker="auto")
    second.state = daemon.state
    try:
        with pytest.raises(RuntimeError) as exc:
            second.start(timeout=20)
        line = str(exc.value)
        assert "exited with 1" in line and "another agentd" in line and str(daemon.state) in line, line
        errors = [l for l in second.log.read_text().splitlines() if l.strip()]
        assert len(errors) == 1, errors  # one clear line, no traceback
        # It stopped before touching anything: no cgroup root of its own, no socket.
        assert not second.driver().exists("")
        assert not second.socket.exists()
        assert daemon.client.status()["pid"] == daemon.proc.pid  # the first one still serves
    finally:
        second.state = second.dir / "state"  # its cleanup must not touch the first one's state
        second.cleanup()
