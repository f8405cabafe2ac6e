"""The tiers kind: wires the topology, the pure planner and the thin actuators to the
daemon's hooks.

Every second (on_tick) one round runs: the managed processes are listed from the shared
model (tool calls, agent runtimes, jobs/<name> cgroups) on the loop; a worker thread reads
where their pages sit (numa_maps), their cgroups' PSI and swap; back on the loop the
planner decides; knobs are written through ctx.changes (saved first, reverted on policy
removal); migrations and reclaim steps run in a worker thread, one round at a time, and
their results come back to the loop to be journaled ("tier.migrated", "tier.reclaimed").
Pages moved are remembered by origin, so removing the policy moves them back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import replace
from typing import Any

from agentd.api.contract import ApiError
from agentd.api.limits import RateLimiter
from agentd.api.validation import Field
from agentd.cgroups import fs, layout
from agentd.kinds.contract import Access, Command, Kind
from agentd.kinds.settings import CgroupKnob, Sysctl
from agentd.tiers import actuators, model, observe
from agentd.tiers.model import ManagedProc, MigrateProc, PlannerInput, PlannerState, ReclaimCgroup, SetKnob
from agentd.tiers.policy import TiersSection, check_against
from agentd.tiers.topology import Topology, discover

log = logging.getLogger("agentd")
ROUND_S = 1.0
KNOBS = ("cpuset.mems", "memory.swap.max", "memory.zswap.max", "memory.high")
MAX_RUNS_SAVED = 200_000  # page runs remembered per process for a restore
RESTORE_DEADLINE_S = 120.0
LAUNCH_SCOPES = {"agents": "runtimes", "jobs": "jobs"}  # agentctl run's scopes -> the classes' scopes
MAX_ARGV_ITEMS, MAX_ARGV_BYTES, MAX_PATH = 4096, 256 << 10, 4096
LAUNCH_GRACE_S = 60.0  # how long `agentctl run` may sit between registration and exec unplaced
# tier.launch rows per non-admin uid: any local user may ask for plans (up to the API's 100
# requests/s), and each row journaled pushes an older row of the journal out. Beyond this a
# plan is still answered, only counted; the next row journaled says how many were not.
LAUNCH_ROWS_PER_S, LAUNCH_ROWS_BURST = 0.5, 30.0


class TiersKind(Kind):
    name = "tiers"
    journal_prefix = "tier"

    def __init__(self, sys_root: str = "/sys", proc_root: str = "/proc"):
        self.sys_root, self.proc_root = sys_root, proc_root
        self.sections: dict[str, TiersSection] = {}
        self.refused: dict[str, str] = {}  # class -> reason (host checks)
        self.planner = PlannerState()
        self.topology: Topology | None = None
        self.runs: dict[str, dict] = {}  # proc key -> {"pid", "runs": [(addr, n, node)]}
        self.counters = {"rounds_total": 0, "migrated_bytes_total": 0, "reclaimed_bytes_total": 0,
                         "migration_errors_total": 0, "knob_errors_total": 0, "restored_bytes_total": 0,
                         "launch_plans_total": 0, "launch_plans_unjournaled_total": 0}
        self.last_migration: dict = {}
        self.suspended = False  # after `agentctl tiers revert`, until the next policy load
        self._busy = False
        self._next_round = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._delays: observe.DelayReader | None = None
        self._launch_seen: dict[str, float] = {}  # `agentctl run` processes not yet exec'd -> first seen
        self._launch_rows = RateLimiter(LAUNCH_ROWS_PER_S, LAUNCH_ROWS_BURST, max_keys=1024)
        self._launch_unjournaled: dict[int, int] = {}  # uid -> plans answered since its last row

    # ------------------------------------------------------------------ hooks
    def attach(self, ctx) -> None:
        super().attach(ctx)
        self.knobs = {f: CgroupKnob(ctx.driver, f) for f in KNOBS} if ctx.driver is not None else {}
        self.delayacct = Sysctl("kernel.task_delayacct", root=os.path.join(self.proc_root, "sys"))
        self.weights = actuators.InterleaveWeight(os.path.join(self.sys_root, "kernel/mm/mempolicy/weighted_interleave"))
        ctx.changes.register(*self.knobs.values(), self.delayacct, self.weights)
        self.topology = discover(self.sys_root, self.proc_root)
        facts = dict(ctx.facts, memory_reclaim=self._root_has("memory.reclaim"))
        for line in degrade_lines(self.topology, facts):
            ctx.degrade(line)

    def readopt(self) -> dict[str, int]:
        """Page origins of processes moved by the previous daemon (still alive) come back,
        so a later policy removal still restores them."""
        n = 0
        for key, value in list(self.ctx.state.items("runs:")):
            pkey = key[len("runs:"):]
            pid = int(pkey.split(":")[0])
            if _start_of(pid, self.proc_root) == pkey:
                self.runs[pkey] = value
                n += 1
            else:
                self.ctx.state.delete(key)
        return {"moved_processes": n, "saved_settings": len(self.ctx.changes.saved())}

    def on_policy(self, sections: dict[str, Any]) -> None:
        had = bool(self.sections)
        self.sections = {k: v for k, v in sections.items() if isinstance(v, TiersSection) and v.classes}
        self.suspended = False
        self.planner = PlannerState(reclaim=self.planner.reclaim)  # re-place under the new policy
        self.topology = discover(self.sys_root, self.proc_root)
        self.refused = {}
        for policy, section in sorted(self.sections.items()):
            for line in check_against(section, self.topology):
                level = "error" if "nothing applied" in line else "warn"
                self.ctx.emit("policy", f"policy {policy}: {line}", level=level, policy=policy)
            for cls in section.classes:
                plan = model.plan_class(cls, self.topology)
                if plan.error:
                    self.refused[f"{policy}/{cls.name}"] = plan.error
        if not self.sections:
            if had or self.ctx.changes.saved() or self.runs or any(True for _ in self.ctx.state.items("runs:")):
                self._revert("the tiers policy was removed")
            return
        self._apply_host_settings()

    def on_tick(self, now: float) -> None:
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
                self._loop_thread = threading.get_ident()
            except RuntimeError:
                pass
        if self._busy or self.suspended or not self.sections or now < self._next_round:
            return
        self._next_round = now + ROUND_S
        procs = self.managed_procs()
        if not procs:
            if self.planner.kernel_placed:  # the last of them exited: no round will forget them
                self.planner = replace(self.planner, kernel_placed=frozenset())
            return
        # `agentctl run` between registration and exec: left alone for a while (its pages go
        # away at exec), not for ever: argv is the process's own to write
        launching = {p.key for p in procs if model.launching(p)}
        self._launch_seen = {k: self._launch_seen.get(k, now) for k in launching}
        exempt = frozenset(k for k, t in self._launch_seen.items() if now - t < LAUNCH_GRACE_S)
        self._busy = True
        self.ctx.run_blocking(self._observe_round, procs, now, exempt)

    def stop(self, revert: bool) -> None:
        if revert:
            self._revert("agentd stopped with revert", blocking=True)
        if self._delays is not None:
            self._delays.close()
            self._delays = None

    def _root_has(self, file: str) -> bool | None:
        if self.ctx.driver is None:
            return None
        try:
            return os.path.exists(self.ctx.driver.knob_path("", file))
        except (OSError, ValueError):
            return False

    # ------------------------------------------------------------------ the round
    def managed_procs(self) -> list[ManagedProc]:
        """The processes of tool calls, agent runtimes and jobs (on the loop: the model lives here)."""
        driver = self.ctx.driver
        if driver is None:
            return []
        groups: list[tuple[str, str, str]] = []  # (scope, cgroup, name)
        for tc in self.ctx.model.toolcalls().values():
            if getattr(tc, "state", "running") != "done":
                groups.append(("toolcalls", tc.cgroup, tc.name))
        for agent in self.ctx.model.agents().values():
            if getattr(agent, "state", "live") == "live":
                groups.append(("runtimes", layout.runtime_rel(agent.name), agent.name))
        try:
            jobs = driver.children(layout.JOBS) if driver.exists(layout.JOBS) else []
        except OSError:
            jobs = []
        for job in jobs:
            name = job.rsplit("/", 1)[-1]
            groups.append(("jobs", layout.job_rel(name), name))
        out = []
        for scope, cgroup, name in groups:
            try:
                pids = driver.procs(cgroup)
            except (OSError, ValueError):
                continue
            for pid in pids:
                proc = describe_pid(pid, scope, cgroup, name, self.proc_root)
                if proc is not None:
                    out.append(proc)
        return out

    def _observe_round(self, procs: list[ManagedProc], now: float, launching: frozenset = frozenset()) -> None:
        """Worker thread: read the kernel's counters, then hand them to the loop."""
        try:
            topo = discover(self.sys_root, self.proc_root)
            vmas, psi, swapped = {}, {}, {}
            for p in procs:
                if p.key in launching or model.find_class(self.sections, p) is None:
                    continue
                vmas[p.key] = observe.read_vmas(p.pid, self.proc_root, anon_only=True) or []
                if p.cgroup not in psi:
                    psi[p.cgroup] = self._psi(p.cgroup)
                    swapped[p.cgroup] = self._swapped(p.cgroup)
            inp = PlannerInput(topo, tuple(p for p in procs if p.key not in launching), vmas, psi, swapped,
                               observe.PAGE, cpuset=self.ctx.facts.get("cgroup_driver") != "none")
        except Exception as exc:  # a reader bug must not wedge the kind: the round is retried
            log.exception("tiers: observation failed")
            self._post(self._round_failed, f"observation failed: {exc}")
            return
        self._post(self._decide, inp, now)

    def _decide(self, inp: PlannerInput, now: float) -> None:
        try:
            self._decide_round(inp, now)
        except Exception as exc:  # called from a worker's hand-back, outside the host's guard
            log.exception("tiers: a round failed")
            self._round_failed(f"decision failed: {exc}")

    def _decide_round(self, inp: PlannerInput, now: float) -> None:
        self.topology = inp.topology
        self.counters["rounds_total"] += 1
        self.planner, actions = model.decide(self.planner, inp, self.sections, now)
        work = []
        for a in actions:
            if isinstance(a, SetKnob):
                self._set_knob(a)
            else:
                work.append(a)
        if work:
            self.ctx.run_blocking(self._act, work)
        else:
            self._busy = False

    def _act(self, work: list) -> None:
        results = []
        for a in work:
            try:
                if isinstance(a, MigrateProc):
                    if _start_of(a.pid, self.proc_root) != f"{a.pid}:{a.start}":
                        results.append((a, None, "exited before its migration"))
                        continue
                    results.append((a, actuators.move_ranges(a.pid, a.moves, a.rate_mb_s, a.interval_ms,
                                                             page=observe.PAGE), ""))
                elif isinstance(a, ReclaimCgroup):
                    results.append((a, actuators.reclaim(self.ctx.driver, a.cgroup, a.bytes, a.swappiness), ""))
            except Exception as exc:
                results.append((a, None, str(exc)))
        self._post(self._acted, results)

    def _acted(self, results: list) -> None:
        self._busy = False
        try:
            self._journal_results(results)
        except Exception:
            log.exception("tiers: journaling a round's results failed")

    def _journal_results(self, results: list) -> None:
        for a, res, err in results:
            if isinstance(a, MigrateProc):
                key = f"{a.pid}:{a.start}"
                if res is None:
                    self.ctx.emit("migrate_failed", f"pid {a.pid} (class {a.cls}): {err}", level="warn", pid=a.pid)
                    self.counters["migration_errors_total"] += 1
                    continue
                if res.runs and (self.suspended or not self.sections):
                    # the policy went away while this move ran: put these pages back too
                    self.ctx.run_blocking(self._restore_pages, {key: {"pid": a.pid, "runs": res.runs}},
                                          "the policy went away during the move")
                elif res.runs:
                    saved = self.runs.setdefault(key, {"pid": a.pid, "runs": []})
                    saved["runs"] = (saved["runs"] + [list(r) for r in res.runs])[:MAX_RUNS_SAVED]
                    self.ctx.state.put(f"runs:{key}", saved)
                self.counters["migrated_bytes_total"] += res.moved_bytes
                self.counters["migration_errors_total"] += sum(res.errors.values())
                self.last_migration = {"pid": a.pid, "class": a.cls, "rate_limit_mb_s": a.rate_mb_s, **res.to_json()}
                self.ctx.emit("migrated", f"pid {a.pid} (class {a.cls}): moved {res.moved_bytes >> 20} MiB in "
                              f"{res.seconds:.2f}s ({res.mb_s:.0f} MB/s, limit {a.rate_mb_s:g})"
                              + (" - the process exited" if res.exited else ""), pid=a.pid, cls=a.cls,
                              **res.to_json(), delays=self._delay_of(a.pid))
            elif isinstance(a, ReclaimCgroup):
                if res is None:
                    self.ctx.emit("reclaim_failed", f"{a.cgroup}: {err}", level="warn", cgroup=a.cgroup)
                    continue
                got, how = res
                self.counters["reclaimed_bytes_total"] += got
                self.ctx.emit("reclaimed", f"{a.cgroup} (class {a.cls}): {a.reason}; {how}", cgroup=a.cgroup,
                              asked=a.bytes, reclaimed=got, how=how)

    def _round_failed(self, reason: str) -> None:
        self._busy = False
        self.ctx.emit("error", f"tiers round: {reason}", level="warn")

    def _post(self, fn, *args) -> None:
        """Run fn on the loop's thread (directly when already there: unit tests, sync runners)."""
        if self._loop is not None and threading.get_ident() != self._loop_thread and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)
        else:
            fn(*args)

    # ------------------------------------------------------------------ effects
    def _set_knob(self, a: SetKnob) -> None:
        knob = self.knobs.get(a.file)
        if knob is None:
            return
        try:
            path = self.ctx.driver.knob_path(a.cgroup, a.file)
            if not os.path.exists(path):
                raise FileNotFoundError(path)
            self.ctx.changes.apply(knob, a.cgroup, a.value, reason=a.reason)
        except (OSError, ValueError) as exc:
            self.counters["knob_errors_total"] += 1
            why = "this cgroup has no such file (cgroup v1 or the controller is off)" \
                if isinstance(exc, FileNotFoundError) else str(exc)
            self.ctx.emit("knob_skipped", f"{a.file} of {a.cgroup}: not set ({why}); {a.reason}", level="warn",
                          cgroup=a.cgroup, file=a.file)

    def _apply_host_settings(self) -> None:
        # delay accounting: the journal then shows what a placement cost (swap-in, thrashing)
        try:
            if self.delayacct.read() == "0":
                self.ctx.changes.apply(self.delayacct, "host", "1", reason="tiers: delay accounting for placements")
        except OSError as exc:
            self.ctx.degrade(f"kernel.task_delayacct cannot be turned on ({exc.strerror}): no delay figures")
        # weighted interleave weights are global: set them only when every class agrees
        wanted: dict[int, set[int]] = {}
        for section in self.sections.values():
            for cls in section.classes:
                plan = model.plan_class(cls, self.topology)
                if plan.mode == "weighted_interleave":
                    for n, w in plan.weights.items():
                        wanted.setdefault(n, set()).add(w)
        if not wanted:
            return
        if any(len(ws) > 1 for ws in wanted.values()):
            self.ctx.emit("policy", "classes ask for different weighted-interleave ratios; the kernel's weights are "
                          "global, so they are left as they are and each process's pages are moved to its own ratio",
                          level="warn")
            return
        for n, ws in sorted(wanted.items()):
            try:
                self.ctx.changes.apply(self.weights, f"node{n}", str(next(iter(ws))), reason="tiers: interleave ratio")
            except OSError as exc:
                self.ctx.emit("knob_skipped", f"weighted_interleave/node{n}: {exc}", level="warn")

    def _revert(self, reason: str, blocking: bool = False) -> None:
        """Settings back (newest first), then pages back where they were."""
        self.ctx.changes.revert_all(reason=reason)
        runs, self.runs = self.runs, {}
        for key, value in list(self.ctx.state.items("runs:")):  # also a previous daemon's (before readopt)
            runs.setdefault(key[len("runs:"):], value)
            self.ctx.state.delete(key)
        if runs:
            if blocking:
                self._restore_pages(runs, reason)
            else:
                self.ctx.run_blocking(self._restore_pages, runs, reason)

    def _restore_pages(self, runs: dict, reason: str) -> None:
        for key, saved in runs.items():
            pid = saved["pid"]
            if _start_of(pid, self.proc_root) != key:
                continue
            res = actuators.restore_runs(pid, [tuple(r) for r in saved["runs"]], page=observe.PAGE)
            self._post(self._restored, pid, res, reason)

    def _restored(self, pid: int, res, reason: str) -> None:
        self.counters["restored_bytes_total"] += res.moved_bytes
        self.ctx.emit("restored", f"pid {pid}: {res.moved_bytes >> 20} MiB back on their nodes ({reason})", pid=pid,
                      **res.to_json())

    # ------------------------------------------------------------------ reads
    def _psi(self, cgroup: str) -> float | None:
        try:
            text = fs.read(self.ctx.driver.knob_path(cgroup, "memory.pressure"))
        except (OSError, ValueError):
            return None
        return observe.parse_psi(text).get("some", {}).get("avg10")

    def _swapped(self, cgroup: str) -> int:
        total = 0
        for f in ("memory.swap.current", "memory.zswap.current"):
            try:
                total += int(fs.read(self.ctx.driver.knob_path(cgroup, f)).strip())
            except (OSError, ValueError):
                pass
        return total

    def _delay_of(self, pid: int) -> dict | None:
        try:
            if self._delays is None:
                self._delays = observe.DelayReader()
            return self._delays.read(pid)
        except Exception:
            return None

    def snapshot(self, managed: list[ManagedProc]) -> dict:
        """Host tiers and where each managed process's memory sits (worker thread)."""
        topo = discover(self.sys_root, self.proc_root)
        procs = []
        for p in managed:
            found = model.find_class(self.sections, p)
            per_node = observe.node_bytes_of_pid(p.pid, self.proc_root)
            if per_node is None:
                continue
            row = {"pid": p.pid, "scope": p.scope, "cgroup": p.cgroup, "name": p.name, "comm": p.comm, "uid": p.uid,
                   "node_bytes": {str(n): b for n, b in sorted(per_node.items())},
                   "swap_bytes": observe.read_swap_of_pid(p.pid, self.proc_root) or 0,
                   "psi_some_avg10": self._psi(p.cgroup), "policy": None, "class": None, "plan": None,
                   "on_target_pct": None}
            if found:
                plan = model.plan_class(found[1], topo)
                row.update(policy=found[0], **{"class": found[1].name}, plan=plan.to_json(),
                           on_target_pct=round(model.on_target_pct(plan, per_node), 1))
            procs.append(row)
        return {"host": topo.to_json(), "degraded": list(self.ctx.degraded), "processes": procs,
                "refused": dict(self.refused), "suspended": self.suspended}

    # ------------------------------------------------------------------ API
    def commands(self) -> list[Command]:
        return [
            Command("show", "GET", Access.ANYONE, self.show, {"pid": Field((str,))},
                    "host tiers and where each managed process's memory sits"),
            Command("status", "GET", Access.ANYONE, lambda caller, q: self.status(), {}, "the kind's state"),
            Command("revert", "POST", Access.ADMIN, self.revert, {}, "put back every setting and page (until the next policy load)"),
            Command("launch_plan", "POST", Access.ANYONE, self.launch_plan,
                    {"argv": Field((list,), required=True), "scope": Field((str,), required=True),
                     "class": Field((str,)), "exe": Field((str,))},
                    "the mempolicy `agentctl run` sets before exec for the caller's own command (changes nothing)"),
        ]

    async def launch_plan(self, caller, body: dict) -> dict:
        """The class and mempolicy for the caller's own launch: matched as the caller (its
        uid from SO_PEERCRED, its agent or job), never as a process it names."""
        argv, scope, class_name, exe = _launch_request(body)
        if not self.sections or self.suspended:
            return {"class": None, "reason": "no tiers policy in force" if not self.sections else
                    "tier placement is paused (agentctl tiers revert) until the next policy load"}
        kscope = LAUNCH_SCOPES[scope]
        pid, uid = caller.peer.pid, caller.peer.uid
        agent = caller.agent if kscope == "runtimes" else None
        loop = asyncio.get_running_loop()
        who = await loop.run_in_executor(None, self._launch_identity, pid, kscope, agent)
        start, name, cgroup = who
        proc = ManagedProc(pid=pid, start=start, scope=kscope, cgroup=cgroup, name=name,
                           comm=os.path.basename(argv[0])[:15], exe=exe, argv=tuple(argv), uid=uid)
        if class_name is not None:
            found = next(((p, c) for p in sorted(self.sections) for c in self.sections[p].classes
                          if c.name == class_name), None)
            if found is None:
                raise ApiError(404, "not_found", f"no tiers class named {class_name!r} in the policies in force",
                               "class")
        else:
            found = model.find_class(self.sections, proc)
        if found is None:
            return {"class": None, "reason": f"no tiers class matches {argv[0]} in scope {scope}"}
        policy, cls = found
        from agentd.tiers.launch import plan_launch

        doc = await loop.run_in_executor(None, lambda: plan_launch(cls, discover(self.sys_root, self.proc_root),
                                                                   policy, self.sys_root))
        self.counters["launch_plans_total"] += 1
        if caller.role != "admin" and self._launch_rows.check(uid) > 0:  # a root agent is limited too
            self.counters["launch_plans_unjournaled_total"] += 1
            self._launch_unjournaled[uid] = self._launch_unjournaled.pop(uid, 0) + 1
            while len(self._launch_unjournaled) > 1024:
                del self._launch_unjournaled[next(iter(self._launch_unjournaled))]
            return doc
        skipped = self._launch_unjournaled.pop(uid, 0)
        what = doc["error"] or f"{doc['mode']}" + (f" node {','.join(map(str, doc['nodes']))}" if doc["nodes"] else "")
        whose = (f"agent {name}" if kscope == "runtimes" else f"job {name}") if name else f"uid {uid}"
        self.ctx.emit("launch", f"pid {pid} ({whose}): class {cls.name} of policy {policy} at launch: {what}"
                      + (f" ({skipped} earlier launch plans of uid {uid} not journaled: too many)" if skipped else ""),
                      level="warn" if doc["error"] else "info",
                      pid=pid, uid=uid, scope=scope, name=name, cls=cls.name, policy=policy, mode=doc["mode"],
                      nodes=doc["nodes"], error=doc["error"], argv0=argv[0][:256], unjournaled_before=skipped,
                      **({"agent": name} if kscope == "runtimes" and name else {}))
        return doc

    def _launch_identity(self, pid: int, kscope: str, agent: str | None) -> tuple[int, str, str]:
        """(start ticks, agent or job name, cgroup) of the asking process (worker thread)."""
        from agentd import procfs

        st = procfs.read_stat(pid, self.proc_root)
        start = st.start_ticks if st else 0
        if kscope == "runtimes":
            return start, agent or "", layout.runtime_rel(agent) if agent else ""
        driver = self.ctx.driver
        try:
            for job in driver.children(layout.JOBS) if driver is not None and driver.exists(layout.JOBS) else []:
                name = job.rsplit("/", 1)[-1]
                if pid in driver.procs(layout.job_rel(name)):
                    return start, name, layout.job_rel(name)
        except (OSError, ValueError):
            pass
        return start, "", ""

    async def show(self, caller, query: dict) -> dict:
        pid = None
        if query.get("pid") not in (None, ""):
            try:
                pid = int(query["pid"])
            except ValueError:
                raise ApiError(400, "invalid_value", f"pid must be an integer, got {query['pid']!r}", "pid") from None
            if not 0 < pid < 1 << 22:
                raise ApiError(400, "invalid_value", f"pid must be between 1 and {1 << 22}, got {pid}", "pid")
        procs = [p for p in self.managed_procs() if pid is None or p.pid == pid]
        if not caller.admin:  # a user sees only their own processes' placement
            procs = [p for p in procs if p.uid == caller.peer.uid]
        return await asyncio.get_running_loop().run_in_executor(None, self.snapshot, procs)

    def revert(self, caller, body: dict) -> dict:
        saved = len(self.ctx.changes.saved())
        moved = len(self.runs)
        self._revert(f"agentctl tiers revert by uid {caller.peer.uid}")
        self.suspended = True
        self.planner = PlannerState()
        return {"reverted_settings": saved, "restoring_processes": moved, "suspended_until_policy_reload": True}

    def status(self) -> dict:
        topo = self.topology
        return {"classes": sum(len(s.classes) for s in self.sections.values()), "policies": sorted(self.sections),
                "refused": dict(self.refused), "suspended": self.suspended,
                "placed_at_launch": len(self.planner.kernel_placed),
                "tiers": [{"name": t.name, "memory_tier": t.memory_tier, "nodes": list(t.nodes)} for t in topo.tiers]
                if topo else [], "placed_processes": len(self.planner.placed), "moved_processes": len(self.runs),
                "last_migration": dict(self.last_migration), **self.counters}

    def metrics(self) -> dict[str, float]:
        out = dict(self.counters)
        out["placed_processes"] = len(self.planner.placed)
        out["moved_processes"] = len(self.runs)
        out["placed_at_launch"] = len(self.planner.kernel_placed)
        return out


