"""The burst ladder (throttle -> freeze -> kill) with a fake clock: every rung, both
cgroup versions, and that the agent runtime is never a target (actions name no cgroup)."""

from agentd.toolcalls.escalation import LadderState, Sample, finish, step, v2_grant_target
from agentd.policy.schema import Escalation, ResourceLimits

M = 1 << 20
LIMITS = ResourceLimits(memory_high=256 * M, memory_max=512 * M, pids_max=100, timeout_s=60)
ESC = Escalation(psi_full_pct=40, sustain_s=2, freeze_s=3)


def sample(now, cur=10 * M, limit=512 * M, psi_us=0, **kw):
    return Sample(now=now, memory_current=cur, memory_peak=cur, memory_limit=limit, psi_full_total_us=psi_us, **kw)


def kinds(actions):
    return [a.kind if a.kind != "journal" else a.reason for a in actions]


def run(samples, v1=False, state=None):
    state = state or LadderState(started=0.0)
    out = []
    for s in samples:
        state, actions = step(state, s, LIMITS, ESC, v1=v1)
        out.append(kinds(actions))
    return state, out


def test_quiet_tool_call_is_ok():
    state, out = run([sample(t) for t in (0.2, 0.4, 0.6)])
    assert out == [[], [], []]
    assert finish(state, 0).outcome == "ok"
    assert finish(state, 3).outcome == "failed"


def test_v2_throttle_then_complete_is_throttled():
    state, out = run([sample(0.2), sample(0.4, cur=300 * M, high_events=5), sample(0.6, cur=300 * M, high_events=9)])
    assert out[1] == ["toolcall.throttled"] and out[2] == []
    done = finish(state, 0)
    assert done.outcome == "throttled" and "memory_high" in done.reason


def test_v2_sustained_psi_freezes_then_kills():
    # 60 % of each 0.5 s tick stalled: above 40 % for 2 s -> freeze; 3 s later -> kill.
    psi = 0
    samples = []
    for i in range(1, 20):
        psi += 300_000
        samples.append(sample(i * 0.5, cur=500 * M, psi_us=psi))
    state, out = run(samples)
    flat = [k for ks in out for k in ks]
    assert flat.index("toolcall.frozen") < flat.index("freeze") < flat.index("toolcall.killed") < flat.index("kill")
    freeze_at = next(i for i, ks in enumerate(out) if "freeze" in ks)
    kill_at = next(i for i, ks in enumerate(out) if "kill" in ks)
    assert (freeze_at + 1) * 0.5 - 0.5 >= ESC.sustain_s  # not before the sustain time
    assert (kill_at - freeze_at) * 0.5 >= ESC.freeze_s
    assert state.outcome == "killed"


def test_v2_short_stall_does_not_freeze():
    samples = [sample(0.5, psi_us=0), sample(1.0, psi_us=400_000), sample(1.5, psi_us=400_000), sample(2.0, psi_us=400_000)]
    state, out = run(samples)
    assert "freeze" not in [k for ks in out for k in ks]
    assert state.over_since is None


def test_frozen_tool_call_thaws_when_limit_raised():
    state = LadderState(started=0.0, stage="frozen", frozen_at=10.0, last_now=10.0, last_psi_us=0)
    state, actions = step(state, sample(11.0, cur=500 * M, limit=1024 * M), LIMITS, ESC, v1=False)
    assert kinds(actions) == ["toolcall.thawed", "thaw"]
    assert state.stage == "running"


def test_v1_pause_grants_once_then_holds_then_kills():
    state = LadderState(started=0.0)
    state, a1 = step(state, sample(0.2, cur=256 * M, limit=256 * M, under_oom=True), LIMITS, ESC, v1=True)
    assert kinds(a1) == ["toolcall.throttled", "set_memory_limit"]
    assert a1[1].value == 512 * M
    state, a2 = step(state, sample(0.4, cur=512 * M, limit=512 * M, under_oom=True), LIMITS, ESC, v1=True)
    assert kinds(a2) == ["toolcall.frozen", "hold"]
    state, a3 = step(state, sample(2.0, cur=512 * M, limit=512 * M, under_oom=True), LIMITS, ESC, v1=True)
    assert a3 == []
    state, a4 = step(state, sample(3.5, cur=512 * M, limit=512 * M, under_oom=True), LIMITS, ESC, v1=True)
    assert kinds(a4) == ["toolcall.killed", "kill"]
    assert finish(state, None).outcome == "killed"


def test_v1_burst_that_fits_after_grant_is_throttled():
    state = LadderState(started=0.0)
    state, _ = step(state, sample(0.2, cur=256 * M, limit=256 * M, under_oom=True), LIMITS, ESC, v1=True)
    state, actions = step(state, sample(0.4, cur=300 * M, limit=512 * M), LIMITS, ESC, v1=True)
    assert actions == []
    assert finish(state, 0).outcome == "throttled"


def test_kernel_oom_kill_inside_the_tool_call_is_reported():
    state, out = run([sample(0.2), sample(0.4, cur=512 * M, oom_kill_events=1)])
    assert out[1] == ["toolcall.killed", "kill"]
    assert "OOM" in state.reason and state.limit == "memory_max"


def test_timeout_kills_the_whole_tool_call():
    state, out = run([sample(30), sample(61)])
    assert out == [[], ["toolcall.killed", "kill"]]
    assert state.limit == "timeout_s"


