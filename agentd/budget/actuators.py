"""The budget's one kernel-facing effect: the memory limit of agents/ (with, on v1, the OOM
killer disabled there so the kernel pauses instead of killing). Settings for the kinds'
saved-values log: the value before agentd's first change is restored on revert."""

from __future__ import annotations

import os

from agentd.cgroups import fs
from agentd.cgroups.driver import CgroupDriver
from agentd.kinds.settings import CgroupKnob


class V1MemoryBudget:
    """memory.limit_in_bytes (+ memory.memsw.limit_in_bytes = the same: no swap past the
    budget) and oom_kill_disable, written in the order v1 accepts (memsw >= limit always)."""

    name = "budget:v1-memory"

    def __init__(self, driver: CgroupDriver):
        self.driver = driver

    def _file(self, target: str, name: str) -> str:
        return self.driver.knob_path(target, name)

    def read(self, target: str) -> dict:
        memsw = self._file(target, "memory.memsw.limit_in_bytes")
        oom = fs.read(self._file(target, "memory.oom_control"))
        disabled = next((line.split()[1] for line in oom.splitlines() if line.startswith("oom_kill_disable")), "0")
        return {"limit": fs.read(self._file(target, "memory.limit_in_bytes")).strip(),
                "memsw": fs.read(memsw).strip() if os.path.exists(memsw) else None,
                "oom_kill_disable": disabled}

    def write(self, target: str, value: dict) -> None:
        limit_file = self._file(target, "memory.limit_in_bytes")
        memsw_file = self._file(target, "memory.memsw.limit_in_bytes")
        writes = [(limit_file, value["limit"])]
        if value.get("memsw") is not None and os.path.exists(memsw_file):
            raising = int(value["limit"]) > int(fs.read(limit_file).strip())
            memsw = (memsw_file, value["memsw"])
            writes = [memsw, *writes] if raising else [*writes, memsw]
        for path, text in writes:
            fs.write(path, str(text))
        fs.write(self._file(target, "memory.oom_control"), str(value["oom_kill_disable"]))


def budget_setting(driver: CgroupDriver):
    """The Setting for this driver, and a function turning a byte budget into its value."""
    if driver.kind == "v2":
        return CgroupKnob(driver, "memory.max"), lambda budget: str(budget)
    return V1MemoryBudget(driver), lambda budget: {"limit": str(budget), "memsw": str(budget), "oom_kill_disable": "1"}


def hold_setting(driver: CgroupDriver):
    """The Setting that holds one agent (agents/<name>) at a cap, and a function turning a
    byte cap into its value: v2 memory.high (the kernel throttles it there); v1 its limit
    with the OOM killer disabled (the kernel pauses its next allocation there)."""
    if driver.kind == "v2":
        return CgroupKnob(driver, "memory.high"), lambda cap: str(cap)
    return V1MemoryBudget(driver), lambda cap: {"limit": str(cap), "memsw": str(cap), "oom_kill_disable": "1"}
