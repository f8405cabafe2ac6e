"""A tool call's end on real processes and cgroups: decided when its last process's exit
arrives (no tick needed), its cgroup removed and its result file written off the loop before
the record and toolcall.end say it ended, and the tick's samples bounded per tick."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time

import pytest

from agentd.core.journal import Journal
from agentd.core.store import Store
from agentd.events import ProcEvent, ProcEventKind
from agentd.kinds.changes import ChangeLog
from agentd.kinds.context import KindContext, SharedModel
from agentd.kinds.state import KindDatabase
from agentd.policy.schema import Policy
from agentd.toolcalls.kind import ToolCallEngine
from agentd.toolcalls.results import ResultsDir
from tests.kernel.cgroup_fixtures import driver, children, needs_root, unified_v2_driver  # noqa: F401 - fixtures

pytestmark = [pytest.mark.kernel, needs_root]


@pytest.fixture
def engine(driver, children, tmp_path):  # noqa: F811
    store = Store(tmp_path / "agentd.db")
    db = KindDatabase(tmp_path / "kinds.db")
    results = ResultsDir(tmp_path / "results")
    eng = ToolCallEngine(driver, store, Journal(store), lambda name: Policy("default"), results=results)
    state = db.view(eng.name)
    eng.attach(KindContext(name=eng.name, prefix=eng.journal_prefix, driver=driver, model=SharedModel(), state=state,
                           changes=ChangeLog(eng.journal_prefix, state, lambda *a, **k: {}, lambda: 0.0),
                           journal_emit=lambda *a, **k: {}))
    eng.ends_seen = []  # (kind, tool call) of every journal event
    eng.journal.listeners.append(lambda rec: eng.ends_seen.append((rec["kind"], rec.get("tool_call"))))
    runtime = children.cmd(["sleep", "60"])
    eng.test_agent = eng.register_agent(runtime.pid, 0, "ends", None)
    yield eng
    eng.reads.close()
    eng.ends.close()
    for tc in list(eng.toolcalls.values()):
        eng.act.kill(tc.cgroup)
    eng.end_agent(eng.test_agent, "test over")
    results.close()
    store.close()
    db.close()


def _exit(pid: int, code: int = 0) -> ProcEvent:
    return ProcEvent(ProcEventKind.EXIT, pid, tgid=pid, comm="sleep", exit_code=code << 8, exit_code_known=True)


def _tool(engine, children, argv, **kw):  # noqa: F811
    p = children.cmd(argv, **kw)
    tc = engine.start_tool_call(engine.test_agent, p.pid, gated=False)
    assert tc is not None and tc.id in engine.toolcalls
    return p, tc


def _wait_empty(engine, rel: str) -> None:
    deadline = time.monotonic() + 10
    while engine.act.populated_now(rel):
        assert time.monotonic() < deadline, f"{rel} still populated"
        time.sleep(0.01)


def test_a_tool_call_ends_on_its_leaders_exit_event_without_a_tick(engine, children, tmp_path):  # noqa: F811
    p, tc = _tool(engine, children, ["sleep", "0.1"])
    p.wait()
    engine.on_event(_exit(p.pid))
    assert tc.id not in engine.toolcalls
    assert ("toolcall.end", tc.id) in engine.ends_seen
    rec = [r for r in engine.store.toolcalls(limit=10) if r["id"] == tc.id][0]
    assert (rec["state"], rec["outcome"], rec["exit_code"]) == ("done", "ok", 0)
    assert not engine.driver.exists(tc.cgroup)
    result = json.loads((tmp_path / "results" / "ends" / f"{p.pid}.json").read_text())
    assert result["outcome"] == "ok"


def test_a_leader_that_leaves_a_child_behind_ends_when_the_child_exits(engine, children):  # noqa: F811
    p, tc = _tool(engine, children, ["sh", "-c", "read go; sleep 0.3 & exit 0"], stdin=subprocess.PIPE, text=True)
    children.go(p)  # its child forks inside the tool call's cgroup
    p.wait()
    engine.on_event(_exit(p.pid))
    assert tc.id in engine.toolcalls  # its background sleep still runs in its cgroup
    left = engine.driver.procs(tc.cgroup)
    assert len(left) == 1
    _wait_empty(engine, tc.cgroup)
    engine.on_event(_exit(left[0]))  # the last process's exit: no tick needed
    assert tc.id not in engine.toolcalls and ("toolcall.end", tc.id) in engine.ends_seen


def test_cgroup_and_result_file_go_off_the_loop_before_the_record_and_end_say_so(engine, children, tmp_path):  # noqa: F811
    on_loop: queue.Queue = queue.Queue()
    engine.ends.start(on_loop.put)  # the "loop" is this test's thread
    threads = []
    write = engine.results.write
    engine.results.write = lambda *a: (threads.append(threading.current_thread()), write(*a))
    p, tc = _tool(engine, children, ["sleep", "0.1"])
    p.wait()
    engine.on_event(_exit(p.pid))
    assert tc.id not in engine.toolcalls  # decided now ...
    settle = on_loop.get(timeout=10)  # ... carried out on the end worker, which then wakes the loop
    assert threads and threads[0] is not threading.current_thread()
    assert not engine.driver.exists(tc.cgroup)
    assert (tmp_path / "results" / "ends" / f"{p.pid}.json").exists()
    assert ("toolcall.end", tc.id) not in engine.ends_seen  # announced only on the loop, after the file
    assert [r["state"] for r in engine.store.toolcalls(limit=10) if r["id"] == tc.id] == ["running"]
    settle()
    assert ("toolcall.end", tc.id) in engine.ends_seen
    assert [r["state"] for r in engine.store.toolcalls(limit=10) if r["id"] == tc.id] == ["done"]


def test_the_tick_samples_a_bounded_chunk_and_goes_on_where_it_stopped(engine, children):  # noqa: F811
    tcs = [_tool(engine, children, ["sleep", "60"])[1] for _ in range(3)]
    sampled: list[str] = []
    stats = engine.driver.stats
    engine.driver.stats = lambda rel: (sampled.append(rel), stats(rel))[1]
    engine.tick_budget_s = 0.0  # one sample per tick
    for n in range(1, 4):
        engine.tick()
        assert len(sampled) == n
    assert sorted(sampled) == sorted(tc.cgroup for tc in tcs)  # each once, none twice
    engine.tick()
    assert len(sampled) == 4  # the next round starts again


def test_the_final_read_of_an_emptied_cgroup_has_the_figures_an_end_needs(driver, children):  # noqa: F811
    from agentd.cgroups.driver import Limits

    driver.create("done", Limits(memory_max=256 << 20, pids_max=16))
    driver.apply_limits("done", Limits(memory_max=256 << 20, pids_max=16))
    p = children.cmd(["python3", "-c", "import sys; sys.stdin.readline(); b = bytearray(48 << 20); sum(range(300000))"],
                     stdin=subprocess.PIPE, text=True)
    assert driver.move(p.pid, "done")
    children.go(p)
    p.wait()
    full, final = driver.stats("done"), driver.final_stats("done")
    assert not full.populated and final.memory_peak == full.memory_peak >= 48 << 20
    assert final.memory_limit == full.memory_limit == 256 << 20
    assert final.cpu_usage_us == full.cpu_usage_us > 0
    assert final.pids_max_events == full.pids_max_events
    for key in ("oom_kill", "under_oom", "high"):
        assert final.memory_events.get(key, 0) == full.memory_events.get(key, 0)


def test_the_final_read_on_a_v2_driver_matches_its_full_sample(unified_v2_driver, children):  # noqa: F811
    drv = unified_v2_driver  # no controllers on a hybrid host's cgroup2 mount: cpu.stat and whatever else it has
    drv.create("done")
    p = children.cmd(["python3", "-c", "sum(range(300000))"])
    drv.move(p.pid, "done")
    p.wait()
    full, final = drv.stats("done"), drv.final_stats("done")
    assert not full.populated and final.cpu_usage_us == full.cpu_usage_us
    assert (final.memory_peak, final.memory_limit, final.memory_high, final.pids_max_events) == \
        (full.memory_peak, full.memory_limit, full.memory_high, full.pids_max_events)
    assert final.memory_events == full.memory_events


def test_the_final_read_runs_off_the_loop_and_the_ladder_step_back_on_it(engine, children):  # noqa: F811
    on_loop: queue.Queue = queue.Queue()
    engine.reads.start(on_loop.put)
    engine.ends.start(on_loop.put)
    readers = []
    final_stats = engine.driver.final_stats
    engine.driver.final_stats = lambda rel: (readers.append(threading.current_thread()), final_stats(rel))[1]
    p, tc = _tool(engine, children, ["sleep", "0.1"])
    p.wait()
    engine.on_event(_exit(p.pid))
    engine.on_event(_exit(p.pid))  # a repeated look while the read is in flight reads once
    assert tc.id in engine.toolcalls  # the read is in flight; nothing decided on this thread yet
    while ("toolcall.end", tc.id) not in engine.ends_seen:
        on_loop.get(timeout=10)()
    assert len(readers) == 1 and readers[0] is not threading.current_thread()
    assert tc.id not in engine.toolcalls and not engine.driver.exists(tc.cgroup)
