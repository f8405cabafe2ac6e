"""Co-location decisions, pure: admission and placement of jobs on shared GPUs, the queue,
and the runtime guard. State + input + policy + now -> (state, actions); no kernel, no
NVML, no clock (the kind hands in GPU views built from the sampler's snapshot).

Admission (`admit`): the job's predicted peak is the estimate's HIGH end (ranges are what
the estimators stand behind). A GPU fits when

    predicted peak + sum over residents of max(live, predicted peak) + memory used by
    processes that are no job + the largest headroom of the classes involved
    <= capacity x the guard's memory high mark (never plan what the guard would undo)

and the predicted slowdown (agentd.gpu.utilization.colocation_slowdown; time-sliced upper
bound, or the MPS bound when an MPS daemon is configured) stays within the bound of every
resident and of the newcomer; a latency-critical resident's utilization ceiling caps the
GPU's summed utilization, and a resident that currently misses its SLO gets no neighbour.
With more than two tenants each job sees the others as one job whose utilization is the
sum (capped at 1): processor sharing does not care who the other kernels belong to.
Otherwise the job queues (with the reason and its position) or, when it can never fit
(more GPUs than exist, larger than any empty GPU) or its class does not queue, is refused.

Guard (`guard`): per GPU, pressure with hysteresis (memory in use above a high mark until
below a low mark; a latency-critical job's reported time per output token above its SLO
until below clear_ratio x SLO; the GPU's utilization above an LC job's ceiling). Under
pressure the lowest-priority best-effort job on that GPU is stepped: lower cpu weight ->
freeze -> SIGTERM (thawed so it can exit) -> SIGKILL after a grace period. Memory pressure
starts at freeze (cpu weight does not stop allocations), and above the critical mark at
SIGTERM (a frozen job keeps its memory; only an exit frees it). Under memory pressure a job
holding more than it predicted is stepped first, whatever its class: it broke its word. One step per step_s; when the
pressure has been gone for hold_s, one step is undone (thaw, then the cpu weight).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from agentd.colocation.policy import ColocationPolicy, JobClass
from agentd.gpu.utilization import colocation_slowdown

QUEUED, PLACED, ENDED = "queued", "placed", "ended"
# guard levels
NORMAL, CPU_LOWERED, FROZEN, TERMINATING, KILLED = 0, 1, 2, 3, 4
LEVEL_NAMES = ("normal", "cpu_lowered", "frozen", "terminating", "killed")


@dataclass(frozen=True)
class GpuView:
    """One GPU as the model needs it (from agentd.gpu.sampler.GpuSnapshot)."""

    index: int
    uuid: str
    total: int
    used: int
    util: float | None = None  # 0..1, NVML utilization.gpu
    health: str = "ok"
    name: str = ""
    numa_node: int | None = None

    @property
    def healthy(self) -> bool:
        return self.health == "ok"


def gpu_views(snapshot: Any, numa_of_uuid=lambda uuid: None) -> list[GpuView]:
    """GpuViews from a GpuSnapshot (duck-typed); GPUs without memory figures are unhealthy."""
    out = []
    if snapshot is None or not getattr(snapshot, "available", False):
        return out
    for g in snapshot.gpus:
        total, used = g.memory_total_bytes, g.memory_used_bytes
        health = g.health
        if total is None or used is None:
            total, used = total or 0, used or 0
            health = health if health != "ok" else "degraded: memory not readable"
        out.append(GpuView(index=g.index, uuid=g.uuid, total=int(total), used=int(used),
                           util=g.util_gpu / 100.0 if g.util_gpu is not None else None, health=health,
                           name=g.name, numa_node=numa_of_uuid(g.uuid)))
    return out


@dataclass
class GuardState:
    level: int = NORMAL
    last_step: float = 0.0
    clear_since: float | None = None
    term_at: float | None = None
    freezes: int = 0  # each new freeze doubles the calm it takes to thaw (no flapping)


@dataclass
class Job:
    name: str
    job_class: str
    uid: int
    pid: int
    start_ticks: int
    gpus_wanted: int
    peak_bytes: int  # predicted peak per GPU: the estimate's high end
    point_bytes: int  # the estimate's point value (shown, not decided on)
    util: float  # predicted solo GPU utilization 0..1
    source: str  # how the prediction was made
    submitted: float
    state: str = QUEUED
    gpus: list = field(default_factory=list)  # GPU indices
    uuids: list = field(default_factory=list)
    placed_at: float | None = None
    reason: str = ""  # why it waits / where it went / why it ended
    verdicts: list = field(default_factory=list)  # per GPU, the numbers of the last decision
    live_bytes: dict = field(default_factory=dict)  # GPU index (str) -> bytes NVML sees for the job
    live_util: dict = field(default_factory=dict)  # GPU index (str) -> SM util 0..1 of its processes
    slo_value: float | None = None  # last reported time per output token (ms)
    slo_ts: float | None = None
    over_estimate: bool = False
    guard: GuardState = field(default_factory=GuardState)
    cpus: str = ""
    mems: str = ""
    env: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["class"] = d.pop("job_class")
        d["guard"]["level_name"] = LEVEL_NAMES[self.guard.level]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Job":
        d = dict(d)
        d["job_class"] = d.pop("class")
        g = dict(d.pop("guard", {}) or {})
        g.pop("level_name", None)
        return cls(**d, guard=GuardState(**g))

    def live_on(self, gpu: int) -> int:
        return int(self.live_bytes.get(str(gpu), 0))

    def committed_on(self, gpu: int) -> int:
        """What the job may hold on the GPU: its prediction, or more if it already holds more."""
        return max(self.peak_bytes, self.live_on(gpu))

    def util_on(self, gpu: int) -> float:
        live = self.live_util.get(str(gpu))
        return float(live) if live is not None else self.util


@dataclass
class ColoState:
    jobs: dict = field(default_factory=dict)  # name -> Job
    pressure: dict = field(default_factory=dict)  # "<gpu>:<reason>" -> bool (hysteresis memory)
    seen_peak: dict = field(default_factory=dict)  # job name -> most bytes it held above its prediction

    def placed(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.state == PLACED]

    def residents(self, gpu: int) -> list[Job]:
        return [j for j in self.placed() if gpu in j.gpus]

    def queue(self, policy: ColocationPolicy) -> list[Job]:
        """Queued jobs in the order they are tried: class priority, then arrival."""
        def prio(j: Job) -> int:
            c = policy.job_class(j.job_class)
            return c.priority if c else 0
        return sorted((j for j in self.jobs.values() if j.state == QUEUED), key=lambda j: (-prio(j), j.submitted, j.name))


@dataclass(frozen=True)
class Decision:
    action: str  # "place" | "queue" | "refuse"
    reason: str
    gpus: tuple = ()
    verdicts: tuple = ()  # dicts: gpu, fits, reason, numbers
    position: int = 0  # in the queue, 1-based


# ------------------------------------------------------------------ admission
def _class(policy: ColocationPolicy, name: str) -> JobClass:
    c = policy.job_class(name)
    if c is None:
        raise KeyError(name)
    return c


def _others_util(jobs: list[Job], gpu: int, extra: float = 0.0) -> float:
    return min(1.0, sum(j.util_on(gpu) for j in jobs) + extra)


def check_gpu(state: ColoState, job: Job, g: GpuView, policy: ColocationPolicy, now: float) -> dict:
    """One GPU's verdict for `job`, with the numbers behind it."""
    cls = _class(policy, job.job_class)
    residents = [r for r in state.residents(g.index) if r.name != job.name]
    sharing = "mps" if policy.mps_pipe_dir else "timeslice"
    v: dict = {"gpu": g.index, "uuid": g.uuid, "fits": False, "residents": [r.name for r in residents]}
    if not g.healthy:
        v["reason"] = f"GPU {g.index} is not healthy ({g.health})"
        return v
    live_jobs = sum(r.live_on(g.index) for r in residents)
    committed = sum(r.committed_on(g.index) for r in residents)
    others = max(0, g.used - live_jobs)  # contexts and processes that are no job of ours
    headroom = max([cls.memory_headroom] + [_class(policy, r.job_class).memory_headroom for r in residents
                                            if policy.job_class(r.job_class)])
    need = job.peak_bytes + committed + others + headroom
    # plan no higher than the guard's high mark, or the guard would act on jobs that keep their word
    cap = int(g.total * min(100.0, policy.guard.memory_high_pct) / 100.0)
    v.update(total_bytes=g.total, usable_bytes=cap, used_bytes=g.used, committed_bytes=committed, other_bytes=others,
             headroom_bytes=headroom, predicted_bytes=job.peak_bytes, need_bytes=need, free_after_bytes=cap - need)
    if need > cap:
        v["reason"] = (f"GPU {g.index}: predicted peak {_gib(job.peak_bytes)} + residents {_gib(committed)} + other "
                       f"{_gib(others)} + headroom {_gib(headroom)} = {_gib(need)} > {_gib(cap)} "
                       f"({policy.guard.memory_high_pct:g}% of {_gib(g.total)})")
        return v
    if residents:
        util_res = _others_util(residents, g.index)
        own = colocation_slowdown(job.util, util_res, sharing=sharing).a
        v["slowdown"] = {job.name: round(own, 3)}
        if own > cls.slowdown_bound:
            v["reason"] = (f"GPU {g.index}: predicted slowdown of {job.name} {own:.2f}x next to "
                           f"{util_res * 100:.0f}% busy residents > its bound {cls.slowdown_bound:.2f}x")
            return v
        for r in residents:
            rc = policy.job_class(r.job_class)
            if rc is None:
                continue
            rest = [o for o in residents if o is not r]
            s = colocation_slowdown(r.util_on(g.index), _others_util(rest, g.index, job.util), sharing=sharing).a
            v["slowdown"][r.name] = round(s, 3)
            if s > rc.slowdown_bound:
                v["reason"] = (f"GPU {g.index}: predicted slowdown of resident {r.name} ({rc.name}) {s:.2f}x "
                               f"> its bound {rc.slowdown_bound:.2f}x")
                return v
            if rc.latency_critical and r.slo_value is not None and rc.slo_tpot_ms and r.slo_ts is not None \
                    and now - r.slo_ts <= policy.guard.slo_report_ttl_s and r.slo_value > rc.slo_tpot_ms:
                v["reason"] = (f"GPU {g.index}: latency-critical {r.name} misses its SLO now "
                               f"({r.slo_value:g} ms > {rc.slo_tpot_ms:g} ms per token)")
                return v
        total_util = min(1.0, util_res + job.util)
        v["predicted_util"] = round(total_util, 3)
        for c, who in [(cls, job.name)] + [(policy.job_class(r.job_class), r.name) for r in residents]:
            if c is not None and c.latency_critical and c.util_ceiling_pct and total_util * 100 > c.util_ceiling_pct:
                v["reason"] = (f"GPU {g.index}: predicted utilization {total_util * 100:.0f}% > the "
                               f"{c.util_ceiling_pct:g}% ceiling of {who}")
                return v
    v["fits"] = True
    v["reason"] = f"GPU {g.index}: fits with {_gib(g.total - need)} to spare"
    return v