def test_fork_refusals_are_reported_once():
    state, out = run([sample(0.2, pids_max_events=3), sample(0.4, pids_max_events=50)])
    assert out == [["toolcall.throttled"], []]
    assert finish(state, 0).outcome == "throttled" and "pids_max" in state.reason


def test_done_state_is_terminal():
    state = LadderState(started=0.0, stage="killed")
    assert step(state, sample(100, oom_kill_events=9), LIMITS, ESC, v1=False) == (state, [])


def _psi_run(state, t0, n, cur, high, psi0=0, tick=0.5):
    """n ticks at 60 % PSI full on v2, the tool call sitting at `cur` under memory.high `high`."""
    out, psi = [], psi0
    for i in range(1, n + 1):
        psi += int(tick * 0.6 * 1e6)
        state, actions = step(state, sample(t0 + i * tick, cur=cur, limit=512 * M, psi_us=psi, memory_high=high), LIMITS, ESC, v1=False)
        out.append((actions, state))
    return state, out, psi


def test_v2_frozen_at_memory_high_is_not_relieved_far_below_memory_max():
    # The VM's endless ladder: frozen at memory.high (256M), current 255M, memory.max 512M.
    # 255M < 0.95 x 512M, yet nothing was relieved: the tool call is held at memory.high.
    state = LadderState(started=0.0, stage="frozen", frozen_at=10.0, last_now=10.0, last_psi_us=0, held_at=256 * M,
                        granted=True, outcome="frozen", limit="memory_high")
    s = sample(10.3, cur=255 * M, limit=512 * M, memory_high=256 * M)
    state, actions = step(state, s, LIMITS, ESC, v1=False)
    assert actions == [] and state.stage == "frozen"
    state, actions = step(state, sample(13.1, cur=255 * M, limit=512 * M, memory_high=256 * M), LIMITS, ESC, v1=False)
    assert kinds(actions) == ["toolcall.killed", "kill"]
    assert "256.0M limit" in state.reason or "256M limit" in state.reason


def test_v2_frozen_thaws_when_memory_high_is_raised():
    state = LadderState(started=0.0, stage="frozen", frozen_at=10.0, last_now=10.0, last_psi_us=0, held_at=256 * M)
    state, actions = step(state, sample(10.5, cur=255 * M, limit=512 * M, memory_high=400 * M), LIMITS, ESC, v1=False)
    assert kinds(actions) == ["toolcall.thawed", "thaw"] and state.stage == "running"


def test_v2_ladder_throttled_granted_frozen_killed():
    # A runaway at memory.high: throttled (high events), then PSI sustained -> one grant of
    # memory.high toward memory_max, PSI sustained again at the new high -> freeze -> kill.
    target = v2_grant_target(LIMITS)
    assert 256 * M < target < 512 * M
    state = LadderState(started=0.0)
    state, a = step(state, sample(0.5, cur=256 * M, memory_high=256 * M, high_events=3), LIMITS, ESC, v1=False)
    assert kinds(a) == ["toolcall.throttled"]
    state, out, psi = _psi_run(state, 0.5, 6, 256 * M, 256 * M)
    flat = [a for acts, _ in out for a in acts]
    assert [a.kind for a in flat if a.kind != "journal"] == ["set_memory_high"]
    assert flat[-1].value == target and state.granted and state.stage == "running"
    state, out, psi = _psi_run(state, 3.5, 6, target, target, psi0=psi)
    flat = [a for acts, _ in out for a in acts]
    assert [a.kind for a in flat if a.kind != "journal"] == ["freeze"]
    assert state.stage == "frozen" and state.held_at == target
    state, out, _ = _psi_run(state, 6.5, 8, target, target, psi0=psi)
    flat = [a.kind for acts, _ in out for a in acts]
    assert "thaw" not in flat and flat[-1] == "kill"
    assert finish(state, None).outcome == "killed"


def test_v2_burst_that_fits_after_grant_is_throttled():
    state = LadderState(started=0.0)
    state, out, _ = _psi_run(state, 0.0, 6, 256 * M, 256 * M)
    assert state.granted
    assert finish(state, 0).outcome == "throttled" and "granted" in finish(state, 0).reason


def test_non_zero_exit_inside_limits_is_failed_with_its_code():
    quiet, _ = run([sample(0.2)])
    done = finish(quiet, 2)
    assert (done.outcome, done.reason) == ("failed", "exited with status 2")
    killed_outside = finish(quiet, -9)
    assert killed_outside.outcome == "failed" and "SIGKILL" in killed_outside.reason
    throttled, _ = run([sample(0.2, cur=300 * M, high_events=2)])
    assert finish(throttled, 0).outcome == "throttled"
    failed = finish(throttled, 1)
    assert failed.outcome == "failed" and failed.reason.startswith("exited with status 1 (") and "memory_high" in failed.reason
    # agentd's own kill stays a kill whatever the status (SIGKILL from cgroup.kill)
    state, _ = run([sample(30), sample(61)])
    assert finish(state, -9).outcome == "killed"


def test_an_exit_nobody_saw_is_unknown_never_ok():
    done = finish(LadderState(started=0.0), None, exit_seen=False)
    assert (done.stage, done.outcome) == ("done", "unknown") and "not seen" in done.reason
    assert finish(LadderState(started=0.0), None).outcome == "ok"  # seen, no code: the tracker had none to give
    assert finish(LadderState(started=0.0), 3 << 8, exit_seen=False).outcome == "failed"  # a code beats the flag
