"""The colocation kind: wires the pure model (admission, queue, guard) to the kernel
(jobs/<name> cgroups, cpusets, cpu weight, freeze, signals) and to the daemon's GPU
samples. Jobs are persisted in ctx.state ("job:<name>") and re-adopted after a restart."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from agentd.api.contract import ApiError
from agentd.api.validation import Field
from agentd.cgroups import layout
from agentd.colocation import actuators as act
from agentd.colocation import model as m
from agentd.colocation.policy import ColocationPolicy
from agentd.colocation.predict import predict
from agentd.colocation.topology import Topology, format_cpulist, read_topology
from agentd.kinds.contract import Access, Command, Kind
from agentd.kinds.settings import CgroupKnob

MAX_CONFIG_BYTES = 64 * 1024
# Jobs of one non-admin uid, queued or placed: each is checked against /proc every round
# (CHECK_EVERY_S), so a user admitting processes in a loop would grow the daemon's work
# without end. 403 beyond; admins are not limited.
MAX_JOBS_PER_UID = 64
CHECK_EVERY_S = 1.0
_AUTO_NAME = re.compile(r"[^A-Za-z0-9_-]")


class ColocationKind(Kind):
    name = "colocation"
    journal_prefix = "job"

    def __init__(self, sysfs_root: str = "/", proc_root: str = "/proc"):
        self.policy: ColocationPolicy | None = None
        self.state = m.ColoState()
        self.snapshot = None
        self.views: list[m.GpuView] = []
        self.sysfs_root, self.proc_root = sysfs_root, proc_root
        self.topo = Topology()
        self.counters = {"admitted": 0, "queued": 0, "refused": 0, "ended": 0, "guard_steps": 0}
        self._last_check = 0.0
        self._seq = 0
        self.ended: dict[str, dict] = {}  # the last jobs that ended or were refused, for explain
        self.unhealthy: set[int] = set()

    # ------------------------------------------------------------------ hooks
    def attach(self, ctx) -> None:
        super().attach(ctx)
        self.cpu_weight = act.CpuWeight(ctx.driver) if ctx.driver else None
        self.cpus_knob = CgroupKnob(ctx.driver, "cpuset.cpus") if ctx.driver else None
        self.mems_knob = CgroupKnob(ctx.driver, "cpuset.mems") if ctx.driver else None
        ctx.changes.register(*(s for s in (self.cpu_weight, self.cpus_knob, self.mems_knob) if s is not None))
        self.topo = read_topology(self.sysfs_root)

    def on_policy(self, sections: dict[str, Any]) -> None:
        names = sorted(sections)
        self.policy = sections[names[0]] if names else None
        if len(names) > 1:
            self.ctx.degrade(f"colocation sections in several policies ({', '.join(names)}): only {names[0]}'s is used")
        if self.policy and self.policy.mps_pipe_dir and not os.path.isdir(self.policy.mps_pipe_dir):
            self.ctx.degrade(f"MPS pipe directory {self.policy.mps_pipe_dir} not found: no MPS thread/memory limits, "
                             "GPUs are time-sliced")

    def readopt(self) -> dict[str, int]:
        for key, value in self.ctx.state.items("peak:"):
            if isinstance(value, int) and value > 0:
                self.state.seen_peak[key[len("peak:"):]] = value
        kept = dropped = 0
        for key, value in list(self.ctx.state.items("job:")):
            try:
                job = m.Job.from_json(value)
            except (TypeError, KeyError):
                self.ctx.state.delete(key)
                dropped += 1
                continue
            alive = (self._job_procs(job) if job.state == m.PLACED
                     else (act.process_identity(job.pid, self.proc_root) or (None,))[0] == job.start_ticks)
            if job.state in (m.PLACED, m.QUEUED) and alive:
                self.state.jobs[job.name] = job
                kept += 1
            else:
                self._cleanup(job, "gone while agentd was down")
                self.ctx.state.delete(key)
                dropped += 1
        if kept:
            self.ctx.emit("readopted", f"re-adopted {kept} jobs ({dropped} gone)", jobs=kept, gone=dropped)
        return {"jobs": kept, "gone": dropped}

    def on_sample(self, snapshot) -> None:
        self.snapshot = snapshot
        self.views = m.gpu_views(snapshot, self._numa_of)
        if not getattr(snapshot, "available", False):
            return
        for g in snapshot.gpus:  # journal a GPU going bad (Xid, ECC, lost) once, with the jobs on it
            bad = bool(g.xid_events) or g.health != "ok"
            if bad and g.index not in self.unhealthy:
                self.ctx.emit("gpu_unhealthy", f"GPU {g.index} {g.health}; no new job goes there", level="warn",
                              gpu=g.index, health=g.health, xid=list(g.xid_events),
                              jobs=[j.name for j in self.state.residents(g.index)])
            if bad:
                self.unhealthy.add(g.index)
            elif g.index in self.unhealthy:
                self.unhealthy.discard(g.index)
                self.ctx.emit("gpu_healthy", f"GPU {g.index} is healthy again", gpu=g.index)
        by_job: dict[str, dict] = {}
        for p in snapshot.processes():
            name = self._job_of_cgroup(p.cgroup)
            if name:
                b = by_job.setdefault(name, {"bytes": {}, "util": {}})
                b["bytes"][str(p.gpu)] = b["bytes"].get(str(p.gpu), 0) + (p.used_memory_bytes or 0)
                if p.sm_util is not None:
                    b["util"][str(p.gpu)] = min(1.0, b["util"].get(str(p.gpu), 0.0) + p.sm_util / 100.0)
        for j in self.state.placed():
            seen = by_job.get(j.name, {"bytes": {}, "util": {}})
            j.live_bytes, j.live_util = seen["bytes"], seen["util"]
            most = max(j.live_bytes.values(), default=0)
            if most > j.peak_bytes and most > self.state.seen_peak.get(j.name, 0):
                self.state.seen_peak[j.name] = most  # planned at this next time (model.apply_seen_peak)
                self.ctx.state.put(f"peak:{j.name}", most)
            if not j.over_estimate and any(b > j.peak_bytes for b in j.live_bytes.values()):
                self.ctx.emit("over_estimate", f"{j.name} holds {max(j.live_bytes.values())} bytes on a GPU, above "
                              f"its predicted peak {j.peak_bytes}", level="warn", job=j.name,
                              live_bytes=max(j.live_bytes.values()), predicted_bytes=j.peak_bytes)

    def on_tick(self, now: float) -> None:
        if self.policy is None or self.ctx.driver is None:
            return
        if now - self._last_check >= CHECK_EVERY_S:
            self._last_check = now
            self._reap(now)
        if self.views and any(j.state == m.QUEUED for j in self.state.jobs.values()):
            for job, d in m.schedule(self.state, self.views, self.policy, now):
                if d.action == "place":
                    self._start(job, d, now)
                else:
                    self._end(job, d.reason, now)
        if self.views:
            _, actions = m.guard(self.state, self.views, self.policy, now)
            for a in actions:
                self._act(a, now)

    def stop(self, revert: bool) -> None:
        if not revert:
            return
        for j in self.state.placed():
            if j.guard.level == m.FROZEN:
                try:
                    act.request_freeze(self.ctx.driver, self._rel(j), False)
                except OSError:
                    pass
        self.ctx.changes.revert_all(reason="colocation policy removed")

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        return {"policy": bool(self.policy), "classes": sorted(self.policy.classes) if self.policy else [],
                "jobs": [self._brief(j) for j in self.state.jobs.values()],
                "queue": [j.name for j in self.state.queue(self.policy)] if self.policy else [],
                "gpus": len(self.views), "topology_notes": list(self.topo.notes), **self.counters}

    def metrics(self) -> dict[str, float]:
        placed = self.state.placed()
        return {"jobs_placed": len(placed), "jobs_queued": sum(1 for j in self.state.jobs.values() if j.state == m.QUEUED),
                "jobs_frozen": sum(1 for j in placed if j.guard.level == m.FROZEN),
                **{f"{k}_total": v for k, v in self.counters.items()}}

    def commands(self) -> list[Command]:
        return [
            Command("admit", "POST", Access.USER, self.cmd_admit,
                    {"name": Field((str,), name=True), "class": Field((str,), required=True), "gpus": Field((int,)),
                     "estimate_bytes": Field((int,)), "model_config": Field((dict,)), "mode": Field((str,)),
                     "batch": Field((int,)), "seq": Field((int,))},
                    "make the calling process a job: place it on GPUs (or queue it) and return its environment"),
            Command("jobs", "GET", Access.ANYONE, self.cmd_jobs, {"name": Field((str,))}, "jobs, placed and queued"),
            Command("explain", "GET", Access.ANYONE, self.cmd_explain, {"name": Field((str,), required=True)},
                    "where a job was placed, or why it waits, with the numbers"),
            Command("slo", "POST", Access.USER, self.cmd_slo,
                    {"name": Field((str,), required=True, name=True), "tpot_ms": Field((float,), required=True)},
                    "a latency-critical job reports its time per output token"),
        ]

    # ------------------------------------------------------------------ commands
    def cmd_admit(self, caller, body: dict) -> dict:
        if self.policy is None:
            raise ApiError(409, "no_colocation_policy", "no policy in force has a colocation section with job classes")
        if self.ctx.driver is None:
            raise ApiError(503, "no_cgroups", "agentd has no cgroup driver here; jobs cannot be placed")
        cls = self.policy.job_class(body["class"])
        if cls is None:
            raise ApiError(400, "unknown_class", f"no job class {body['class']!r}; classes: "
                           f"{', '.join(sorted(self.policy.classes))}", "class")
        if not self.views:
            raise ApiError(503, "no_gpus", "agentd has no GPU sample yet (no NVML, or the sampler has not run): "
                           + (getattr(self.snapshot, "status", "") or "no sampler"))
        if caller.role != "admin":
            mine = sum(1 for j in self.state.jobs.values() if j.uid == caller.peer.uid and j.state != m.ENDED)
            if mine >= MAX_JOBS_PER_UID:
                raise ApiError(403, "quota_exceeded", f"uid {caller.peer.uid} already has {mine} jobs queued or "
                               "running, the most agentd keeps for one user; wait for one to end (an admin is "
                               "not limited)")
        n = body.get("gpus", 1)
        if not 1 <= n <= 64:
            raise ApiError(400, "invalid_value", f"gpus must be within 1..64, got {n}", "gpus")
        for key, hi in (("batch", 1 << 16), ("seq", 1 << 22)):
            if key in body and not 1 <= body[key] <= hi:
                raise ApiError(400, "invalid_value", f"{key} must be within 1..{hi}, got {body[key]}", key)
        if "model_config" in body and len(json.dumps(body["model_config"])) > MAX_CONFIG_BYTES:
            raise ApiError(400, "invalid_value", f"model_config is larger than {MAX_CONFIG_BYTES} bytes", "model_config")
        try:
            pred = predict(cls, body.get("estimate_bytes"), body.get("model_config"), body.get("mode"),
                           body.get("batch", 1), body.get("seq", 2048), self.views[0].name)
        except ValueError as exc:
            raise ApiError(400, "estimate_refused", str(exc),
                           "model_config" if "model_config" in body else "estimate_bytes") from None
        pid = caller.peer.pid
        if pid == os.getpid():
            raise ApiError(400, "invalid_caller", "agentd itself cannot become a job")
        ident = act.process_identity(pid, self.proc_root)
        if ident is None:
            raise ApiError(400, "caller_gone", f"the calling process {pid} is gone")
        start, uid = ident
        if uid != caller.peer.uid and caller.peer.uid != 0:
            raise ApiError(403, "forbidden", f"process {pid} belongs to uid {uid}, not to the caller (uid "
                           f"{caller.peer.uid})")
        name = body.get("name") or self._auto_name(cls.name)
        old = self.state.jobs.get(name)
        if old is not None and old.state != m.ENDED:
            raise ApiError(409, "job_exists", f"job {name} is already {old.state}", "name")
        job = m.Job(name=name, job_class=cls.name, uid=caller.peer.uid, pid=pid, start_ticks=start, gpus_wanted=n,
                    peak_bytes=pred.peak_bytes, point_bytes=pred.point_bytes, util=pred.util, source=pred.source,
                    submitted=self.ctx.clock())
        now = self.ctx.clock()
        d = m.submit(self.state, job, self.views, self.policy, now)
        if d.action == "refuse":
            self.counters["refused"] += 1
            job.state, job.reason, job.verdicts = m.ENDED, "refused: " + d.reason, list(d.verdicts)
            self._remember(job)
            self.ctx.emit("refused", f"{name} ({cls.name}) refused: {d.reason}", level="warn", job=name,
                          job_class=cls.name, predicted_bytes=pred.peak_bytes, gpus=n)
            raise ApiError(409 if "queue is full" in d.reason else 400, "job_refused", d.reason)
        if d.action == "queue":
            self.counters["queued"] += 1
            self._save(job)
            self.ctx.emit("queued", f"{name} ({cls.name}) waits, position {d.position}: {d.reason}", job=name,
                          job_class=cls.name, position=d.position, predicted_bytes=pred.peak_bytes, gpus=n)
            return self._view(job)
        if not self._start(job, d, now):
            raise ApiError(400, "caller_gone", f"{job.reason}")
        return self._view(job)

    def cmd_jobs(self, caller, query: dict) -> list[dict]:
        out = [self._view(j) for j in self.state.jobs.values() if self._may_see(caller, j)]
        if query.get("name"):
            out = [j for j in out if j["name"] == query["name"]]
        return out

    def cmd_explain(self, caller, query: dict) -> dict:
        j = self.state.jobs.get(query["name"])
        if j is None:
            old = self.ended.get(query["name"])
            if old is not None and (caller.role == "admin" or old["uid"] == caller.peer.uid):
                return old
        if j is None or not self._may_see(caller, j):
            raise ApiError(404, "unknown_job", f"no job {query['name']!r}", "name")
        return {**self._view(j), "verdicts": j.verdicts, "source": j.source}

    def _remember(self, job: m.Job) -> None:
        self.ended[job.name] = {**self._view(job), "verdicts": job.verdicts, "source": job.source}
        while len(self.ended) > 100:
            self.ended.pop(next(iter(self.ended)))

    def cmd_slo(self, caller, body: dict) -> dict:
        j = self.state.jobs.get(body["name"])
        if j is None or not self._may_see(caller, j):
            raise ApiError(404, "unknown_job", f"no job {body['name']!r}", "name")
        v = float(body["tpot_ms"])
        if not 0 <= v <= 3_600_000:
            raise ApiError(400, "invalid_value", f"tpot_ms must be within 0..3600000, got {v}", "tpot_ms")
        cls = self.policy.job_class(j.job_class) if self.policy else None
        if cls is None or not cls.latency_critical:
            raise ApiError(400, "not_latency_critical", f"job {j.name} is not latency-critical; only those report an SLO")
        j.slo_value, j.slo_ts = v, self.ctx.clock()
        self._save(j)
        return {"name": j.name, "tpot_ms": v, "slo_tpot_ms": cls.slo_tpot_ms,
                "meets_slo": cls.slo_tpot_ms is None or v <= cls.slo_tpot_ms}

    # ------------------------------------------------------------------ placement
    def _start(self, job: m.Job, d: m.Decision, now: float) -> bool:
        """Put a placed job's process into jobs/<name>, with its cpuset and cpu weight."""
        cls = self.policy.job_class(job.job_class)
        rel = self._rel(job)
        views = {g.index: g for g in self.views}
        job.uuids = [views[i].uuid for i in job.gpus]
        local: list[int] = []
        for u in job.uuids:
            loc = self.topo.locality(u)
            local.extend(loc.local_cpus if loc else ())
        kept = m.kept_cores(self.state, self.policy, self._cpus_of)
        cpus, mems, note = m.choose_cpus(cls, tuple(sorted(set(local))), self.topo.online, kept, self.topo.node_of_cpu)
        try:
            self.ctx.driver.create(rel)
            self.ctx.changes.apply(self.mems_knob, rel, ",".join(map(str, mems)), reason=f"NUMA node(s) of job {job.name}'s CPUs")
            self.ctx.changes.apply(self.cpus_knob, rel, format_cpulist(cpus), reason=f"job {job.name} ({cls.name})")
            self.ctx.changes.apply(self.cpu_weight, rel, str(cls.cpu_weight), reason=f"class {cls.name}")
            moved = act.move_checked(self.ctx.driver, job.pid, job.start_ticks, rel, self.proc_root)
        except OSError as exc:
            moved, note = False, f"cgroup setup failed: {exc}"
        if not moved:
            self._end(job, f"could not place process {job.pid}: " + (note or "it is gone or is another process now"), now)
            return False
        job.cpus, job.mems = format_cpulist(cpus), ",".join(map(str, mems))
        job.env = self._env(job, cls)
        if note:
            job.reason += f" (cpus: {note})"
        if cls.keeps_cores_apart and cls.cpu_cores:
            self._shrink_others(job, set(cpus))
        self.counters["admitted"] += 1
        self._save(job)
        self.ctx.emit("placed", f"{job.name} ({cls.name}) on GPU {', '.join(map(str, job.gpus))}, cpus {job.cpus}: "
                      f"{job.reason}", job=job.name, job_class=cls.name, pid=job.pid, gpus=job.gpus, cpus=job.cpus,
                      mems=job.mems, predicted_bytes=job.peak_bytes, util=round(job.util, 3),
                      wait_s=round(now - job.submitted, 3))
        return True

    def _shrink_others(self, lc: m.Job, kept: set) -> None:
        """Cores a latency-critical job keeps apart are taken from jobs placed before it."""
        for j in self.state.placed():
            if j is lc or not j.cpus:
                continue
            from agentd.colocation.topology import parse_cpulist

            mine = set(parse_cpulist(j.cpus))
            rest = mine - kept
            if rest and rest != mine:
                try:
                    self.ctx.changes.apply(self.cpus_knob, self._rel(j), format_cpulist(rest),
                                           reason=f"cores {format_cpulist(kept)} kept for {lc.name}")
                    j.cpus = format_cpulist(rest)
                    self._save(j)
                except OSError:
                    pass

    def _env(self, job: m.Job, cls) -> dict:
        env = {"CUDA_VISIBLE_DEVICES": ",".join(job.uuids), "AGENTD_JOB": job.name,
               "AGENTD_GPU_MEMORY_LIMIT_BYTES": str(job.peak_bytes),
               "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
        totals = [g.total for g in self.views if g.index in job.gpus and g.total]
        if totals:
            env["AGENTD_GPU_MEMORY_FRACTION"] = f"{min(1.0, job.peak_bytes / min(totals)):.4f}"
        mps = self.policy.mps_pipe_dir
        if mps and os.path.isdir(mps):
            env["CUDA_MPS_PIPE_DIRECTORY"] = mps
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(cls.sm_share_pct)
            mib = -(-job.peak_bytes // 2**20)
            env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = ",".join(f"{i}={mib}M" for i in range(len(job.uuids)))
        return env

    # ------------------------------------------------------------------ guard
    def _act(self, a: m.GuardAction, now: float) -> None:
        job = self.state.jobs.get(a.job)
        if job is None:
            return
        rel = self._rel(job)
        try:
            if a.step == "lower_cpu":
                self.ctx.changes.apply(self.cpu_weight, rel, str(self.policy.guard.lowered_cpu_weight), reason=a.reason)
            elif a.step == "restore_cpu":
                cls = self.policy.job_class(job.job_class)
                self.ctx.changes.apply(self.cpu_weight, rel, str(cls.cpu_weight if cls else 100), reason=a.reason)
            elif a.step in ("freeze", "thaw"):
                act.request_freeze(self.ctx.driver, rel, a.step == "freeze")
            elif a.step == "sigterm":
                act.request_freeze(self.ctx.driver, rel, False)  # a frozen process cannot run its handler
                a = m.GuardAction(a.job, a.step, a.reason, {**a.numbers, "pids": act.signal_job(self.ctx.driver, rel, act.SIGTERM)})
            elif a.step == "sigkill":
                a = m.GuardAction(a.job, a.step, a.reason, {**a.numbers, "pids": act.signal_job(self.ctx.driver, rel, act.SIGKILL)})
        except OSError as exc:
            self.ctx.emit("guard_failed", f"{a.step} of {job.name} failed: {exc}", level="error", job=job.name, step=a.step)
            return
        self.counters["guard_steps"] += 1
        self._save(job)
        level = "warn" if a.step in ("freeze", "sigterm", "sigkill") else "info"
        self.ctx.emit(a.step, f"{job.name}: {a.step.replace('_', ' ')} ({a.reason})", level=level, job=job.name,
                      guard_level=m.LEVEL_NAMES[job.guard.level], **{k: v for k, v in a.numbers.items() if k not in ("job", "level", "agent", "tool_call")})

    # ------------------------------------------------------------------ ends
    def _reap(self, now: float) -> None:
        for j in list(self.state.jobs.values()):
            if j.state == m.PLACED and not self._job_procs(j):
                self._end(j, "its processes have exited", now)
            elif j.state == m.QUEUED and (act.process_identity(j.pid, self.proc_root) or (None,))[0] != j.start_ticks:
                self._end(j, "the waiting process is gone", now)

    def _end(self, job: m.Job, reason: str, now: float) -> None:
        was = job.state
        job.state, job.reason = m.ENDED, reason
        self.counters["ended"] += 1
        self._cleanup(job, reason)
        self.ctx.state.delete(f"job:{job.name}")
        self.state.jobs.pop(job.name, None)
        self._remember(job)
        self.ctx.emit("ended", f"{job.name} ended ({was}): {reason}", job=job.name, was=was,
                      run_s=round(now - job.placed_at, 3) if job.placed_at else None,
                      guard_level=m.LEVEL_NAMES[job.guard.level])

    def _cleanup(self, job: m.Job, reason: str) -> None:
        rel = self._rel(job)
        self.ctx.changes.forget(rel)
        try:
            if self.ctx.driver is not None and self.ctx.driver.exists(rel) and not self.ctx.driver.procs(rel):
                act.request_freeze(self.ctx.driver, rel, False)
                self.ctx.driver.remove(rel)
        except OSError:
            pass

    # ------------------------------------------------------------------ helpers
    def _rel(self, job: m.Job) -> str:
        return layout.job_rel(job.name)

    def _job_procs(self, job: m.Job) -> list[int]:
        rel = self._rel(job)
        try:
            return self.ctx.driver.procs(rel) if self.ctx.driver and self.ctx.driver.exists(rel) else []
        except OSError:
            return []

    def _cpus_of(self, job: m.Job) -> tuple:
        from agentd.colocation.topology import parse_cpulist

        try:
            return parse_cpulist(job.cpus)
        except ValueError:
            return ()

    def _numa_of(self, uuid: str) -> int | None:
        loc = self.topo.locality(uuid)
        return loc.numa_node if loc else None

    def _job_of_cgroup(self, cgroup: str) -> str | None:
        name = layout.job_of(cgroup) if cgroup else None
        return name if name in self.state.jobs else None

    def _auto_name(self, cls_name: str) -> str:
        while True:
            self._seq += 1
            name = _AUTO_NAME.sub("-", f"{cls_name}-{os.getpid() % 10000}-{self._seq}")
            if name not in self.state.jobs:
                return name

    def _save(self, job: m.Job) -> None:
        self.ctx.state.put(f"job:{job.name}", job.to_json())

    def _may_see(self, caller, job: m.Job) -> bool:
        return caller.role == "admin" or caller.peer.uid == job.uid

    def _brief(self, j: m.Job) -> dict:
        return {"name": j.name, "class": j.job_class, "state": j.state, "gpus": j.gpus, "pid": j.pid,
                "guard": m.LEVEL_NAMES[j.guard.level]}

    def _view(self, j: m.Job) -> dict:
        out = {"name": j.name, "class": j.job_class, "state": j.state, "pid": j.pid, "uid": j.uid, "gpus": j.gpus,
               "uuids": j.uuids, "cpus": j.cpus, "mems": j.mems, "cgroup": self._rel(j),
               "predicted_bytes": j.peak_bytes, "point_bytes": j.point_bytes, "util": round(j.util, 3),
               "live_bytes": j.live_bytes, "reason": j.reason, "guard": m.LEVEL_NAMES[j.guard.level],
               "slo_tpot_ms": j.slo_value, "over_estimate": j.over_estimate, "env": j.env,
               "submitted": j.submitted, "placed_at": j.placed_at}
        if j.state == m.QUEUED and self.policy:
            out["position"] = m.position(self.state, j.name, self.policy)
        return out


KIND = ColocationKind
