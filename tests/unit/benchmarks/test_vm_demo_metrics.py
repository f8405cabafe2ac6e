"""benchmarks/vm_demo_guest.py's pure parts: which probe outputs count as escapes, and the
contract's metrics (issue 9) from a demo's JSON and a gate check."""

from benchmarks.vm_demo_guest import count_escapes, metrics, probe_agent_script, read_probe_outputs

LEAF = "agentd-test-1"
TOOLS = f"/init.scope/{LEAF}/agents/gate/tools"


def test_only_an_exec_in_its_own_tool_cgroup_of_that_agent_is_placed():
    seen = [f"{TOOLS}/0001-probe", f"{TOOLS}/0002-probe",
            f"/init.scope/{LEAF}/agents/gate/runtime",          # ran before the move: escaped
            f"/init.scope/{LEAF}/agents/other/tools/0001-probe",  # another agent's tool cgroup
            f"/init.scope/agentd-test-2/agents/gate/tools/0003-probe",  # another daemon's
            None]                                                 # no output at all
    r = count_escapes(seen, LEAF, "gate")
    assert (r["execs"], r["placed"], r["escaped"], r["distinct_cgroups"]) == (6, 2, 4, 2)
    assert r["escaped_pct"] == 66.67
    assert count_escapes([], LEAF, "gate")["escaped_pct"] == 100.0  # nothing ran: not a pass


def test_probe_outputs_are_read_from_the_v2_line(tmp_path):
    (tmp_path / "0").write_text(f"12:memory:/x\n0::{TOOLS}/0001-probe\n")
    (tmp_path / "1").write_text("")
    assert read_probe_outputs(tmp_path, 3) == [f"{TOOLS}/0001-probe", None, None]
    assert "while [ $i -lt 5 ]" in probe_agent_script("/p", tmp_path, 5)


def _call(name, outcome, events=(), exit_code=0, wall=1.0):
    return {"name": name, "outcome": outcome, "events": list(events), "exit_code": exit_code, "wall_s": wall}


def test_metrics_hold_the_contract_keys():
    demo = {"agent_exit": 0, "cgroups": "v2", "lines": [],
            "tracker": {"backend": "bpf", "exec_gate": True, "placement_p50_us_full": 900.0},
            "tool_calls": [_call("grep", "ok"),
                           _call("python-runaway.py", "killed", ["toolcall.start", "toolcall.throttled", "toolcall.frozen",
                                                                 "toolcall.killed", "toolcall.end"], -9),
                           _call("python-burst.py", "throttled", ["toolcall.killed", "toolcall.frozen"])]}
    run = {"demo": demo, "demo_s": 150.0, "leftover_server_pids": []}
    m = metrics(run, {"escaped_pct": 0.0, "execs": 80, "placement_p50_us_full": 1.0, "placement_p99_us_full": 2.0})
    assert m["cgroup_driver"] == "v2" and m["tracker"] == "bpf" and m["agent_exit"] == 0
    assert m["tool_calls"] == 3 and m["outcomes"] == ["ok", "killed", "throttled"]
    assert m["escaped_pct_gated"] == 0.0 and m["gated_execs"] == 80
    assert m["frozen_then_killed"] == 1  # a kill before the freeze is not the ladder's end
    assert m["demo_toolcalls_wall_s"] == 3.0 and m["leftover_server_processes"] == 0
