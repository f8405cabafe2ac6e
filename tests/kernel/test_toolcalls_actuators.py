"""The tool-call engine's actuators on real processes and cgroups: each returns the value it
replaces, and the runtime's oom_score_adj (lowered to -900 at registration) is back to
what it was when its agent ends, checked in /proc at the moment the runtime is killed."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.core.journal import Journal
from agentd.procfs import read_proc
from agentd.core.store import Store
from agentd.kinds.changes import ChangeLog
from agentd.kinds.context import KindContext, SharedModel
from agentd.kinds.state import KindDatabase
from agentd.policy.schema import Policy
from agentd.toolcalls import model
from agentd.procfs import read_oom_score_adj
from agentd.toolcalls.actuators import Actuators, oom_score_adj, restore_oom_score_adj
from agentd.toolcalls.kind import ToolCallEngine
from tests.kernel.cgroup_fixtures import driver, children, needs_root  # noqa: F401 - fixtures

pytestmark = [pytest.mark.kernel, needs_root]


def _sleeper(children, score: int):  # noqa: F811
    p = children.cmd(["sleep", "60"])
    Path(f"/proc/{p.pid}/oom_score_adj").write_text(str(score))
    return p


# Values at or above 0: lowering below a process's oom_score_adj_min (0 unless a process with
# CAP_SYS_RESOURCE set it) needs that capability, which a container's root may lack (this
# host's does); the engine then says so (oom.shield_unavailable) and has nothing to restore.


def test_oom_score_adj_returns_the_value_it_replaced_and_restores_only_the_same_process(children):  # noqa: F811
    p = _sleeper(children, 250)
    start = read_proc(p.pid).start
    w = oom_score_adj(p.pid, 700, keep_old=True)
    assert (w.written, w.old, read_oom_score_adj(p.pid)) == (True, 250, 700)
    assert not restore_oom_score_adj(p.pid, start + 1, w.old)  # another process's start time: untouched
    assert read_oom_score_adj(p.pid) == 700
    assert restore_oom_score_adj(p.pid, start, w.old) and read_oom_score_adj(p.pid) == 250


def test_move_back_returns_where_the_process_had_gone(driver, children):  # noqa: F811
    act = Actuators(driver)
    p = children.cmd(["sleep", "60"])
    driver.create("home")
    driver.create("elsewhere")
    assert act.move(p.pid, "home")
    assert act.move_back(p.pid, "home") is None  # already there: nothing replaced
    assert act.move(p.pid, "elsewhere")
    gone_to = act.move_back(p.pid, "home")
    assert gone_to is not None and gone_to.endswith("/elsewhere")
    assert p.pid in driver.procs("home") and p.pid not in driver.procs("elsewhere")


def test_the_runtimes_oom_score_adj_is_restored_when_its_agent_ends(driver, children, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(model, "RUNTIME_OOM_SCORE_ADJ", 50)  # a shield any root may write (see above)
    store = Store(tmp_path / "agentd.db")
    db = KindDatabase(tmp_path / "kinds.db")
    engine = ToolCallEngine(driver, store, Journal(store), lambda name: Policy("default"))
    state = db.view(engine.name)
    engine.attach(KindContext(name=engine.name, prefix=engine.journal_prefix, driver=driver, model=SharedModel(),
                              state=state, changes=ChangeLog(engine.journal_prefix, state, lambda *a, **k: {}, lambda: 0.0),
                              journal_emit=lambda *a, **k: {}))
    try:
        p = _sleeper(children, 123)
        agent = engine.register_agent(p.pid, 0, "oom-restore", None)
        assert read_oom_score_adj(p.pid) == model.RUNTIME_OOM_SCORE_ADJ
        seen_at_kill: dict[str, int | None] = {}
        kill = engine.act.kill

        def watching_kill(rel: str) -> None:
            if rel.endswith("/runtime"):
                seen_at_kill[rel] = read_oom_score_adj(p.pid)
            kill(rel)

        engine.act.kill = watching_kill
        engine.end_agent(agent, "test over")
        assert seen_at_kill == {f"{agent.cgroup}/runtime": 123}
        assert state.get("runtime_oom:oom-restore") is None  # nothing left to restore after a restart
    finally:
        store.close()
        db.close()