def _order(cls: JobClass, fitting: list[dict], views: dict) -> list[dict]:
    """Latency-critical jobs spread (fewest residents, most room); best-effort jobs pack
    (least room left), which keeps whole GPUs free for the next latency-critical job."""
    if cls.latency_critical:
        return sorted(fitting, key=lambda v: (len(v["residents"]), -v["free_after_bytes"], v["gpu"]))
    return sorted(fitting, key=lambda v: (v["free_after_bytes"], v["gpu"]))


def _choose(cls: JobClass, fitting: list[dict], n: int, views: dict) -> list[dict]:
    ordered = _order(cls, fitting, views)
    by_node: dict = {}
    for v in ordered:  # prefer GPUs that share a NUMA node, so one cpuset is local to all
        by_node.setdefault(views[v["gpu"]].numa_node, []).append(v)
    for group in by_node.values():
        if len(group) >= n:
            return group[:n]
    return ordered[:n]


def admit(state: ColoState, job: Job, gpus: list[GpuView], policy: ColocationPolicy, now: float,
          new: bool = True) -> Decision:
    """Where `job` may run now, or why it waits or is refused (no state change). `new`:
    a job arriving (False: one already waiting, which the queue's limits do not refuse)."""
    cls = policy.job_class(job.job_class)
    if cls is None:
        return Decision("refuse", f"no job class {job.job_class!r} in the policy (classes: "
                                  f"{', '.join(sorted(policy.classes)) or 'none'})")
    if job.gpus_wanted > len(gpus):
        return Decision("refuse", f"{job.name} asks for {job.gpus_wanted} GPUs; this host has {len(gpus)}")
    largest = int(max((g.total for g in gpus), default=0) * min(100.0, policy.guard.memory_high_pct) / 100.0)
    if job.peak_bytes + cls.memory_headroom > largest:
        return Decision("refuse", f"predicted peak {_gib(job.peak_bytes)} + headroom {_gib(cls.memory_headroom)} "
                                  f"exceeds the largest GPU's usable {_gib(largest)} even when it is empty")
    verdicts = [check_gpu(state, job, g, policy, now) for g in gpus]
    views = {g.index: g for g in gpus}
    fitting = [v for v in verdicts if v["fits"]]
    if len(fitting) >= job.gpus_wanted:
        chosen = _choose(cls, fitting, job.gpus_wanted, views)
        where = ", ".join(f"GPU {v['gpu']}" for v in chosen)
        return Decision("place", f"placed on {where}: " + "; ".join(v["reason"] for v in chosen),
                        gpus=tuple(v["gpu"] for v in chosen), verdicts=tuple(verdicts))
    if not new:
        return Decision("queue", "waits: " + ("; ".join(v["reason"] for v in verdicts if not v["fits"])
                                              or "GPUs kept for a job ahead in the queue"), verdicts=tuple(verdicts))
    if not cls.queue:
        return Decision("refuse", f"class {cls.name} does not queue and no {job.gpus_wanted} GPU(s) fit now: "
                                  + "; ".join(v["reason"] for v in verdicts), verdicts=tuple(verdicts))
    waiting = len([j for j in state.jobs.values() if j.state == QUEUED and j.name != job.name])
    if waiting >= policy.queue_max:
        return Decision("refuse", f"the queue is full ({waiting} jobs wait, at most {policy.queue_max})",
                        verdicts=tuple(verdicts))
    why = "; ".join(v["reason"] for v in verdicts if not v["fits"])
    return Decision("queue", f"waits: {len(fitting)} of {job.gpus_wanted} GPU(s) fit now; {why}",
                    verdicts=tuple(verdicts))


