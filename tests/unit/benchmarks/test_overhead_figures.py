"""benchmarks/overhead.py's pure parts: which /proc/self/cgroup blocks count as escapes (hybrid,
pure v2, the bare mover's v2-only placement), the ratios to the bare mover, and the metrics
of the host and --vm results files."""

import pytest

from benchmarks.overhead import escaped, host_metrics, ratios_to_bare, split_blocks, vm_metrics

HYBRID_IN = ["12:memory:/a/tools/1-cat", "5:pids:/a/tools/1-cat", "3:cpu,cpuacct:/a/runtime", "0::/a/tools/1-cat"]


def test_hybrid_block_is_placed_only_when_v2_memory_and_pids_lines_are_in_tool_cgroups():
    assert not escaped(HYBRID_IN)  # the cpu line is not checked: its limits need no cpu
    assert escaped(["12:memory:/a/runtime", *HYBRID_IN[1:]])
    assert escaped(HYBRID_IN[:-1])  # no v2 line at all
    # The bare mover places in v2 only: its v1 lines are not checked.
    assert not escaped(["12:memory:/a/runtime", "5:pids:/a/runtime", "0::/b/tools/7"], v1=())
    assert escaped(["12:memory:/a/tools/1", "0::/b/agent"], v1=())


def test_pure_v2_block_has_only_the_v2_line():
    assert not escaped(["0::/agentd-x/agents/load/tools/0001-cat"])
    assert escaped(["0::/agentd-x/agents/load/runtime"])


def test_split_blocks_ends_each_cat_at_its_v2_line():
    text = "\n".join(HYBRID_IN + ["0::/x/tools/2"]) + "\n"
    assert [len(b) for b in split_blocks(text)] == [4, 1]


def _fig(p50, p99, **kw):
    return {"placement_p50_us_full": p50, "placement_p99_us_full": p99, **kw}


def test_ratios_to_bare_per_variant_and_none_without_figures():
    results = {"bpf": _fig(900.0, 5000.0), "bpf_all": _fig(3000.0, 30000.0), "cn_proc": _fig(None, None),
               "bare": _fig(300.0, 1000.0)}
    r = ratios_to_bare(results)
    assert r == {"bpf": {"placement_p50_ratio_to_bare": 3.0, "placement_p99_ratio_to_bare": 5.0},
                 "bpf_all": {"placement_p50_ratio_to_bare": 10.0, "placement_p99_ratio_to_bare": 30.0}}
    assert ratios_to_bare({"bpf": _fig(900.0, 5000.0)}) == {}  # no bare run: no ratio


def test_host_metrics_carry_the_contract_figures_and_the_ratios_beside_the_absolutes():
    results = {"bpf": _fig(900.0, 5000.0, execs_per_s=199.0, escaped_pct=0.0), "bare": _fig(300.0, 1000.0)}
    for label, ratios in ratios_to_bare(results).items():
        results[label].update(ratios)
    m = host_metrics(results)
    assert m["placement_p50_us_full"] == 900.0 and m["placement_p99_us_full"] == 5000.0
    assert m["placement_p50_ratio_to_bare"] == 3.0 and m["placement_p99_ratio_to_bare"] == 5.0
    assert m["placement_p50_ratio_to_bare_bpf"] == 3.0
    assert m["placement_p50_us_full_bare"] == 300.0
    assert "placement_p50_ratio_to_bare_bare" not in m


def test_vm_metrics_from_the_guest_json():
    guest = {"kernel": "6.12", "seconds": {"boot_s": 40.0, "guest_s": 500.0, "wall_s": 560.0, "measure_s": 450.0},
             "results": {"bpf": _fig(40000.0, 900000.0, escaped_pct=0.5, start_s_max=130.0, tool_calls=600),
                         "bare": _fig(10000.0, 100000.0, escaped_pct=0.0, start_s_max=120.0, tool_calls=600)}}
    m = vm_metrics(guest)
    assert (m["placement_p50_us_full_vm"], m["placement_p99_us_full_vm"]) == (40000.0, 900000.0)
    assert (m["placement_p50_us_full_bare_vm"], m["placement_p99_us_full_bare_vm"]) == (10000.0, 100000.0)
    assert (m["placement_p50_ratio_to_bare_vm"], m["placement_p99_ratio_to_bare_vm"]) == (4.0, 9.0)
    assert m["escaped_pct_vm"] == 0.5 and m["escaped_pct_bare_vm"] == 0.0
    assert m["daemon_start_s_vm"] == 130.0 and m["bare_tracker_load_s_vm"] == 120.0
    assert m["boot_s_vm"] == 40.0 and m["wall_s_vm"] == 560.0 and m["tool_calls_bpf_vm"] == 600


def test_vm_metrics_name_a_variant_the_guest_did_not_finish():
    with pytest.raises(ValueError, match="bare"):
        vm_metrics({"results": {"bpf": _fig(1.0, 2.0)}})
    with pytest.raises(ValueError, match="bpf, bare"):
        vm_metrics({})


class _Backend:
    def __init__(self):
        self.released = []

    def release(self, pid):
        self.released.append(pid)


def _ev(kind, pid, cgroup_id, gated=True, ts_ns=1):
    from types import SimpleNamespace

    return SimpleNamespace(kind=kind, pid=pid, cgroup_id=cgroup_id, gated=gated, ts_ns=ts_ns)


def test_bare_mover_never_leaves_a_gated_exec_stopped(tmp_path):
    from agentd.events import ProcEventKind as K
    from benchmarks.overhead_bare import BareMover

    backend = _Backend()
    mover = BareMover(backend, agent_id=7, tools_dir=tmp_path)
    mover(_ev(K.EXEC, 10, 7, gated=False))  # not gated: not its business
    mover(_ev(K.EXEC, 11, 8))               # gated elsewhere: continued, not placed
    mover(_ev(K.EXEC, 12, 7))               # the agent's: a tool cgroup made; no cgroup.procs here, so
    assert backend.released == [11, 12]      # the move fails, counted, and the exec is continued anyway
    assert (tmp_path / "1").is_dir() and mover.errors == 1 and len(mover.full_us) == 1 and mover.steps_us == []
