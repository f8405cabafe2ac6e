"""/proc parsing for GPU process attribution (file formats on a fixture tree)."""

from __future__ import annotations

from agentd.gpu.procinfo import IdentityCache, identify, unit_of
from agentd.procfs import read_cgroup


def _proc(tmp_path, pid, cgroup, nspid="", comm="python"):
    d = tmp_path / str(pid)
    d.mkdir()
    (d / "cgroup").write_text(cgroup)
    (d / "status").write_text(f"Name:\t{comm}\nPid:\t{pid}\n" + (f"NSpid:\t{nspid}\n" if nspid else ""))
    (d / "comm").write_text(comm + "\n")
    (d / "stat").write_text(f"{pid} ({comm}) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 4242 0 0\n")
    return d


def test_container_pid_from_nspid(tmp_path):
    _proc(tmp_path, 4242, "0::/agentd.service/agents/a1/tools/0003-pytest\n", nspid="4242\t17\t1")
    ident = identify(4242, tmp_path)
    assert ident.ns_pids == (4242, 17, 1) and ident.container_pid == 1
    assert ident.unit == "agents/a1/tools/0003-pytest"


def test_hybrid_host_uses_the_v1_memory_path_when_v2_is_root(tmp_path):
    text = "12:memory:/agentd/agents/a2/runtime\n11:cpu,cpuacct:/agentd\n0::/\n"
    _proc(tmp_path, 7, text)
    assert read_cgroup(7, tmp_path) == "/agentd/agents/a2/runtime"
    assert identify(7, tmp_path).unit == "agents/a2/runtime"
    _proc(tmp_path, 8, "12:memory:/x\n0::/system.slice/agentd.service/daemon\n")
    assert read_cgroup(8, tmp_path) == "/system.slice/agentd.service/daemon"


def test_unit_names():
    assert unit_of("/system.slice/agentd.service/agents/a1/tools/0003-pytest") == "agents/a1/tools/0003-pytest"
    assert unit_of("/system.slice/agentd.service/jobs/llama-ft") == "jobs/llama-ft"  # agentd.colocation's
    assert unit_of("/user.slice/jobs/x") == "/user.slice/jobs/x"  # not under agentd: raw
    assert unit_of("/system.slice/docker-abc.scope") == "/system.slice/docker-abc.scope"


def test_cache_rereads_the_cgroup_because_agentd_moves_processes(tmp_path):
    d = _proc(tmp_path, 9, "0::/agentd/agents/a1/runtime\n")
    cache = IdentityCache(tmp_path)
    assert cache.get(9).unit == "agents/a1/runtime"
    (d / "cgroup").write_text("0::/agentd/agents/a1/tools/0001-bash\n")
    assert cache.get(9).unit == "agents/a1/tools/0001-bash"


def test_a_vanished_process_has_no_identity(tmp_path):
    ident = identify(999999, tmp_path)
    assert ident.ns_pids == () and ident.cgroup == "" and ident.unit == "" and ident.container_pid is None