def _launch_request(body: dict) -> tuple[list[str], str, str | None, str]:
    """launch_plan's body, bounded: (argv, scope, class or None, exe)."""
    argv = body["argv"]
    if not argv or len(argv) > MAX_ARGV_ITEMS or not all(isinstance(a, str) for a in argv):
        raise ApiError(400, "invalid_value", f"argv must be a list of 1 to {MAX_ARGV_ITEMS} strings", "argv")
    if sum(len(a) + 1 for a in argv) > MAX_ARGV_BYTES or "\0" in "".join(argv):
        raise ApiError(400, "invalid_value", f"argv must be at most {MAX_ARGV_BYTES} bytes without NUL", "argv")
    scope = body["scope"]
    if scope not in LAUNCH_SCOPES:
        raise ApiError(400, "invalid_value", f"scope must be one of {', '.join(LAUNCH_SCOPES)}, got {scope!r}", "scope")
    class_name = body.get("class")
    if class_name is not None and not 0 < len(class_name) <= 64:
        raise ApiError(400, "invalid_value", "class must be a class name of 1-64 characters", "class")
    exe = body.get("exe") or argv[0]
    if len(exe) > MAX_PATH or "\0" in exe:
        raise ApiError(400, "invalid_value", f"exe must be a path of at most {MAX_PATH} bytes", "exe")
    return argv, scope, class_name, exe


