"""Saved values: every setting a kind changes is read first, its original value saved (before
the write, so a crash between the two loses nothing) and journaled as target, old, new; a
policy removal or `agentctl <kind> revert` writes the originals back in reverse order
(tuned's save/verify/revert, bpftune's initial values and rollback).

A `Setting` is one kind of effect ("cgroup:cpuset.mems", "sysctl:kernel.task_delayacct"):
read(target) and write(target, value) with JSON-able values. The first change of a
(setting, target) saves the original; later changes keep it, so revert restores the value
from before agentd touched it, not the one before the last change.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

from agentd.kinds.state import KindState

log = logging.getLogger("agentd")
_PREFIX = "change:"


class Setting(Protocol):
    name: str

    def read(self, target: str) -> Any: ...

    def write(self, target: str, value: Any) -> None: ...


@dataclass(frozen=True)
class Change:
    setting: str
    target: str
    old: Any  # the value before agentd's first change (what revert writes back)
    new: Any  # the value agentd wrote last
    ts: float

    def to_json(self) -> dict:
        return asdict(self)


Emit = Callable[..., Any]  # journal.emit-like: (kind, message, level=..., **data)


class ChangeLog:
    def __init__(self, prefix: str, state: KindState, emit: Emit, clock: Callable[[], float]):
        self.prefix = prefix  # journal prefix of the owning kind: "<prefix>.changed"
        self.state = state
        self.emit = emit
        self.clock = clock
        self.settings: dict[str, Setting] = {}

    def register(self, *settings: Setting) -> None:
        """Settings must be registered (at attach) so a restarted daemon can revert them."""
        for s in settings:
            self.settings[s.name] = s

    @staticmethod
    def _key(setting: str, target: str) -> str:
        return f"{_PREFIX}{setting}\x00{target}"

    def apply(self, setting: Setting, target: str, new: Any, reason: str = "", **data) -> Change:
        """Read, save the original (first time), write, journal. Raises what write raises;
        the saved original then stays, so a revert still restores it."""
        self.settings.setdefault(setting.name, setting)
        current = setting.read(target)
        key = self._key(setting.name, target)
        saved = self.state.get(key)
        original = saved["old"] if saved else current
        change = Change(setting.name, target, original, new, self.clock())
        self.state.put(key, change.to_json())
        if current != new:
            setting.write(target, new)
            self.emit(f"{self.prefix}.changed", f"{setting.name} of {target}: {_show(current)} -> {_show(new)}"
                      + (f" ({reason})" if reason else ""), setting=setting.name, target=target, old=current, new=new,
                      **data)
        return change

    def saved(self) -> list[Change]:
        return sorted((Change(**v) for _, v in self.state.items(_PREFIX)), key=lambda c: c.ts)

    def revert(self, setting: str, target: str, reason: str = "") -> Change | None:
        key = self._key(setting, target)
        value = self.state.get(key)
        if value is None:
            return None
        change = Change(**value)
        impl = self.settings.get(setting)
        if impl is None:
            log.warning("cannot revert %s of %s: no actuator registered for it; the saved value stays", setting, target)
            return None
        impl.write(target, change.old)
        self.state.delete(key)
        self.emit(f"{self.prefix}.reverted", f"{setting} of {target}: back to {_show(change.old)}"
                  + (f" ({reason})" if reason else ""), setting=setting, target=target, old=change.new, new=change.old)
        return change

    def revert_all(self, target_prefix: str = "", reason: str = "") -> list[Change]:
        """Newest first. A failure is journaled and the rest still reverted."""
        done = []
        for change in reversed(self.saved()):
            if not change.target.startswith(target_prefix):
                continue
            try:
                if self.revert(change.setting, change.target, reason) is not None:
                    done.append(change)
            except OSError as exc:
                self.emit(f"{self.prefix}.revert_failed", f"could not put back {change.setting} of {change.target}: {exc}",
                          level="warn", setting=change.setting, target=change.target, old=change.new, new=change.old)
        return done

    def forget(self, target_prefix: str) -> int:
        """Drop saved values whose target is gone (a removed cgroup, an exited process)."""
        n = 0
        for change in self.saved():
            if change.target.startswith(target_prefix):
                self.state.delete(self._key(change.setting, change.target))
                n += 1
        return n

    def drift(self) -> list[dict]:
        """Settings whose live value is no longer the one agentd wrote (someone else changed it)."""
        out = []
        for change in self.saved():
            impl = self.settings.get(change.setting)
            if impl is None:
                continue
            try:
                live = impl.read(change.target)
            except OSError:
                continue
            if live != change.new:
                out.append({"setting": change.setting, "target": change.target, "wrote": change.new, "live": live})
        return out


def _show(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