def apply_seen_peak(state: ColoState, job: Job) -> bool:
    """A job that held more than it predicted last time is planned at what it held (a
    job that lies about its size is believed once)."""
    seen = state.seen_peak.get(job.name, 0)
    if seen > job.peak_bytes:
        job.source += f"; raised from {job.peak_bytes} to the {seen} bytes it held last time"
        job.peak_bytes = seen
        return True
    return False


def submit(state: ColoState, job: Job, gpus: list[GpuView], policy: ColocationPolicy, now: float) -> Decision:
    """A new job: place it (state PLACED), queue it (QUEUED, with its position) or refuse it.
    It may start at once only on GPUs that no queued job of its priority or higher waits
    for (the same rule the queue runs by: no overtaking onto a waiting job's GPUs)."""
    apply_seen_peak(state, job)
    d = admit(state, job, gpus, policy, now)
    if d.action == "refuse":
        return d
    cls = policy.job_class(job.job_class)
    blocked: set[int] = set()
    for q in state.queue(policy):
        qc = policy.job_class(q.job_class)
        if qc is not None and qc.priority >= cls.priority:
            blocked |= _wanted(admit(state, q, [g for g in gpus if g.index not in blocked], policy, now, new=False), q)
    if blocked and d.action == "place":
        free = [g for g in gpus if g.index not in blocked]
        d2 = admit(state, job, free, policy, now) if len(free) >= job.gpus_wanted else None
        if d2 is None or d2.action != "place":
            d = Decision("queue", f"waits: GPU(s) {', '.join(map(str, sorted(blocked)))} are kept for jobs "
                                  "ahead in the queue", verdicts=d.verdicts)
        else:
            d = d2
    _apply(state, job, d, now)
    if d.action == "queue":
        return Decision("queue", d.reason, verdicts=d.verdicts, position=position(state, job.name, policy))
    return d