def degrade_lines(topo: Topology, facts: dict) -> list[str]:
    """What this host lacks for tier placement, and what the kind does instead."""
    lines = []
    mem = topo.memory_nodes()
    if len(mem) == 1:
        lines.append(f"one NUMA memory node (node {mem[0]}): no far tier; placements fall back to node {mem[0]}, "
                     "migrations have nowhere to go")
    elif not topo.nodes_of("far"):
        lines.append("no far memory tier (no CXL or CPU-less node): far-tier weights go to the local tier")
    if topo.source != "memory_tiering":
        lines.append("kernel without memory tiering: CPU-less memory nodes are taken as the far tier")
    if not topo.swaps:
        lines.append("no swap device: proactive reclaim can only drop page cache; swap budgets have nothing to hold")
    if not topo.weighted_interleave:
        lines.append("kernel without weighted interleave (6.9+): ratios are reached by moving pages per process")
    if facts.get("memory_reclaim") is False:
        lines.append("memory controller on cgroup v1: no memory.reclaim, memory.swap.max or memory.zswap.max; "
                     "reclaim lowers memory.limit_in_bytes for a moment instead")
    return lines


def describe_pid(pid: int, scope: str, cgroup: str, name: str, proc_root: str = "/proc") -> ManagedProc | None:
    from agentd import procfs

    st = procfs.read_stat(pid, proc_root)
    if st is None:
        return None
    status = procfs.read_status(pid, proc_root)
    argv = procfs.read_cmdline(pid, proc_root) or []
    return ManagedProc(pid=pid, start=st.start_ticks, scope=scope, cgroup=cgroup, name=name, comm=st.comm,
                       exe=procfs.read_exe(pid, proc_root) or "", argv=tuple(argv),
                       uid=status.uid_real if status else None)


def _start_of(pid: int, proc_root: str = "/proc") -> str | None:
    from agentd import procfs

    st = procfs.read_stat(pid, proc_root)
    return f"{pid}:{st.start_ticks}" if st else None


KIND = TiersKind
