"""The kind's host-facing decisions that need no kernel: degrade lines per fixture
topology, re-adopting saved page origins of live processes, policy load journaling."""
from __future__ import annotations

import os
from pathlib import Path

from agentd.kinds.context import SharedModel
from agentd.kinds.host import KindHost
from agentd.kinds.state import KindDatabase
from agentd.policy.loader import parse_text
from agentd.tiers.kind import TiersKind, degrade_lines
from agentd.tiers.topology import discover
from agentd import procfs

FIX = Path(__file__).resolve().parent / "fixtures"


def topo(name):
    return discover(str(FIX / name / "sys"), str(FIX / name / "proc"))


def test_degrade_lines_say_what_each_host_lacks():
    one = degrade_lines(topo("nvme_swap"), {"memory_reclaim": False})
    assert any("one NUMA memory node" in x for x in one) and any("without memory tiering" in x for x in one)
    assert any("weighted interleave" in x for x in one) and any("cgroup v1" in x for x in one)
    assert not any("no swap" in x for x in one)
    assert degrade_lines(topo("two_cxl"), {"memory_reclaim": True}) == ["no swap device: proactive reclaim can only "
                                                                         "drop page cache; swap budgets have nothing to hold"]
    assert any("no far memory tier" in x for x in degrade_lines(topo("two_socket_dram"), {}))


def _host(tmp_path, sys_root, proc_root="/proc"):
    events = []
    kind = TiersKind(sys_root=str(sys_root), proc_root=str(proc_root))
    host = KindHost([kind], driver=None, model=SharedModel(), db=KindDatabase(tmp_path / "k.db"),
                    journal_emit=lambda k, m, **d: events.append((k, m, d)), clock=lambda: 1.0)
    return host, kind, events


def test_readopt_keeps_origins_of_live_processes_only(tmp_path):
    host, kind, _ = _host(tmp_path, FIX / "two_cxl" / "sys")
    me = procfs.read_stat(os.getpid())
    kind.ctx.state.put(f"runs:{os.getpid()}:{me.start_ticks}", {"pid": os.getpid(), "runs": [[4096, 1, 0]]})
    kind.ctx.state.put(f"runs:{os.getpid()}:{me.start_ticks + 1}", {"pid": os.getpid(), "runs": []})  # pid reused
    assert host.readopt()["tiers"]["moved_processes"] == 1
    assert list(kind.runs) == [f"{os.getpid()}:{me.start_ticks}"]
    assert len(list(kind.ctx.state.items("runs:"))) == 1


def test_a_policy_naming_a_missing_node_is_journaled_with_its_line_and_refused(tmp_path):
    proc = tmp_path / "proc"  # a /proc/sys of its own: the kind turns delay accounting on
    (proc / "sys" / "kernel").mkdir(parents=True)
    (proc / "sys" / "kernel" / "task_delayacct").write_text("0\n")
    host, kind, events = _host(tmp_path, FIX / "two_cxl" / "sys", proc)
    policy, problems = parse_text("version: 1\nname: p\ntiers:\n  classes:\n    - name: a\n      match: {comm: x}\n"
                                  "      placement: {mode: bind, weights: {node9: 1}}\n", "p.yaml")
    assert not problems
    host.on_policy([policy])
    [(kind_name, msg, data)] = [e for e in events if e[0] == "tier.policy"]
    assert msg.startswith("policy p: p.yaml:5: class a: node 9 does not exist") and data["level"] == "error"
    assert kind.refused == {"p/a": kind.refused["p/a"]} and "node 9" in kind.refused["p/a"]
    assert host.status()["tiers"]["refused"]
    assert (proc / "sys" / "kernel" / "task_delayacct").read_text() == "1"
    host.on_policy([])  # policy removed: the saved value goes back
    assert (proc / "sys" / "kernel" / "task_delayacct").read_text() == "0"