def _wanted(d: Decision, job: Job) -> set[int]:
    """The GPUs a waiting job is closest to fitting on (least short of memory): kept for it,
    since memory frees up as jobs end. A job kept out by a resident's slowdown or SLO keeps
    no GPU: that can last as long as the resident does."""
    if d.action == "place":
        return set(d.gpus)
    short = sorted((v for v in d.verdicts if v.get("need_bytes", 0) > v.get("usable_bytes", 0)),
                   key=lambda v: (v["need_bytes"] - v["usable_bytes"], v["gpu"]))
    return {v["gpu"] for v in short[:job.gpus_wanted]}


def _apply(state: ColoState, job: Job, d: Decision, now: float) -> None:
    job.verdicts = list(d.verdicts)
    job.reason = d.reason
    if d.action == "place":
        job.state = PLACED
        job.gpus = list(d.gpus)
        job.placed_at = now
    else:
        job.state = QUEUED
    state.jobs[job.name] = job


def position(state: ColoState, name: str, policy: ColocationPolicy) -> int:
    for i, j in enumerate(state.queue(policy)):
        if j.name == name:
            return i + 1
    return 0


def schedule(state: ColoState, gpus: list[GpuView], policy: ColocationPolicy, now: float) -> list[tuple[Job, Decision]]:
    """Try the queue in order; a job that fits is placed (and counts for the next ones).
    A lower-priority job may start only if it fits beside what higher ones would need: it
    may not take a GPU the head of the queue is waiting for (no starvation of big jobs)."""
    out = []
    blocked: set[int] = set()
    for job in state.queue(policy):
        d = admit(state, job, [g for g in gpus if g.index not in blocked], policy, now, new=False)
        if d.action == "place":
            _apply(state, job, d, now)
            out.append((job, d))
            continue
        job.reason, job.verdicts = d.reason, list(d.verdicts)
        if d.action == "refuse" and not blocked:  # can never run here (class gone, too big): say so and end
            job.state, job.reason = ENDED, d.reason
            out.append((job, d))
            continue
        blocked |= _wanted(d, job)
    return out


