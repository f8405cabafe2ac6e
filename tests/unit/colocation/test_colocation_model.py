"""Admission, placement, queue and guard decisions of the colocation model (pure)."""
from agentd.colocation import model as m
from agentd.colocation.policy import ColocationPolicy, GuardPolicy, JobClass

G = 2**30
LC = JobClass("inference", "latency-critical", priority=100, slo_tpot_ms=40, memory_headroom=2 * G,
              expected_util_pct=40, max_slowdown=1.3)
BE = JobClass("training", "best-effort", priority=10, memory_headroom=1 * G, expected_util_pct=90)
NOQ = JobClass("batch", "best-effort", priority=5, queue=False)
POLICY = ColocationPolicy(classes={c.name: c for c in (LC, BE, NOQ)},
                          guard=GuardPolicy(memory_high_pct=95, memory_low_pct=85, step_s=5, hold_s=10,
                                            term_grace_s=3),
                          queue_max=2)


def gpus(n=2, total=80 * G, used=G // 2, util=None, **kw):
    return [m.GpuView(index=i, uuid=f"GPU-{i}", total=total, used=used, util=util, **kw) for i in range(n)]


def job(name, cls="training", peak=10 * G, n=1, util=None, t=0.0):
    c = POLICY.classes.get(cls)
    return m.Job(name=name, job_class=cls, uid=0, pid=100, start_ticks=1, gpus_wanted=n, peak_bytes=peak,
                 point_bytes=int(peak * 0.9), util=(c.solo_util if c else 0.5) if util is None else util,
                 source="test", submitted=t)


def test_an_empty_gpu_takes_a_job_and_memory_decides_on_the_high_end():
    s = m.ColoState()
    d = m.submit(s, job("a", peak=70 * G), gpus(), POLICY, 0)
    assert d.action == "place" and s.jobs["a"].state == m.PLACED
    # a second 70 GiB job does not fit beside it on the same GPU but does on the other one
    d = m.submit(s, job("b", peak=70 * G), gpus(), POLICY, 1)
    assert d.action == "place" and d.gpus != tuple(s.jobs["a"].gpus)
    # a third waits, with the numbers and its position
    d = m.submit(s, job("c", peak=70 * G), gpus(), POLICY, 2)
    assert d.action == "queue" and d.position == 1 and "predicted peak 70.00 GiB" in d.reason
    v0 = next(v for v in d.verdicts if v["gpu"] == 0)
    assert v0["need_bytes"] == 70 * G + 70 * G + G // 2 + G and v0["usable_bytes"] == 76 * G and not v0["fits"]


def test_impossible_requests_are_refused_not_queued():
    s = m.ColoState()
    assert m.submit(s, job("x", n=3), gpus(), POLICY, 0).action == "refuse"
    d = m.submit(s, job("y", peak=200 * G), gpus(), POLICY, 0)
    assert d.action == "refuse" and "even when it is empty" in d.reason
    d = m.submit(s, job("z", cls="nope"), gpus(), POLICY, 0)
    assert d.action == "refuse" and "no job class" in d.reason
    assert not s.jobs


def test_a_class_that_does_not_queue_is_refused_and_the_queue_is_bounded():
    s = m.ColoState()
    m.submit(s, job("a", peak=70 * G), gpus(1), POLICY, 0)
    assert m.submit(s, job("b", cls="batch", peak=70 * G), gpus(1), POLICY, 1).action == "refuse"
    assert m.submit(s, job("c", peak=70 * G), gpus(1), POLICY, 2).action == "queue"
    assert m.submit(s, job("d", peak=70 * G), gpus(1), POLICY, 3).action == "queue"
    d = m.submit(s, job("e", peak=70 * G), gpus(1), POLICY, 4)
    assert d.action == "refuse" and "queue is full" in d.reason


def test_predicted_slowdown_keeps_a_busy_job_off_a_latency_critical_gpu():
    s = m.ColoState()
    m.submit(s, job("inf", cls="inference", peak=20 * G), gpus(1), POLICY, 0)
    # a 90 % busy trainer would slow the 40 % inference server beyond its 1.3x bound (time-sliced)
    d = m.submit(s, job("tr", peak=10 * G, util=0.9), gpus(1), POLICY, 1)
    assert d.action == "queue" and "predicted slowdown of resident inf" in d.reason
    # a light one fits
    d = m.submit(s, job("light", peak=10 * G, util=0.1), gpus(1), POLICY, 2)
    assert d.action == "place", d.reason
    assert d.verdicts[0]["slowdown"]["inf"] <= 1.3


def test_a_resident_missing_its_slo_gets_no_neighbour():
    s = m.ColoState()
    m.submit(s, job("inf", cls="inference", peak=20 * G), gpus(1), POLICY, 0)
    s.jobs["inf"].slo_value, s.jobs["inf"].slo_ts = 55.0, 1.0
    d = m.submit(s, job("light", peak=10 * G, util=0.05), gpus(1), POLICY, 2)
    assert d.action == "queue" and "misses its SLO" in d.reason


def test_latency_critical_spreads_best_effort_packs():
    s = m.ColoState()
    m.submit(s, job("t1", peak=10 * G, util=0.2), gpus(3), POLICY, 0)
    d = m.submit(s, job("t2", peak=10 * G, util=0.2), gpus(3), POLICY, 1)
    assert d.gpus == tuple(s.jobs["t1"].gpus)  # packed beside t1
    d = m.submit(s, job("inf", cls="inference", peak=10 * G), gpus(3), POLICY, 2)
    assert d.gpus[0] not in s.jobs["t1"].gpus  # spread onto an empty GPU


def test_live_usage_above_the_prediction_counts_and_other_processes_count():
    s = m.ColoState()
    m.submit(s, job("liar", peak=10 * G, util=0.1), gpus(1), POLICY, 0)
    s.jobs["liar"].live_bytes = {"0": 60 * G}
    view = gpus(1, used=60 * G + G)  # 1 GiB held by something that is no job
    d = m.submit(s, job("b", peak=20 * G, util=0.1), view, POLICY, 1)
    assert d.action == "queue"
    v = d.verdicts[0]
    assert v["committed_bytes"] == 60 * G and v["other_bytes"] == G


def test_the_queue_runs_in_priority_order_when_room_appears():
    s = m.ColoState()
    m.submit(s, job("big", peak=70 * G), gpus(1), POLICY, 0)
    m.submit(s, job("t", peak=70 * G, util=0.1, t=1), gpus(1), POLICY, 1)
    m.submit(s, job("inf", cls="inference", peak=60 * G, t=2), gpus(1), POLICY, 2)
    assert [j.name for j in s.queue(POLICY)] == ["inf", "t"]
    assert m.position(s, "t", POLICY) == 2
    assert m.schedule(s, gpus(1), POLICY, 3) == []  # nothing changed
    s.jobs["big"].state = m.ENDED
    placed = m.schedule(s, gpus(1), POLICY, 4)
    assert [j.name for j, _ in placed] == ["inf"] and s.jobs["t"].state == m.QUEUED


def test_a_lower_priority_job_does_not_overtake_onto_a_waiting_jobs_gpu_but_backfills_others():
    s = m.ColoState()
    m.submit(s, job("big", peak=70 * G), gpus(1), POLICY, 0)
    m.submit(s, job("w", peak=60 * G, t=1), gpus(1), POLICY, 1)  # short of memory: GPU 0 kept for it
    d = m.submit(s, job("small", peak=2 * G, util=0.05, t=2), gpus(1), POLICY, 2)
    assert d.action == "queue" and d.position == 2 and "kept for jobs ahead" in d.reason
    s = m.ColoState()
    m.submit(s, job("big", peak=70 * G), gpus(2), POLICY, 0)
    m.submit(s, job("w", peak=60 * G), gpus(2), POLICY, 0)
    assert s.jobs["w"].gpus == [1]
    m.submit(s, job("w2", peak=50 * G, t=1), gpus(2), POLICY, 1)  # least short on GPU 1: kept for it
    d = m.submit(s, job("small", peak=2 * G, util=0.05, t=2), gpus(2), POLICY, 2)
    assert d.action == "place" and d.gpus == (0,)


def test_job_json_round_trip():
    j = job("a")
    j.guard.level = m.FROZEN
    assert m.Job.from_json(j.to_json()) == j


# ------------------------------------------------------------------ guard
def _shared():
    s = m.ColoState()
    m.submit(s, job("inf", cls="inference", peak=20 * G), gpus(1), POLICY, 0)
    m.submit(s, job("tr", peak=10 * G, util=0.1), gpus(1), POLICY, 0)
    return s


def steps(actions):
    return [(a.job, a.step) for a in actions]


def test_guard_steps_on_slo_pressure_with_hysteresis_and_relaxes():
    s = _shared()
    inf = s.jobs["inf"]
    inf.slo_value, inf.slo_ts = 50.0, 10.0
    _, acts = m.guard(s, gpus(1), POLICY, 10.0)
    assert steps(acts) == [("tr", "lower_cpu")] and acts[0].numbers["tpot_ms"] == 50.0
    _, acts = m.guard(s, gpus(1), POLICY, 12.0)
    assert acts == []  # step_s not yet over
    _, acts = m.guard(s, gpus(1), POLICY, 15.0)
    assert steps(acts) == [("tr", "freeze")]
    # 38 ms: under the SLO but above 0.9 x 40: the pressure is not gone (hysteresis)
    inf.slo_value, inf.slo_ts = 38.0, 16.0
    _, acts = m.guard(s, gpus(1), POLICY, 21.0)
    assert steps(acts) == [("tr", "sigterm")]
    s.jobs["tr"].guard.level = m.FROZEN  # (pretend it was only frozen) -> now clear it
    inf.slo_value, inf.slo_ts = 30.0, 22.0
    _, acts = m.guard(s, gpus(1), POLICY, 22.0)
    assert acts == []
    _, acts = m.guard(s, gpus(1), POLICY, 32.0)
    assert steps(acts) == [("tr", "thaw")]
    _, acts = m.guard(s, gpus(1), POLICY, 36.0)
    assert acts == []  # hold_s again before the next undo
    inf.slo_ts = 40.0
    _, acts = m.guard(s, gpus(1), POLICY, 42.0)
    assert steps(acts) == [("tr", "restore_cpu")] and s.jobs["tr"].guard.level == m.NORMAL


def test_memory_pressure_freezes_at_once_then_terminates_then_kills():
    s = _shared()
    hot = gpus(1, used=78 * G)
    _, acts = m.guard(s, hot, POLICY, 100.0)
    assert steps(acts) == [("tr", "freeze")] and acts[0].numbers["used_pct"] == 97.5
    _, acts = m.guard(s, gpus(1, used=73 * G), POLICY, 106.0)  # 91 %: between the marks, still pressure
    assert steps(acts) == [("tr", "sigterm")]
    _, acts = m.guard(s, gpus(1, used=60 * G), POLICY, 107.0)
    assert acts == []
    _, acts = m.guard(s, gpus(1, used=60 * G), POLICY, 109.5)
    assert steps(acts) == [("tr", "sigkill")]


def test_the_guard_never_touches_latency_critical_jobs_and_prefers_the_liar():
    s = _shared()
    m.submit(s, job("tr2", peak=5 * G, util=0.1), gpus(1), POLICY, 0)
    s.jobs["tr2"].live_bytes = {"0": 9 * G}  # above its 5 GiB prediction
    _, acts = m.guard(s, gpus(1, used=78 * G), POLICY, 5.0)
    assert steps(acts) == [("tr2", "freeze")] and s.jobs["tr2"].over_estimate
    s2 = m.ColoState()
    m.submit(s2, job("inf", cls="inference", peak=20 * G), gpus(1), POLICY, 0)
    _, acts = m.guard(s2, gpus(1, used=77 * G), POLICY, 5.0)
    assert acts == []  # an honest latency-critical job is never stepped
    s2.jobs["inf"].live_bytes = {"0": 60 * G}  # ... but one holding 3x its prediction is, under memory pressure
    _, acts = m.guard(s2, gpus(1, used=77 * G), POLICY, 6.0)
    assert steps(acts) == [("inf", "freeze")]


def test_util_ceiling_pressure():
    pol = ColocationPolicy(classes={"inference": JobClass("inference", "latency-critical", util_ceiling_pct=70,
                                                          expected_util_pct=30),
                                    "training": BE}, guard=POLICY.guard)
    s = m.ColoState()
    m.submit(s, job("inf", cls="inference", peak=10 * G, util=0.3), gpus(1), pol, 0)
    m.submit(s, job("tr", peak=10 * G, util=0.2), gpus(1), pol, 0)
    _, acts = m.guard(s, gpus(1, util=0.9), pol, 1.0)
    assert steps(acts) == [("tr", "lower_cpu")]
    _, acts = m.guard(s, gpus(1, util=0.66), pol, 20.0)  # above 0.9 x 70 %: still on, next step
    assert steps(acts) == [("tr", "freeze")]
    _, acts = m.guard(s, gpus(1, util=0.6), pol, 21.0)  # below 63 %: gone; relaxes after hold_s
    assert acts == [] and s.jobs["tr"].guard.clear_since == 21.0
    _, acts = m.guard(s, gpus(1, util=0.6), pol, 31.0)
    assert steps(acts) == [("tr", "thaw")]


def test_a_job_that_lied_is_planned_at_what_it_held_next_time():
    s = _shared()
    s.jobs["tr"].live_bytes = {"0": 30 * G}  # predicted 10
    m.guard(s, gpus(1), POLICY, 1.0)
    assert s.seen_peak["tr"] == 30 * G
    del s.jobs["tr"]
    again = job("tr", peak=10 * G, util=0.1)
    m.submit(s, again, gpus(1), POLICY, 2.0)
    assert again.peak_bytes == 30 * G and "held last time" in again.source


def test_each_new_freeze_doubles_the_calm_needed_to_thaw():
    s = _shared()
    hot, calm = gpus(1, used=78 * G), gpus(1, used=40 * G)
    m.guard(s, hot, POLICY, 0.0)  # freeze 1
    m.guard(s, calm, POLICY, 1.0)
    _, acts = m.guard(s, calm, POLICY, 11.0)
    assert steps(acts) == [("tr", "thaw")] and acts[0].numbers["hold_s"] == 10
    m.guard(s, hot, POLICY, 12.0)  # freeze 2 (from cpu_lowered, memory: straight to freeze)
    m.guard(s, calm, POLICY, 13.0)
    _, acts = m.guard(s, calm, POLICY, 23.0)
    assert acts == []  # 10 s is no longer enough
    _, acts = m.guard(s, calm, POLICY, 33.5)
    assert steps(acts) == [("tr", "thaw")] and acts[0].numbers["hold_s"] == 20


def test_memory_above_the_critical_mark_terminates_at_once():
    s = _shared()
    _, acts = m.guard(s, gpus(1, used=79 * G), POLICY, 0.0)  # 98.75 % >= 98 %
    assert steps(acts) == [("tr", "freeze"), ("tr", "sigterm")] and s.jobs["tr"].guard.term_at == 0.0


def test_an_unhealthy_gpu_takes_no_job_and_gpu_views_come_from_a_snapshot():
    from agentd.gpu.fake_nvml import FakeNvmlBackend
    from agentd.gpu.sampler import NvmlSampler

    snap = NvmlSampler(backend=FakeNvmlBackend(gpus=2, xids={1: [79]})).sample()  # simulated Xid 79 on GPU 1
    views = m.gpu_views(snap, lambda uuid: 0)
    assert [v.healthy for v in views] == [True, False] and views[0].uuid == "GPU-simulated-0000"
    s = m.ColoState()
    m.submit(s, job("a", peak=60 * G), views, POLICY, 0)
    d = m.submit(s, job("b", peak=60 * G), views, POLICY, 1)
    assert d.action == "queue" and "GPU 1 is not healthy (degraded: Xid 79)" in d.reason
