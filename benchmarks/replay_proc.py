"""The processes of the replay benchmark: an agent runtime that follows a recorded run's
memory curve and runs its Bash tool calls as real child processes at their recorded times
(time-compressed), and the tool-call process that allocates the memory the run used while
that tool call ran. Both time every allocation two ways: per 4 MiB chunk, and per step of
the curve (from one sample to the next, all chunks of that step together: how AgentCgroup's
trace_replay.py measures its allocation latency).

    python -m benchmarks.replay_proc agent PLAN.json OUT.json
    python -m benchmarks.replay_proc tool SEGMENT.json      (started by the agent)

A plan may carry `base` (bytes the runtime holds for the whole run, allocated before the
replay clock starts: AgentCgroup's +100 MiB per agent) and `start_at` (a time.time() at
which every agent's replay clock starts, so agents launched one after another still start
at the same moment).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

CHUNK = 4 << 20


class Holder:
    """Holds touched memory and moves it to a target, timing each chunk and each step up."""

    def __init__(self):
        self.chunks: list[bytearray] = []
        self.alloc_ms: list[float] = []
        self.step_ms: list[float] = []

    def hold(self, target: int) -> None:
        want = max(0, target // CHUNK)
        if len(self.chunks) < want:
            step0 = time.perf_counter()
            while len(self.chunks) < want:
                t0 = time.perf_counter()
                self.chunks.append(bytearray(CHUNK))  # zero-filled: every page touched
                self.alloc_ms.append((time.perf_counter() - t0) * 1000)
            self.step_ms.append((time.perf_counter() - step0) * 1000)
        del self.chunks[want:]


def follow(holder: Holder, points: list[list[float]], t0: float) -> None:
    """points: [[t_s since t0, bytes], ...] already compressed."""
    for t, target in points:
        delay = t0 + t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        holder.hold(int(target))


def run_tool(segment_path: str) -> int:
    seg = json.loads(open(segment_path).read())
    holder = Holder()
    follow(holder, seg["points"], time.monotonic())
    remaining = seg["duration"] - (seg["points"][-1][0] if seg["points"] else 0)
    if remaining > 0:
        time.sleep(remaining)
    print(json.dumps({"alloc_ms": holder.alloc_ms, "step_ms": holder.step_ms}), flush=True)
    return 0


def _start_clock(plan: dict) -> float:
    """Wait for the common start (if any), then the plan's own delay; returns the monotonic t0."""
    start_at = plan.get("start_at")
    if start_at:
        wait = start_at - time.time()
        if wait > 0:
            time.sleep(wait)
    time.sleep(plan.get("delay", 0))
    return time.monotonic()


def run_agent(plan_path: str, out_path: str) -> int:
    """plan: {"points": [[t, bytes]...], "tools": [{"start", "duration", "points": [[dt, bytes]...]}],
    "delay": s, "base": bytes, "start_at": epoch s}."""
    plan = json.loads(open(plan_path).read())
    # Segment files written before the clock: the benchmark's plumbing must not need new
    # page cache while the agent may be held at a cap (a syscall's charge fails there: ENOMEM).
    segments = []
    for n, tool in enumerate(plan["tools"]):
        segments.append(f"{out_path}.tool{n}.json")
        with open(segments[-1], "w") as f:
            json.dump(tool, f)
    base = Holder()
    base.hold(int(plan.get("base", 0)))  # before the clock, as the peer does
    t0 = _start_clock(plan)
    holder = Holder()
    results = []
    runtime_points = plan["points"]
    i = 0
    for tool in plan["tools"]:
        before = [p for p in runtime_points[i:] if p[0] < tool["start"]]
        follow(holder, before, t0)
        i += len(before)
        delay = t0 + tool["start"] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        seg_path = segments[len(results)]
        started = time.monotonic()
        timing = {"alloc_ms": [], "step_ms": []}
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.replay_proc", "tool", seg_path], capture_output=True,
                                  text=True)
        except OSError as exc:  # fork refused (ENOMEM at a memory limit): the tool call fails, the agent goes on,
            rc = -exc.errno     # as an agent runtime reports a spawn error to its model and carries on
        except subprocess.SubprocessError:  # the child failed before exec and could not say why in full (its
            rc = -1                          # error report cut short at the cap: "Bad exception data"): the same
        else:
            rc = proc.returncode
            for line in proc.stdout.splitlines():
                if line.startswith("{"):
                    timing = json.loads(line)
        results.append({"rc": rc, "wall_s": time.monotonic() - started, **timing})
        # skip the runtime points the tool call covered
        while i < len(runtime_points) and runtime_points[i][0] < tool["start"] + tool["duration"]:
            i += 1
    follow(holder, runtime_points[i:], t0)
    wall = time.monotonic() - t0
    del holder.chunks[:], base.chunks[:]  # the run is over: its memory need not stand in the way of the report
    text = json.dumps({"tools": results, "runtime_alloc_ms": holder.alloc_ms, "runtime_step_ms": holder.step_ms,
                       "wall_s": wall})
    with open(out_path, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "tool":
        sys.exit(run_tool(sys.argv[2]))
    sys.exit(run_agent(sys.argv[2], sys.argv[3]))