# ------------------------------------------------------------------ guard
@dataclass(frozen=True)
class GuardAction:
    job: str
    step: str  # lower_cpu | restore_cpu | freeze | thaw | sigterm | sigkill
    reason: str
    numbers: dict = field(default_factory=dict)


def _flag(state: ColoState, key: str, on: bool, off: bool) -> bool:
    """Hysteresis: turn on at `on`, off only at `off`, else keep."""
    prev = state.pressure.get(key, False)
    now = True if on else (False if off else prev)
    if now:
        state.pressure[key] = True
    else:
        state.pressure.pop(key, None)
    return now


def gpu_pressure(state: ColoState, g: GpuView, policy: ColocationPolicy, now: float) -> list[dict]:
    """Pressures on one GPU after this sample: [{reason, min_level, numbers}]."""
    gp = policy.guard
    out = []
    if g.total > 0:
        pct = 100.0 * g.used / g.total
        committed = sum(r.committed_on(g.index) for r in state.residents(g.index))
        if _flag(state, f"{g.index}:memory", pct >= gp.memory_high_pct, pct < gp.memory_low_pct):
            out.append({"reason": "memory", "min_level": TERMINATING if pct >= gp.memory_critical_pct else FROZEN,
                        "text": f"GPU {g.index} memory {pct:.1f}% in use (high mark {gp.memory_high_pct:g}%)",
                        "numbers": {"gpu": g.index, "used_bytes": g.used, "total_bytes": g.total,
                                    "used_pct": round(pct, 2), "committed_bytes": committed}})
    for r in state.residents(g.index):
        rc = policy.job_class(r.job_class)
        if rc is None or not rc.latency_critical:
            continue
        if rc.slo_tpot_ms:
            fresh = r.slo_ts is not None and r.slo_value is not None and now - r.slo_ts <= gp.slo_report_ttl_s
            val = r.slo_value if fresh else None
            if _flag(state, f"{g.index}:slo:{r.name}", val is not None and val > rc.slo_tpot_ms,
                     val is None or val <= rc.slo_tpot_ms * gp.slo_clear_ratio):
                out.append({"reason": "slo", "min_level": CPU_LOWERED,
                            "text": f"{r.name} reports {r.slo_value:g} ms per token" + (
                                f" > SLO {rc.slo_tpot_ms:g} ms" if r.slo_value > rc.slo_tpot_ms else
                                f", not yet under {gp.slo_clear_ratio:g} x SLO {rc.slo_tpot_ms:g} ms"),
                            "numbers": {"gpu": g.index, "job": r.name, "tpot_ms": r.slo_value,
                                        "slo_tpot_ms": rc.slo_tpot_ms}})
        if rc.util_ceiling_pct and g.util is not None:
            u = g.util * 100
            if _flag(state, f"{g.index}:util:{r.name}", u > rc.util_ceiling_pct,
                     u <= rc.util_ceiling_pct * gp.slo_clear_ratio):
                out.append({"reason": "util", "min_level": CPU_LOWERED,
                            "text": f"GPU {g.index} {u:.0f}% busy > {r.name}'s ceiling {rc.util_ceiling_pct:g}%",
                            "numbers": {"gpu": g.index, "job": r.name, "util_pct": u,
                                        "util_ceiling_pct": rc.util_ceiling_pct}})
    return out


