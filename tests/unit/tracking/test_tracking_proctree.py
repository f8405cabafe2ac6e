"""The process tree from events alone, with a fake reader and a fake clock."""

from agentd.events import ProcEvent, ProcEventKind as K
from agentd.tracking.proctree import ProcInfo, ProcTree


class FakeReader:
    def __init__(self):
        self.procs: dict[int, ProcInfo] = {}

    def describe(self, pid):
        return self.procs.get(pid)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def make_tree():
    reader, clock = FakeReader(), Clock()
    tree = ProcTree(reader, exit_grace_s=5.0, clock=clock)
    tree.seed([ProcInfo(pid=1, ppid=0, comm="init"), ProcInfo(pid=10, ppid=1, comm="agent", uid=1000, cgroup_id=500, argv=["agent"])])
    return tree, reader, clock


def test_fork_inherits_from_parent_and_links():
    tree, _, _ = make_tree()
    child = tree.apply(ProcEvent(K.FORK, pid=11, tgid=10, ppid=10, comm="agent", cgroup_id=500))
    assert (child.ppid, child.comm, child.uid, child.cgroup_id, child.argv) == (10, "agent", 1000, 500, ["agent"])
    assert tree.children(10) == [11]
    assert tree.ancestors(11) == [10, 1]


def test_exec_updates_comm_argv_exe_from_reader():
    tree, reader, _ = make_tree()
    tree.apply(ProcEvent(K.FORK, pid=11, ppid=10, comm="agent", cgroup_id=500))
    reader.procs[11] = ProcInfo(pid=11, ppid=10, comm="pytest", exe="/usr/bin/python3", argv=["pytest", "-q"], uid=1000)
    info = tree.apply(ProcEvent(K.EXEC, pid=11, tgid=11, comm="pytest", filename="/usr/bin/pytest", cgroup_id=500))
    assert (info.comm, info.exe, info.argv) == ("pytest", "/usr/bin/python3", ["pytest", "-q"])
    assert tree.get(10).argv == ["agent"]  # the parent's argv is not shared


def test_exec_when_the_process_already_left_uses_the_event():
    tree, _, _ = make_tree()
    tree.apply(ProcEvent(K.FORK, pid=11, ppid=10, comm="agent"))
    info = tree.apply(ProcEvent(K.EXEC, pid=11, comm="true", filename="/usr/bin/true"))
    assert (info.comm, info.exe, info.argv) == ("true", "/usr/bin/true", [])  # not the agent's argv


def test_exec_of_an_unknown_pid_adds_it_from_the_reader():
    tree, reader, _ = make_tree()
    reader.procs[40] = ProcInfo(pid=40, ppid=10, comm="late", exe="/bin/late")
    tree.apply(ProcEvent(K.EXEC, pid=40, comm="late"))
    assert tree.ancestors(40) == [10, 1]


def test_exit_keeps_the_entry_for_the_grace_then_removes_it():
    tree, _, clock = make_tree()
    tree.apply(ProcEvent(K.FORK, pid=11, ppid=10))
    tree.apply(ProcEvent(K.EXIT, pid=11, exit_code=3 << 8, exit_code_known=True))
    assert tree.get(11).exit_code == 768 and 11 in tree
    clock.t += 4.9
    assert tree.expire() == [] and 11 in tree
    clock.t += 0.2
    assert tree.expire() == [11] and 11 not in tree
    assert tree.children(10) == []


def test_unknown_exit_code_stays_none():
    tree, _, _ = make_tree()
    tree.apply(ProcEvent(K.FORK, pid=11, ppid=10))
    tree.apply(ProcEvent(K.EXIT, pid=11))
    assert tree.get(11).exit_code is None and tree.get(11).exited_at is not None


def test_orphans_stay_descendants_of_the_agent():
    tree, _, clock = make_tree()
    tree.apply(ProcEvent(K.FORK, pid=11, ppid=10))  # shell
    tree.apply(ProcEvent(K.FORK, pid=12, ppid=11))  # its background child
    tree.apply(ProcEvent(K.FORK, pid=13, ppid=12))
    assert tree.descendants(10) == [11, 12, 13]
    tree.apply(ProcEvent(K.EXIT, pid=11))
    clock.t += 10
    tree.expire()
    assert tree.get(12).ppid == 10
    assert tree.descendants(10) == [12, 13]
    assert tree.is_descendant(13, 10)


