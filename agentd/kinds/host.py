"""The daemon's side of the kind contract: builds each kind's context, calls every hook of
every kind the same way, and keeps one kind's failure from reaching the others or the
daemon (a failing hook is logged, counted, journaled at most once a minute, and shown in
status). Called only from the event loop's thread.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable, Iterable

from agentd.kinds.changes import ChangeLog
from agentd.kinds.context import KindContext, SharedModel
from agentd.kinds.contract import Command, Kind, KindReport, check_commands, check_kind
from agentd.kinds.state import KindDatabase

log = logging.getLogger("agentd")
ERROR_JOURNAL_EVERY_S = 60.0


class KindHost:
    def __init__(self, kinds: list[Kind], *, driver, model: SharedModel, db: KindDatabase,
                 journal_emit: Callable[..., dict], clock: Callable[[], float],
                 run_blocking: Callable[..., Any] | None = None, facts: dict | None = None,
                 engine: Kind | None = None):
        """`engine`: the tool-call engine (agentd.toolcalls.kind), the room whose model every
        kind reads. It gets its context here like the others, and the same hooks: first
        (re-adopted before the others get their sections, its tick and events before
        theirs), stopped last, and not isolated: its failures reach the daemon (kind.py
        says why). Its gated placement is the one hook on the tracker's thread."""
        self.kinds = kinds
        self.engine = engine
        self.db = db
        self.journal_emit = journal_emit
        self.clock = clock
        self.reports: dict[str, KindReport] = {}
        self.contexts: dict[str, KindContext] = {}
        self._last_error_journaled: dict[tuple[str, str], float] = {}
        self._pending: deque = deque()
        self._dispatching = False
        self._quiet = False
        for kind in ([engine] if engine is not None else []) + list(kinds):
            prefix = kind.journal_prefix or kind.name
            state = db.view(kind.name)
            ctx = KindContext(name=kind.name, prefix=prefix, driver=driver, model=model, state=state,
                              changes=ChangeLog(prefix, state, journal_emit, clock), journal_emit=journal_emit,
                              clock=clock, facts=dict(facts or {}))
            if run_blocking is not None:
                ctx.run_blocking = run_blocking
            self.contexts[kind.name] = ctx
            kind.attach(ctx)
            if kind is engine:
                check_kind(engine)
                continue
            self.reports[kind.name] = KindReport(kind.name)
            check_commands(kind.name, kind.commands())

    # ------------------------------------------------------------------ dispatch
    def _call(self, kind: Kind, hook: str, *args) -> Any:
        try:
            return getattr(kind, hook)(*args)
        except Exception as exc:
            report = self.reports[kind.name]
            report.errors += 1
            report.last_error = f"{hook}: {type(exc).__name__}: {exc}"
            now = self.clock()
            key = (kind.name, hook)
            if now - self._last_error_journaled.get(key, -1e18) < ERROR_JOURNAL_EVERY_S:
                log.debug("policy kind %s failed in %s again: %s", kind.name, hook, exc)
            else:  # the traceback in the log and a journal record, at most once a minute per hook
                log.exception("policy kind %s failed in %s", kind.name, hook)
                self._last_error_journaled[key] = now
                self._quiet = True  # the host's own error record is not fed back to the kinds
                try:
                    self.journal_emit(f"{self.contexts[kind.name].prefix}.error",
                                      f"policy kind {kind.name} failed in {hook}: {exc}; the other kinds go on",
                                      level="error", hook=hook, errors=report.errors)
                finally:
                    self._quiet = False
            return None

    def on_policy(self, policies: Iterable[Any]) -> int:
        """Hand each kind its section from every policy in force ({policy name: section}),
        the engine first (its `toolcalls`). Returns how many live tool calls got new limits."""
        policies = list(policies)
        changed = 0
        if self.engine is not None:
            changed = self.engine.on_policy({p.name: p.toolcalls for p in policies}) or 0
        for kind in self.kinds:
            sections = {p.name: p.sections[kind.name] for p in policies
                        if kind.name in (getattr(p, "sections", None) or {})}
            self._call(kind, "on_policy", sections)
        return changed

    def readopt_engine(self) -> dict[str, int]:
        """Re-adoption of agents and tool calls, before the other kinds get their sections
        and re-adopt (they read what it takes back). A failure stops start-up."""
        return dict(self.engine.readopt()) if self.engine is not None else {}

    def readopt(self) -> dict[str, dict[str, int]]:
        out = {}
        for kind in self.kinds:
            counts = self._call(kind, "readopt") or {}
            self.reports[kind.name].readopted = dict(counts)
            out[kind.name] = dict(counts)
        return out

    def on_event(self, event: Any) -> None:
        """A kernel event or a journal record. A kind that journals while handling one
        re-enters here: queue it and deliver it after the current one (in order)."""
        if self._quiet:
            return
        self._pending.append(event)
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._pending:
                ev = self._pending.popleft()
                for kind in self.kinds:
                    self._call(kind, "on_event", ev)
        finally:
            self._dispatching = False

    def on_kernel_event(self, event: Any) -> None:
        """A tracker event: the engine's model first (the process tree, tool calls), then
        the kinds, who see it even when the engine failed on it (the failure then reaches
        the daemon, which logs it)."""
        try:
            if self.engine is not None:
                self.engine.on_event(event)
        finally:
            self.on_event(event)

    def on_sample(self, snapshot: Any) -> None:
        for kind in self.kinds:
            self._call(kind, "on_sample", snapshot)

    def on_tick(self, now: float) -> None:
        """The engine's tick first (tool calls settled before the budget looks at them)."""
        try:
            if self.engine is not None:
                self.engine.on_tick(now)
        finally:
            for kind in self.kinds:
                self._call(kind, "on_tick", now)

    def stop(self, revert: bool = False) -> None:
        for kind in reversed(self.kinds):
            self._call(kind, "stop", revert)
        if self.engine is not None:
            self.engine.stop(revert)

    # ------------------------------------------------------------------ reads
    def commands(self) -> list[tuple[str, Command]]:
        return [(kind.name, cmd) for kind in self.kinds for cmd in (self._call(kind, "commands") or [])]

    def status(self) -> dict:
        out = {}
        for kind in self.kinds:
            ctx, report = self.contexts[kind.name], self.reports[kind.name]
            out[kind.name] = {**(self._call(kind, "status") or {}), "degraded": list(ctx.degraded),
                              "errors": report.errors, "last_error": report.last_error,
                              "readopted": report.readopted, "saved_settings": len(ctx.changes.saved())}
        return out

    def degraded(self) -> list[str]:
        return [f"{name}: {line}" for name, ctx in self.contexts.items() for line in ctx.degraded]

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind in self.kinds:
            for key, value in (self._call(kind, "metrics") or {}).items():
                out[f"agentd_{kind.name}_{key}"] = float(value)
            out[f"agentd_{kind.name}_hook_errors_total"] = float(self.reports[kind.name].errors)
        return out
