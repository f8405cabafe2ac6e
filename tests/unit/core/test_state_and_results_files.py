"""The files the daemon owns, on a real file system: the state directory's lock and modes,
result files written through directory fds, and the pidfd that holds an API caller."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess

import pytest

from agentd.core.pidfd import PeerProcess
from agentd.toolcalls.results import ResultsDir, ResultsDirError
from agentd.core.statedir import AlreadyRunning, StateDirError, open_state_dir, take_lock

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def test_the_lock_admits_one_holder(tmp_path):
    fd = open_state_dir(tmp_path / "state")
    try:
        with pytest.raises(AlreadyRunning, match=rf"another agentd \(pid {os.getpid()}\) already uses the state directory"):
            open_state_dir(tmp_path / "state")
    finally:
        os.close(fd)
    os.close(take_lock(tmp_path / "state"))  # released with its fd


def test_the_state_directory_is_tightened_and_a_link_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    (state / "agentd.db-wal").write_text("")
    os.chmod(state / "agentd.db-wal", 0o644)
    os.close(open_state_dir(state))
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "agentd.db-wal").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "agentd.db").stat().st_mode) == 0o600
    (tmp_path / "link").symlink_to(state)
    with pytest.raises(StateDirError, match="symlink is refused"):
        open_state_dir(tmp_path / "link")


@needs_root
def test_a_state_directory_of_another_user_is_refused(tmp_path):
    state = tmp_path / "theirs"
    state.mkdir()
    os.chown(state, 65534, 65534)
    with pytest.raises(StateDirError, match="owned by uid 65534"):
        open_state_dir(state)


@needs_root
def test_results_never_follow_a_link_left_in_the_folder(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep")
    results = ResultsDir(tmp_path / "results")
    try:
        results.write("a1", 65534, 10, {"n": 1})  # makes the folder
        folder = tmp_path / "results" / "a1"
        # Links where root writes (as an older layout let an agent leave them).
        (folder / ".11.json.tmp").symlink_to(target)
        (folder / "11.json").symlink_to(target)
        results.write("a1", 65534, 11, {"n": 2})
        assert target.read_text() == "keep"
        final = folder / "11.json"
        st = final.lstat()
        assert stat.S_ISREG(st.st_mode) and st.st_uid == 65534 and stat.S_IMODE(st.st_mode) == 0o400
        assert json.loads(final.read_text()) == {"n": 2}
        assert not (folder / ".11.json.tmp").exists()
        assert stat.S_IMODE((tmp_path / "results").stat().st_mode) == 0o711
    finally:
        results.close()


@needs_root
def test_a_results_root_that_is_a_link_or_not_roots_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ResultsDirError, match="symlink is refused"):
        ResultsDir(tmp_path / "link")
    (tmp_path / "theirs").mkdir()
    os.chown(tmp_path / "theirs", 65534, 65534)
    with pytest.raises(ResultsDirError, match="owned by uid 65534"):
        ResultsDir(tmp_path / "theirs")


class _NoPeerPidfd:
    """A socket of a kernel without SO_PEERPIDFD: the pidfd_open fallback is taken."""

    def getsockopt(self, *args):
        raise OSError(92, "Protocol not available")


@pytest.mark.parametrize("pinned", [True, False])
def test_a_peer_held_by_pidfd_is_dead_once_it_exits(tmp_path, pinned):
    path = str(tmp_path / "s")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    code = f"import socket,time; s=socket.socket(socket.AF_UNIX); s.connect({path!r}); time.sleep(30)"
    child = subprocess.Popen(["python3", "-c", code])
    conn, _ = server.accept()
    try:
        # Without SO_PEERPIDFD the fallback holds whoever has the pid now, with its start time.
        peer = PeerProcess.of_socket(conn if pinned else _NoPeerPidfd(), child.pid)
        assert peer is not None and peer.pinned is pinned and peer.alive()
        child.kill()
        child.wait()  # exited and reaped: the pid is free for anyone
        assert not peer.alive()
        peer.close()
    finally:
        conn.close()
        server.close()
        child.kill()
        child.wait()