def _target_order(policy: ColocationPolicy, jobs: list[Job], gpu: int) -> list[Job]:
    def key(j: Job):
        c = policy.job_class(j.job_class)
        return (not j.over_estimate, c.priority if c else 0, -j.live_on(gpu), j.name)
    return sorted(jobs, key=key)


def guard(state: ColoState, gpus: list[GpuView], policy: ColocationPolicy, now: float) -> tuple[ColoState, list[GuardAction]]:
    gp = policy.guard
    actions: list[GuardAction] = []
    pressured: set[str] = set()
    for g in gpus:
        for r in state.residents(g.index):  # a job above its prediction: remembered, targeted first
            live = r.live_on(g.index)
            if live > r.peak_bytes:
                r.over_estimate = True
                state.seen_peak[r.name] = max(state.seen_peak.get(r.name, 0), live)
                while len(state.seen_peak) > 1000:
                    state.seen_peak.pop(next(iter(state.seen_peak)))
        pressures = gpu_pressure(state, g, policy, now)
        if not pressures:
            continue
        memory = any(p["reason"] == "memory" for p in pressures)
        # best-effort jobs; under memory pressure also a latency-critical job that holds more
        # than it predicted: it broke its word, and only stopping it protects its neighbours
        victims = [j for j in state.residents(g.index)
                   if policy.job_class(j.job_class) and j.guard.level < TERMINATING
                   and (not policy.job_class(j.job_class).latency_critical or (memory and j.over_estimate))]
        if not victims:
            continue
        target = _target_order(policy, victims, g.index)[0]
        pressured.add(target.name)
        for other in victims:
            if other.guard.level > NORMAL:
                pressured.add(other.name)  # pressure on its GPU: do not relax it either
        p = max(pressures, key=lambda x: x["min_level"])
        gs = target.guard
        due = gs.level == NORMAL or now - gs.last_step >= gp.step_s
        want = max(gs.level + 1, p["min_level"]) if due else p["min_level"]
        if want <= gs.level:
            continue
        actions += _steps_to(target, want, now, "; ".join(x["text"] for x in pressures),
                             {**p["numbers"], "pressures": [x["reason"] for x in pressures]}, gp)
    for j in state.placed():
        gs = j.guard
        if gs.level == TERMINATING and gs.term_at is not None and now - gs.term_at >= gp.term_grace_s:
            gs.level, gs.last_step = KILLED, now
            actions.append(GuardAction(j.name, "sigkill", f"{j.name} still runs {gp.term_grace_s:g} s after SIGTERM",
                                       {"grace_s": gp.term_grace_s}))
            continue
        if j.name in pressured or gs.level not in (CPU_LOWERED, FROZEN):
            gs.clear_since = None
            continue
        if gs.clear_since is None:
            gs.clear_since = now
        hold = gp.hold_s * min(64, 2 ** max(0, gs.freezes - 1))
        if now - gs.clear_since >= hold and now - gs.last_step >= hold:
            step = "thaw" if gs.level == FROZEN else "restore_cpu"
            gs.level -= 1
            gs.last_step = now
            gs.clear_since = now
            actions.append(GuardAction(j.name, step, f"pressure on GPU(s) {', '.join(map(str, j.gpus))} gone "
                                       f"for {hold:g} s", {"hold_s": hold, "freezes": gs.freezes}))
    return state, actions


