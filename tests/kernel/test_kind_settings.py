"""The kinds' shared actuators on real cgroups: a knob written through the saved-values log
is what the kernel then holds, and a revert (also by a new log over the same file, as
after a restart) puts the kernel's original value back."""

from __future__ import annotations

import pytest

from agentd.cgroups import fs
from agentd.kinds.changes import ChangeLog
from agentd.kinds.settings import CgroupKnob, Sysctl
from agentd.kinds.state import KindDatabase
from tests.kernel.cgroup_fixtures import driver, children, needs_root  # noqa: F401 - fixtures

pytestmark = [pytest.mark.kernel, needs_root]


def _log(db, events):
    return ChangeLog("test", db.view("test"), lambda kind, msg, **d: events.append((kind, d)), clock=lambda: 1.0)


def test_cgroup_knob_change_and_revert_through_the_kernel(driver, tmp_path):  # noqa: F811
    driver.create("jobs/j1")
    knob = CgroupKnob(driver, "pids.max")
    path = driver.knob_path("jobs/j1", "pids.max")
    original = fs.read(path).strip()
    events: list = []
    db = KindDatabase(tmp_path / "kinds.db")
    changes = _log(db, events)
    changes.apply(knob, "jobs/j1", "77")
    changes.apply(knob, "jobs/j1", "66")
    assert fs.read(path).strip() == "66"  # the kernel holds the new value
    assert [(k, d["old"], d["new"]) for k, d in events] == [("test.changed", original, "77"), ("test.changed", "77", "66")]
    db.close()

    db2 = KindDatabase(tmp_path / "kinds.db")  # a restarted daemon
    again = _log(db2, events)
    again.register(CgroupKnob(driver, "pids.max"))
    assert [c.old for c in again.saved()] == [original]
    assert again.revert_all() and fs.read(path).strip() == original
    db2.close()


def test_knob_path_finds_each_controllers_hierarchy(driver):  # noqa: F811
    driver.create("jobs/j2")
    for knob in ("cgroup.procs", "pids.max", "memory.pressure"):
        assert fs.read(driver.knob_path("jobs/j2", knob)) is not None
    with pytest.raises(OSError):
        driver.knob_path("jobs/j2", "nosuchcontroller.value")


def test_sysctl_setting_round_trip(tmp_path):
    # A fixture /proc/sys tree: the format is one value per file, as in the kernel's.
    (tmp_path / "kernel").mkdir()
    (tmp_path / "kernel" / "task_delayacct").write_text("0\n")
    s = Sysctl("kernel.task_delayacct", root=str(tmp_path))
    db = KindDatabase(tmp_path / "kinds.db")
    changes = _log(db, [])
    changes.apply(s, "host", "1")
    assert s.read() == "1"
    changes.revert_all()
    assert s.read() == "0"
