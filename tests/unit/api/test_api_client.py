"""The stdlib client: error mapping, daemon-not-running, sizes, declare_intent."""

import os
import socket

import pytest

from agentd.api.client import (
    ApiClient,
    ApiClientError,
    DaemonNotRunning,
    declare_intent,
    error_from_response,
    format_size,
    parse_size,
)


def test_error_bodies_become_api_client_errors():
    e = error_from_response(400, b'{"error": {"code": "unknown_field", "message": "unknown '
                                 b'field x", "field": "x"}}')
    assert (e.status, e.code, e.message, e.field) == (400, "unknown_field", "unknown field x", "x")
    assert str(e) == "unknown field x (field: x)"
    assert e.to_json()["error"]["code"] == "unknown_field"
    details = error_from_response(400, b'{"error": {"code": "policy_invalid", "message": "m", '
                                       b'"details": [{"line": 3}]}}')
    assert details.details == [{"line": 3}]


def test_a_reply_that_is_not_a_json_error_is_reported_as_such():
    e = error_from_response(502, b"<html>bad gateway</html>")
    assert e.code == "bad_response" and "502" in e.message


def test_no_socket_means_daemon_not_running(tmp_path):
    path = str(tmp_path / "absent.sock")
    with pytest.raises(DaemonNotRunning) as e:
        ApiClient(path).status()
    assert e.value.message == (f"agentd is not running (no socket at {path}): "
                               "start it with `systemctl start agentd`")


def test_a_stale_socket_means_daemon_not_running(tmp_path):
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # the file stays, nobody listens: ECONNREFUSED
    with pytest.raises(DaemonNotRunning):
        ApiClient(path).agents()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to uid 65534")
def test_a_socket_the_caller_may_not_open_says_permission_denied(tmp_path):
    os.chmod(tmp_path, 0o755)
    path = str(tmp_path / "root-only.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(1)
    os.chmod(path, 0o600)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setgid(65534)
        os.setuid(65534)
        try:
            ApiClient(path).status()
            code = b"none"
        except ApiClientError as e:
            code = e.code.encode()
        except BaseException:
            code = b"other"
        os.write(w, code)
        os._exit(0)
    os.close(w)
    got = os.read(r, 100)
    os.waitpid(pid, 0)
    s.close()
    assert got == b"socket_permission_denied"


@pytest.mark.parametrize("text, n", [("512M", 512 << 20), ("2G", 2 << 30), ("1.5G", 3 << 29),
                                     ("4096", 4096), ("64k", 64 << 10), ("2GiB", 2 << 30),
                                     ("1gb", 1 << 30), (1024, 1024), (" 8M ", 8 << 20)])
def test_sizes(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["lots", "-1M", "1X", "", "M", True, -5])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_format_size():
    assert format_size(512 << 20) == "512M"
    assert format_size(3 << 29) == "1.5G"
    assert format_size(100) == "100"
    assert format_size(None) == "-"


def test_declare_intent_is_a_no_op_without_the_daemon_unless_strict(tmp_path):
    path = str(tmp_path / "none.sock")
    assert declare_intent(tool="pytest", memory="1G", socket_path=path) is None
    with pytest.raises(DaemonNotRunning):
        declare_intent(tool="pytest", socket_path=path, strict=True)


def test_a_server_that_answers_garbage_is_a_bad_response(tmp_path):
    import threading

    path = str(tmp_path / "garbage.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def answer():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 5\r\nConnection: close\r\n\r\n{oops")
        conn.close()

    t = threading.Thread(target=answer)
    t.start()
    with pytest.raises(ApiClientError) as e:
        ApiClient(path).status()
    t.join()
    srv.close()
    assert e.value.code == "bad_response" and "{oops" in e.value.message
