"""agentctl: offline commands with click's CliRunner, online ones against the real daemon
in-process (tests.daemon_thread: its own command set, journal, cgroups and cn_proc tracker
behind the real socket), and `run` as a real process. Agents are real processes started by
`agentctl run`; their tool calls are real children the tracker placed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentd import __version__
from agentd.api.client import ApiClient
from cli.agentctl import main, render_unit
from tests.daemon_thread import DaemonThread, test_config, tmp, wait_for  # noqa: F401 - tmp is a fixture

REPO = Path(__file__).resolve().parents[2]


def invoke(*args, **kw):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, **kw)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs root (cgroups, cn_proc)")


@pytest.fixture
def srv(tmp):
    """The real daemon, its socket reachable by uid 65534, a policy directory to apply into."""
    if os.geteuid() != 0:
        pytest.skip("the daemon needs root (cgroups, cn_proc)")
    d, leaf = tmp
    with DaemonThread(test_config(d, leaf, policy_dir=Path(d, "policies.d"))) as dt:
        yield dt


@pytest.fixture
def a1(srv) -> str:
    """Agent a1 (root's) with one live tool call, `sleep 300`: its id."""
    srv.start_agent("a1")
    return srv.live_tool_call("a1")


def cli(srv, *args):
    return invoke("--socket", srv.socket_path, *args)


# --- offline ---------------------------------------------------------------------------------


@pytest.fixture
def stub_loader(monkeypatch):
    """A loader whose verdict the test picks: it tests the CLI's mapping, not the schema."""
    from agentd.policy.problems import Problem

    def validate_file(path):
        text = Path(path).read_text()
        if "bad" in text:
            return [Problem(str(path), 3, "tools[0].memory.max", "expected a size such as 512M, "
                            "got 'lots'")]
        return []

    mod = types.ModuleType("agentd.policy.loader")
    mod.validate_file = validate_file
    monkeypatch.setitem(sys.modules, "agentd.policy.loader", mod)


def test_policy_validate_exit_codes_and_problem_lines(tmp_path, stub_loader):
    good = tmp_path / "good.yaml"
    good.write_text("ok: 1\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("bad: 1\n")
    r = invoke("policy", "validate", str(good))
    assert r.exit_code == 0 and r.output == f"{good}: valid\n"
    r = invoke("policy", "validate", str(good), str(bad))
    assert r.exit_code == 1
    assert f"{bad}:3: tools[0].memory.max: expected a size such as 512M, got 'lots'" in r.output
    r = invoke("--json", "policy", "validate", str(bad))
    doc = json.loads(r.output)
    assert r.exit_code == 1 and doc["valid"] is False
    assert doc["files"][0]["problems"][0]["line"] == 3


def test_policy_validate_works_without_a_daemon(tmp_path, stub_loader):
    good = tmp_path / "good.yaml"
    good.write_text("ok: 1\n")
    r = invoke("--socket", str(tmp_path / "none.sock"), "policy", "validate", "-q", str(good))
    assert r.exit_code == 0 and r.output == ""


def test_policy_validate_with_the_real_loader(tmp_path):
    loader = pytest.importorskip("agentd.policy.loader")
    default = REPO / "policies" / "default.yaml"
    if not default.exists():
        pytest.skip("policies/default.yaml is not there yet")
    assert invoke("policy", "validate", str(default)).exit_code == 0
    broken = tmp_path / "broken.yaml"
    broken.write_text("tool_calls:\n  no_such_key: 1\n")
    problems = loader.validate_file(broken)
    r = invoke("policy", "validate", str(broken))
    assert r.exit_code == 1 and problems
    assert str(problems[0]) in r.output


@pytest.mark.parametrize("args", [
    ["policy", "validate"],  # no file
    ["policy", "validate", "/no/such/file.yaml"],
    ["no-such-command"],
    ["intent"],  # nothing declared
    ["intent", "--memory", "lots"],
    ["intent", "--priority", "urgent"],
    ["events", "--level", "loud"],
    ["run"],  # no command
    ["top", "--interval", "0"],
])
def test_usage_errors_exit_2(args, tmp_path):
    r = invoke("--socket", str(tmp_path / "none.sock"), *args)
    assert r.exit_code == 2, r.output


def test_daemon_not_running_is_said_clearly_with_exit_1(tmp_path):
    path = tmp_path / "agentd.sock"
    for args in (["status"], ["events"], ["top", "--once"], ["policy", "list"]):
        r = invoke("--socket", str(path), *args)
        assert r.exit_code == 1
        assert (f"agentd is not running (no socket at {path}): start it with "
                "`systemctl start agentd`") in r.output
    r = invoke("--socket", str(path), "--json", "status")
    assert r.exit_code == 1 and json.loads(r.output)["error"]["code"] == "daemon_not_running"


def test_socket_from_the_environment(tmp_path):
    r = invoke("status", env={"AGENTD_SOCKET": str(tmp_path / "env.sock")})
    assert r.exit_code == 1 and str(tmp_path / "env.sock") in r.output


def test_schema_prints_the_policy_json_schema():
    pytest.importorskip("agentd.policy.schema")
    r = invoke("schema")
    assert r.exit_code == 0
    doc = json.loads(r.output)
    assert isinstance(doc, dict) and ("properties" in doc or "$schema" in doc)


def test_completion_script_uses_click_completion():
    r = invoke("completion", "bash")
    assert r.exit_code == 0 and "_AGENTCTL_COMPLETE=bash_complete" in r.output
    assert "_AGENTCTL_COMPLETE=bash_source agentctl" in invoke("--help").output


def test_completion_completes_commands():
    env = {"_AGENTCTL_COMPLETE": "bash_complete", "COMP_WORDS": "agentctl pol", "COMP_CWORD": "1"}
    r = subprocess.run([sys.executable, "-m", "cli.agentctl"], env={**os.environ, **env},
                       capture_output=True, text=True, cwd=REPO)
    assert "plain,policy" in r.stdout


def test_install_service_rewrites_exec_start_and_says_how_to_start(tmp_path):
    r = invoke("install-service", "--unit-dir", str(tmp_path), "--exec", "/usr/local/bin/agentd")
    assert r.exit_code == 0, r.output
    unit = (tmp_path / "agentd.service").read_text()
    tree_root = "/system.slice/agentd-tree.service"
    assert [line for line in unit.splitlines() if line.startswith("ExecStart=")] == [
        f"ExecStart=/usr/local/bin/agentd run --cgroup-root {tree_root}"]
    # both units, the tree as shipped: agentd runs in agentd.service, its agents in the tree
    tree = (tmp_path / "agentd-tree.service").read_text()
    assert tree == (REPO / "systemd" / "agentd-tree.service").read_text()
    assert "Requires=agentd-tree.service" in unit and "Delegate=yes" in tree
    for name in ("agentd.service", "agentd-tree.service"):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == "0o644"
    if not Path("/run/systemd/system").is_dir():
        assert "systemctl daemon-reload && systemctl enable --now agentd" in r.output
    r = invoke("--json", "install-service", "--unit-dir", str(tmp_path), "--exec", "/x/agentd")
    doc = json.loads(r.output)
    assert doc["exec"] == "/x/agentd" and doc["tree_unit"] == str(tmp_path / "agentd-tree.service")
    assert doc["exec_start"] == f"/x/agentd run --cgroup-root {tree_root}"


def test_render_unit_touches_only_exec_start():
    src = "[Service]\nExecStart=/old/agentd run --cgroup-root /a.service\nExecReload=/bin/kill -HUP $MAINPID\n"
    assert render_unit(src, "/new/agentd") == (
        "[Service]\nExecStart=/new/agentd run --cgroup-root /a.service\nExecReload=/bin/kill -HUP $MAINPID\n")


# --- online ----------------------------------------------------------------------------------


def test_status_json_is_one_document(srv):
    r = cli(srv, "status", "--json")
    assert r.exit_code == 0
    doc = json.loads(r.output)
    assert doc["tracker"]["backend"] == "cn_proc" and doc["api"]["socket"] == srv.socket_path
    assert json.loads(cli(srv, "--json", "status").output)["version"] == __version__


def test_status_human(srv):
    r = cli(srv, "status")
    assert r.exit_code == 0
    assert f"agentd {__version__} - active" in r.output and f"socket {srv.socket_path}" in r.output
    assert "tracker:\n  backend: cn_proc" in r.output and "policies: default" in r.output


def test_status_human_says_what_each_kept_capability_is_for():
    from agentd.core.capabilities import REASONS, summary
    from cli.agentctl import status_summary

    unit = summary(sum(1 << bit for bit, _ in REASONS.values()))  # exactly the unit's set
    text = status_summary({"pid": 1, "capabilities": unit, "lines": [unit["line"]]})
    assert "capabilities: CAP_BPF, CAP_PERFMON" in text
    for name, (_, why) in REASONS.items():
        assert f"      {name}: {why}" in text
    root = summary((1 << 41) - 1)  # plain root: one line, no list
    assert "CAP_SYS_ADMIN:" not in status_summary({"capabilities": root, "lines": [root["line"]]})


def test_events_human_and_ndjson(srv, a1):
    srv.emit("toolcall.killed", f"Tool call {a1} killed at 4G.", agent="a1", tool_call=a1,
             level="error", memory_max=4 << 30)
    r = cli(srv, "events")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert any("agent.registered" in line and "a1" in line for line in lines[:-1])  # the daemon's own
    assert "ERROR" in lines[-1] and a1 in lines[-1] and "a1/a1/" not in lines[-1]
    assert f"Tool call {a1} killed at 4G." in lines[-1] and "memory_max=4G" in lines[-1]
    r = cli(srv, "events", "--json", "--level", "error")
    docs = [json.loads(line) for line in r.output.splitlines()]
    assert [d["kind"] for d in docs] == ["toolcall.killed"]


def test_events_follow_prints_as_events_arrive(srv):
    # a separate process, since following blocks; stopped once it printed what we want
    env = {**os.environ, "AGENTD_SOCKET": srv.socket_path, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cli.agentctl", "events", "-f", "--json",
                             "--level", "warn"], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env=env)
    watchdog = threading.Timer(30, proc.kill)  # a missed event fails the test, never hangs it
    watchdog.start()
    try:
        wait_for(lambda: srv.subscribers() == 1, "event stream")
        srv.emit("toolcall.start", "quiet", agent="a1")
        srv.emit("toolcall.throttled", "loud", agent="a1", level="warn")
        line = proc.stdout.readline()
        assert json.loads(line)["message"] == "loud"
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(10)


def test_top_once_and_json(srv, a1):
    srv.start_agent("a2")
    r = cli(srv, "top", "--once")
    assert r.exit_code == 0
    assert "AGENTS" in r.output and "LIVE TOOL CALLS" in r.output and a1 in r.output
    assert "\x1b[" not in r.output  # --once never redraws
    doc = json.loads(cli(srv, "--json", "top", "--once").output)
    assert [a["name"] for a in doc["agents"]] == ["a1", "a2"]
    assert a1 in [t["id"] for t in doc["tool_calls"]]


def test_explain_cancel_and_policies(srv, a1, tmp_path):
    r = cli(srv, "explain", a1)
    assert r.exit_code == 0, r.output
    assert "decision(s):" in r.output and "toolcall.start" in r.output and "memory_max=512M" in r.output
    r = cli(srv, "cancel", a1, "--reason", "stuck")
    assert r.exit_code == 0 and "killing" in r.output
    client = ApiClient(srv.socket_path)
    wait_for(lambda: client.tool_call(a1)["state"] == "done", "end of the cancelled tool call")
    assert "stuck" in client.tool_call(a1)["reason"]
    assert "default" in cli(srv, "policy", "list").output
    f = tmp_path / "gpu.yaml"
    f.write_text("version: 1\nname: gpu\ntoolcalls:\n  defaults: {pids_max: 64}\n")
    r = cli(srv, "policy", "diff", str(f))
    assert r.exit_code == 0 and "+toolcalls:" in r.output, r.output
    assert cli(srv, "policy", "apply", str(f)).exit_code == 0
    assert cli(srv, "policy", "get", "gpu").output == f.read_text()
    f.write_text("version: 1\nname: gpu\ntoolcalls:\n  defaults: {pids_max: many}\n")
    r = cli(srv, "policy", "apply", str(f))
    assert r.exit_code == 1 and "gpu.yaml:4: toolcalls.defaults.pids_max:" in r.output, r.output
    assert "{pids_max: 64}" in cli(srv, "policy", "get", "gpu").output  # nothing changed


def test_unknown_tool_call_is_exit_1_with_the_message(srv):
    r = cli(srv, "explain", "a1/0001-nope")
    assert r.exit_code == 1 and "no tool call 'a1/0001-nope'" in r.output


def as_nobody(args):
    """agentctl ARGS in a forked child running as uid/gid 65534: (exit code, output)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            res = CliRunner().invoke(main, args)
            out = json.dumps([res.exit_code, res.output])
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out = json.dumps([-1, repr(e)])
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        code, output = json.loads(fh.read())
    os.waitpid(pid, 0)
    return code, output


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to uid 65534")
def test_permission_denied_is_said_clearly(srv):
    os.chmod(srv.socket_path, 0o666)
    f = Path(srv.socket_path).parent / "p.yaml"  # in the 0755 socket dir: nobody can read it
    f.write_text("tools: {}\n")
    os.chmod(f, 0o644)
    code, output = as_nobody(["--socket", srv.socket_path, "policy", "apply", str(f)])
    assert code == 1
    assert output.startswith("agentctl: permission denied: policy.apply is reserved to root")


def _agentctl(*args, **kw):
    return subprocess.run([sys.executable, "-m", "cli.agentctl", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60, **kw)


def test_run_registers_its_own_pid_then_becomes_the_command(srv):
    r = _agentctl("--socket", srv.socket_path, "run", "--name", "coder", "--",
                  "sh", "-c", 'echo "$$ $AGENTD_AGENT"')
    assert r.returncode == 0, r.stderr
    pid, agent = r.stdout.split()
    assert agent == "coder"
    [coder] = [a for a in ApiClient(srv.socket_path).agents() if a["name"] == "coder"]
    assert (coder["main_pid"], coder["uid"]) == (int(pid), os.getuid())
    assert "running sh as agent coder" in r.stderr


def test_run_passes_the_command_exit_status_and_flags_through(srv):
    r = _agentctl("--socket", srv.socket_path, "run", "--", "sh", "-c", "exit 7", "--not-ours")
    assert r.returncode == 7


def test_run_without_daemon_says_so_and_exits_1(tmp_path):
    r = _agentctl("--socket", str(tmp_path / "none.sock"), "run", "--", "true")
    assert r.returncode == 1 and "agentd is not running" in r.stderr


def test_run_of_a_missing_command_is_127(srv):
    r = _agentctl("--socket", srv.socket_path, "run", "--", "/no/such/program")
    assert r.returncode == 127 and "command not found" in r.stderr


def test_intent_from_inside_an_agent_prints_granted_and_clipped(srv):
    inner = [sys.executable, "-m", "cli.agentctl", "intent", "--tool", "pytest",
             "--memory", "8G", "--cpu", "2", "--duration", "2m", "--pids", "64"]
    r = _agentctl("--socket", srv.socket_path, "run", "--name", "ag", "--", *inner)
    assert r.returncode == 0, r.stderr
    # the default policy's ceiling: memory_high 2G, memory_max 4G; duration x2 is the timeout
    assert "granted: memory_high 2G, memory_max 4G, swap_max 0, cpu_weight 100, cpu_max 2, pids_max 64, timeout_s 240\n" in r.stdout
    assert "clipped: memory_high asked 8G, granted 2G\n" in r.stdout
    [clipped] = [e for e in ApiClient(srv.socket_path).recent_events(agent="ag") if e["kind"] == "intent.clipped"]
    assert clipped["data"]["requested"] == 8 << 30


def test_intent_outside_an_agent_is_refused_with_the_reason(srv):
    r = cli(srv, "intent", "--memory", "1G")
    assert r.exit_code == 1
    assert "permission denied" in r.output and "agentctl run" in r.output


def test_gpu_commands_are_added_when_their_module_exists():
    names = set(main.commands)
    try:
        from cli.gpu_commands import estimate, gpu  # noqa: F401
    except ImportError:
        assert not {"estimate", "gpu"} & names
    else:
        assert {"estimate", "gpu"} <= names


def test_help_lists_every_command():
    out = invoke("--help").output
    for name in ("status", "top", "events", "run", "intent", "policy", "explain", "cancel",
                 "install-service", "schema", "completion"):
        assert f"  {name}" in out
    assert textwrap.dedent("Exit codes: 0 ok, 1 failure, 2 usage.") in out


def test_top_redraws_in_place_on_a_terminal_and_restores_the_cursor(srv, a1):
    import pty
    import select
    import signal
    import time

    master, slave = pty.openpty()
    # SIGINT as a terminal gives it: a suite started in the background (`cmd &`) ignores it,
    # and Python then never turns it into KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "cli.agentctl", "--socket", srv.socket_path,
                             "top", "--interval", "0.2"], stdin=slave, stdout=slave,
                            stderr=slave, cwd=REPO, close_fds=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    out = b""

    def read_for(seconds: float, until) -> None:
        """Read the terminal (top blocks on a full pty when nobody does) until until()."""
        nonlocal out
        deadline = time.monotonic() + seconds
        while not until() and time.monotonic() < deadline:
            try:
                if select.select([master], [], [], 0.2)[0]:
                    out += os.read(master, 65536)
            except OSError:  # the pty closes with the process
                return

    read_for(60, lambda: out.count(b"\x1b[H") >= 3)
    proc.send_signal(signal.SIGINT)
    read_for(60, lambda: proc.poll() is not None)
    assert proc.wait(1) == 0  # Ctrl-C is the normal way out
    read_for(0.5, lambda: False)
    os.close(master)
    assert out.count(b"\x1b[H") >= 3  # redrawn, not scrolled
    assert a1.encode() in out
    assert out.startswith(b"\x1b[?25l") and out.rstrip().endswith(b"\x1b[?25h")


def test_the_cli_imports_nothing_of_the_daemon_but_the_client():
    code = ("import json, sys; sys.modules['cli.gpu_commands'] = None; import cli.agentctl as a; "
            "print(json.dumps([sorted(m for m in sys.modules if m.startswith(('agentd', 'aiohttp',"
            " 'prometheus_client', 'yaml'))), sorted(a.main.commands)]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stderr == "", r.stderr  # a missing gpu module is silent
    modules, commands = json.loads(r.stdout)
    # agentd.kinds.registry: the list of kinds whose `agentctl <kind>` groups the CLI adds
    assert set(modules) <= {"agentd", "agentd.api", "agentd.api.client", "agentd.paths", "agentd.units", "agentd.kinds",
                            "agentd.kinds.registry"}
    assert "gpu" not in commands and "status" in commands


def test_agentctl_run_places_memory_with_the_pure_syscall_module_only():
    # `agentctl run` applies the daemon's launch plan itself: agentd.tiers.numa (ctypes), nothing else
    code = ("import json, sys; sys.modules['cli.gpu_commands'] = None; import cli.agentctl as a\n"
            "class Client:\n"
            "    def kind_post(self, kind, cmd, body):\n"
            "        return {'class': 'c', 'policy': 'p', 'mode': 'local', 'nodes': [], 'notes': [], 'error': ''}\n"
            "class State:\n    client = Client()\n"
            "a._place_memory(State(), ('true',), 'agents')\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('agentd', 'aiohttp', 'yaml')))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stderr == "agentctl: tiers: class c (policy p): local\n", r.stderr
    assert set(json.loads(r.stdout)) <= {"agentd", "agentd.api", "agentd.api.client", "agentd.paths", "agentd.units",
                                         "agentd.kinds", "agentd.kinds.registry", "agentd.tiers", "agentd.tiers.numa"}


def test_top_for_a_non_admin_shows_its_own_agents_without_the_daemon_status(srv):
    srv.start_agent("roots")
    srv.start_agent("mine", uid=65534)
    code, output = as_nobody(["--socket", srv.socket_path, "--json", "top", "--once"])
    assert code == 0, output
    snap = json.loads(output)
    assert "status" not in snap and [a["name"] for a in snap["agents"]] == ["mine"]


@needs_root
def test_events_follow_retry_survives_a_daemon_restart(tmp):
    d, leaf = tmp
    config = test_config(d, leaf)
    env = {**os.environ, "AGENTD_SOCKET": str(config.socket_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cli.agentctl", "events", "-f", "--retry",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env=env)
    watchdog = threading.Timer(60, proc.kill)  # a missed event fails the test, never hangs it
    watchdog.start()
    try:
        assert "waiting for it to come back" in proc.stderr.readline()  # not started yet
        for message in ("first daemon", "second daemon"):  # the same state, socket and cgroups
            with DaemonThread(config) as dt:
                wait_for(lambda: dt.subscribers() == 1, "event stream")
                dt.emit("agent.registered", message, agent="a1")
                while (doc := json.loads(proc.stdout.readline()))["message"] != message:
                    assert doc["kind"].startswith("daemon."), doc  # its own start, nothing else
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(10)


def test_follow_ends_cleanly_when_the_daemon_is_killed_mid_stream(tmp_path):
    """No traceback when the server vanishes without closing the stream properly."""
    import threading

    path = str(tmp_path / "agentd.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def half_a_stream():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n"
                     b"40\r\n{\"level\": \"warn\", \"kind\": \"x\", \"message\": \"before\"}\n")
        conn.close()  # mid-chunk, no terminating chunk: as if killed

    t = threading.Thread(target=half_a_stream)
    t.start()
    r = invoke("--socket", path, "events", "-f")
    t.join()
    srv.close()
    assert r.exit_code == 1
    assert "agentd closed the event stream" in r.output