def _steps_to(job: Job, want: int, now: float, why: str, numbers: dict, gp) -> list[GuardAction]:
    out = []
    names = {CPU_LOWERED: "lower_cpu", FROZEN: "freeze", TERMINATING: "sigterm", KILLED: "sigkill"}
    for level in range(job.guard.level + 1, min(want, TERMINATING) + 1):
        if level == CPU_LOWERED and want >= FROZEN:
            continue  # straight to freeze: a lower cpu weight does not stop allocations
        out.append(GuardAction(job.name, names[level], why, {**numbers, "cpu_weight": gp.lowered_cpu_weight}
                               if level == CPU_LOWERED else numbers))
    if job.guard.level < FROZEN <= want:
        job.guard.freezes += 1
    job.guard.level = min(want, TERMINATING)
    job.guard.last_step = now
    job.guard.clear_since = None
    if job.guard.level == TERMINATING:
        job.guard.term_at = now
    return out


def _gib(n: int | float) -> str:
    return f"{n / 2**30:.2f} GiB"


# ------------------------------------------------------------------ CPU side
def choose_cpus(cls: JobClass, local: tuple, online: tuple, kept: set, node_of=lambda cpu: 0) -> tuple[tuple, tuple, str]:
    """The cpuset of a job: (cpus, mems, note). `local` are the CPUs near its GPUs (PCI
    locality), `kept` the cores latency-critical jobs keep apart. A latency-critical class
    with cpu_cores takes cores from the top of the local set (best-effort jobs, given the
    rest, start from the bottom), so the two rarely meet even before the cores are kept."""
    pool = tuple(local) if cls.numa_local and local else tuple(online)
    note = "" if cls.numa_local and local else ("GPU locality unknown: CPUs from every node" if cls.numa_local else "")
    free = [c for c in pool if c not in kept]
    if not free:
        free, note = list(pool), (note + "; " if note else "") + "every local core is kept by a latency-critical job: shared"
    want = cls.cpu_cores
    if want and len(free) < want:
        note = (note + "; " if note else "") + f"{len(free)} of {want} cores free"
    if want:
        pick = free[-want:] if cls.latency_critical else free[:want]
    else:
        pick = free
    cpus = tuple(sorted(pick))
    mems = tuple(sorted({node_of(c) for c in cpus}))
    return cpus, mems, note


def kept_cores(state: ColoState, policy: ColocationPolicy, cpus_of=lambda j: ()) -> set:
    """Cores that placed latency-critical jobs keep apart from everyone else."""
    out: set = set()
    for j in state.placed():
        c = policy.job_class(j.job_class)
        if c is not None and c.keeps_cores_apart and c.cpu_cores:
            out.update(cpus_of(j))
    return out
