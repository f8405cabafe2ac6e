"""sd_notify over a real datagram socket, path and abstract; watchdog interval."""

import os
import socket

from agentd import sdnotify


def _listen(addr):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(addr)
    s.settimeout(2)
    return s


def test_ready_status_watchdog_stopping_reach_a_path_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    s = _listen(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sdnotify.ready("serving on /run/agentd/agentd.sock")
    assert s.recv(4096) == b"READY=1\nSTATUS=serving on /run/agentd/agentd.sock"
    assert sdnotify.status("3 agents,\n12 tool calls")
    assert s.recv(4096) == b"STATUS=3 agents, 12 tool calls"  # one line per field
    assert sdnotify.watchdog()
    assert s.recv(4096) == b"WATCHDOG=1"
    assert sdnotify.stopping()
    assert s.recv(4096) == b"STOPPING=1"
    s.close()


def test_abstract_socket_names_start_with_at(monkeypatch):
    name = f"agentd-test-{os.getpid()}"
    s = _listen("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    assert sdnotify.notify("READY=1")
    assert s.recv(4096) == b"READY=1"
    s.close()


def test_without_notify_socket_everything_is_a_no_op(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False and sdnotify.watchdog() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sdnotify.ready() is False  # systemd went away: not an error


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process():
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    pid = str(os.getpid())
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