def test_pid_reuse_replaces_the_old_entry():
    tree, _, _ = make_tree()
    tree.apply(ProcEvent(K.FORK, pid=11, ppid=10, comm="old"))
    tree.apply(ProcEvent(K.EXIT, pid=11))
    tree.apply(ProcEvent(K.FORK, pid=11, ppid=1, comm="new"))
    info = tree.get(11)
    assert (info.ppid, info.comm, info.exited_at) == (1, "new", None)
    assert tree.children(10) == [] and tree.children(1) == [10, 11]


def test_cgroup_attach_and_oom():
    tree, _, _ = make_tree()
    tree.apply(ProcEvent(K.FORK, pid=11, ppid=10, cgroup_id=500))
    tree.apply(ProcEvent(K.CGROUP_ATTACH, pid=11, cgroup_id=777, cgroup_path="/x"))
    assert tree.get(11).cgroup_id == 777
    assert tree.pids_in_cgroup(777) == [11]
    tree.apply(ProcEvent(K.OOM_VICTIM, pid=11))
    assert tree.get(11).oom_victim
    assert tree.apply(ProcEvent(K.CGROUP_ATTACH, pid=999, cgroup_id=1)) is None  # unknown: ignored


def test_ancestors_survive_a_cycle():
    tree = ProcTree()
    tree.seed([ProcInfo(pid=2, ppid=3), ProcInfo(pid=3, ppid=2)])
    assert tree.ancestors(2) == [3]


def test_seed_from_a_fixture_proc_root(tmp_path):
    from agentd.tracking.proctree import ProcfsReader

    cg = tmp_path / "cgroup" / "agents" / "a1"
    cg.mkdir(parents=True)
    for pid, ppid, comm in ((1, 0, "init"), (50, 1, "my agent"), (51, 50, "sh")):
        d = tmp_path / "proc" / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_text(f"{pid} ({comm}) S {ppid} 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {pid * 10} 0 0\n")
        (d / "status").write_text(f"Name:\t{comm}\nTgid:\t{pid}\nUid:\t1000\t1000\t1000\t1000\n")
        (d / "cmdline").write_bytes(comm.encode() + b"\0")
        (d / "cgroup").write_text("0::/agents/a1\n" if pid != 1 else "0::/\n")
    tree = ProcTree()
    n = tree.seed_from_proc(ProcfsReader(str(tmp_path / "proc"), cgroup_mount=str(tmp_path / "cgroup")))
    assert n == 3
    assert tree.ancestors(51) == [50, 1]
    info = tree.get(50)
    assert (info.comm, info.argv, info.uid, info.start_ticks) == ("my agent", ["my agent"], 1000, 500)
    assert info.cgroup_id == cg.stat().st_ino
    assert tree.get(1).cgroup_id == (tmp_path / "cgroup").stat().st_ino


def test_a_gated_exec_heard_before_its_fork_keeps_its_exec_details():
    tree, reader, _ = make_tree()
    reader.procs[11] = ProcInfo(pid=11, ppid=10, comm="pytest", argv=["pytest"], exe="/usr/bin/python3")
    tree.apply(ProcEvent(K.EXEC, pid=11, comm="pytest", cgroup_id=500, ts_ns=2000, gated=True))
    info = tree.apply(ProcEvent(K.FORK, pid=11, ppid=10, comm="agent", cgroup_id=500, ts_ns=1000))
    assert (info.comm, info.argv, info.ppid) == ("pytest", ["pytest"], 10)
    assert tree.children(10) == [11]
    # A later birth of the same pid number is a new process.
    tree.apply(ProcEvent(K.EXIT, pid=11, ts_ns=3000))
    new = tree.apply(ProcEvent(K.FORK, pid=11, ppid=1, comm="other", ts_ns=4000))
    assert (new.comm, new.ppid) == ("other", 1)
