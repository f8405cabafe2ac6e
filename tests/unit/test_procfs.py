"""procfs parsers and readers, from fixture text laid out like /proc/<pid>/."""

import os

import pytest

from agentd import procfs

STAT_PLAIN = "1234 (bash) S 1200 1234 1200 34816 1300 4194304 1 2 3 4 5 6 7 8 20 0 1 0 98765 10000 200 18446744073709551615\n"
# comm with spaces and a closing paren; fields after it must still line up.
STAT_TRICKY = "77 (a) b (c)) T 76 77 76 0 -1 4194304 1 2 3 4 5 6 7 8 20 0 1 0 4242 10000 200 0\n"

STATUS = """Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
Tgid:\t1234
Ngid:\t0
Pid:\t1234
PPid:\t1200
Uid:\t1000\t1001\t1002\t1003
Gid:\t1000\t1000\t1000\t1000
NSpid:\t1234\t7\t1
"""

CGROUP_HYBRID = """9:name=systemd:/
4:memory:/process_api/46a4
0::/agentd/agents/a1/runtime
"""


@pytest.fixture
def proc_root(tmp_path):
    d = tmp_path / "1234"
    d.mkdir()
    (d / "stat").write_text(STAT_PLAIN)
    (d / "status").write_text(STATUS)
    (d / "cmdline").write_bytes(b"python3\0-c\0print('a b')\0")
    (d / "cgroup").write_text(CGROUP_HYBRID)
    os.symlink("/usr/bin/python3.11", d / "exe")
    z = tmp_path / "77"
    z.mkdir()
    (z / "stat").write_text(STAT_TRICKY)
    (z / "cmdline").write_bytes(b"")  # a zombie or kernel thread
    (z / "cgroup").write_text("4:memory:/x\n")  # no v2 line
    return str(tmp_path)


def test_stat_plain(proc_root):
    st = procfs.read_stat(1234, proc_root)
    assert (st.pid, st.comm, st.state, st.ppid, st.start_ticks) == (1234, "bash", "S", 1200, 98765)


def test_stat_comm_with_spaces_and_parens(proc_root):
    st = procfs.read_stat(77, proc_root)
    assert (st.comm, st.state, st.ppid, st.start_ticks) == ("a) b (c)", "T", 76, 4242)


@pytest.mark.parametrize("text", ["", "garbage", "12 (x S 1", "12 (x) S notanumber 1 2", "12 (x) S 1 2 3"])
def test_stat_rejects_malformed(text):
    assert procfs.parse_stat(text) is None


def test_status(proc_root):
    s = procfs.read_status(1234, proc_root)
    assert (s.name, s.tgid, s.uid_real, s.uid_effective, s.nspid) == ("python3", 1234, 1000, 1001, (1234, 7, 1))


def test_status_without_uid_is_rejected():
    assert procfs.parse_status("Name:\tx\nTgid:\t3\n") is None


def test_cmdline(proc_root):
    assert procfs.read_cmdline(1234, proc_root) == ["python3", "-c", "print('a b')"]
    assert procfs.read_cmdline(77, proc_root) == []
    assert procfs.parse_cmdline(b"setproctitle style") == ["setproctitle style"]
    assert procfs.parse_cmdline(b"bad\xff\0") == ["bad\ufffd"]


def test_exe(proc_root):
    assert procfs.read_exe(1234, proc_root) == "/usr/bin/python3.11"
    assert procfs.read_exe(77, proc_root) is None


def test_cgroup_v2_line(proc_root):
    assert procfs.read_cgroup_v2(1234, proc_root) == "/agentd/agents/a1/runtime"
    assert procfs.read_cgroup_v2(77, proc_root) is None
    assert procfs.parse_cgroup_v2("0::\n") == "/"


def test_vanished_pid_reads_as_none(proc_root):
    for reader in (procfs.read_stat, procfs.read_status, procfs.read_cmdline, procfs.read_exe, procfs.read_cgroup_v2):
        assert reader(999999, proc_root) is None


def test_empty_stat_of_a_reaped_process_is_none(tmp_path):
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / "stat").write_text("")
    assert procfs.read_stat(5, str(tmp_path)) is None


def test_list_pids(proc_root):
    assert procfs.list_pids(proc_root) == [77, 1234]


def test_cgroup_id_is_the_directory_inode(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert procfs.cgroup_id_of("/a/b", str(tmp_path)) == os.stat(tmp_path / "a" / "b").st_ino
    assert procfs.cgroup_id_of("/nope", str(tmp_path)) is None


# --- bounded reads: what a process puts in its own /proc files cannot flood the daemon --------


def test_a_huge_argv_and_environment_are_read_only_up_to_the_limits():
    """A real process with a 1 MiB argv and a 400 KiB environment: the daemon's readers
    return at most LIMITS bytes of each (before the bound, read_cmdline took all of it)."""
    import subprocess
    import sys
    import time

    big_args = ["x" * (100 << 10)] * 10  # 10 arguments of 100 KiB (each under MAX_ARG_STRLEN)
    env = {f"BIG{i}": "y" * (100 << 10) for i in range(4)}  # with the argv, under the 2 MiB exec limit
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", *big_args],
                            stdin=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 10
        while (argv := procfs.read_cmdline(proc.pid))[:2] != [sys.executable, "-c"]:  # exec'd yet?
            assert time.monotonic() < deadline, argv[:2]
            time.sleep(0.01)
        assert len("\0".join(argv)) <= procfs.LIMITS["cmdline"]
        assert len(argv) < len(big_args)  # cut: the tail never reached the daemon
        environ = procfs.read_environ(proc.pid)
        assert environ.startswith(b"BIG0=yyy") and len(environ) == procfs.LIMITS["environ"]
        info = procfs.read_proc(proc.pid)
        assert info.comm.startswith("python") and all(len(a) <= procfs.ARGV_MAX_CHARS for a in info.argv)
    finally:
        proc.stdin.close()
        proc.wait(10)


def test_every_reader_has_a_limit(tmp_path):
    (tmp_path / "5").mkdir()
    for name in procfs.LIMITS:
        (tmp_path / "5" / name).write_bytes(b"z" * (procfs.LIMITS[name] + 4096))
        assert len(procfs.read_bytes(5, name, str(tmp_path))) == procfs.LIMITS[name]
    assert procfs.read_comm(5, str(tmp_path)) == "z" * procfs.LIMITS["comm"]
    assert procfs.read_stat(5, str(tmp_path)) is None  # a cut or garbled stat is no process


def test_gone_processes_read_as_gone(tmp_path):
    assert procfs.read_bytes(999999, "stat", str(tmp_path)) is None
    assert procfs.read_comm(999999, str(tmp_path)) == "" and procfs.read_cgroup(999999, str(tmp_path)) == ""
    assert procfs.read_ns_pids(999999, str(tmp_path)) == () and procfs.read_groups(999999, str(tmp_path)) is None
    assert procfs.read_proc(999999, str(tmp_path)) is None and procfs.read_environ(999999, str(tmp_path)) == b""


def test_the_real_uid_is_read_from_the_uid_line():
    assert procfs.parse_uid_real(STATUS.encode()) == 1000
    assert procfs.parse_uid_real(b"Name:\tx\nUid:\t7\t0\t0\t0\nGid:\t0\n") == 7
    assert procfs.parse_uid_real(b"Name:\tx\nUid:\t7\t0") is None  # cut in the middle of the line
    assert procfs.parse_uid_real(b"Name:\tx\nUid:\t\nGid:\t0\n") is None
    assert procfs.parse_uid_real(b"Name:\tx\nGid:\t0\n") is None
