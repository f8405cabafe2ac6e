"""The processes of the replay benchmark: an agent runtime that follows a recorded run's
memory curve and runs its Bash tool calls as real child processes at their recorded times
(time-compressed), and the tool-call process that allocates the memory the run used while
that tool call ran. Both time every allocation (4 MiB touched per step).

    python -m benchmarks.replay_proc agent PLAN.json OUT.json
    python -m benchmarks.replay_proc tool SEGMENT.json      (started by the agent)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

CHUNK = 4 << 20


class Holder:
    """Holds touched memory and moves it to a target, timing each chunk allocated."""

    def __init__(self):
        self.chunks: list[bytearray] = []
        self.alloc_ms: list[float] = []

    def hold(self, target: int) -> None:
        want = max(0, target // CHUNK)
        while len(self.chunks) < want:
            t0 = time.perf_counter()
            self.chunks.append(bytearray(CHUNK))  # zero-filled: every page touched
            self.alloc_ms.append((time.perf_counter() - t0) * 1000)
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
    print(json.dumps({"alloc_ms": holder.alloc_ms}), flush=True)
    return 0


def run_agent(plan_path: str, out_path: str) -> int:
    """plan: {"points": [[t, bytes]...], "tools": [{"start", "duration", "points": [[dt, bytes]...]}], "delay": s}."""
    plan = json.loads(open(plan_path).read())
    time.sleep(plan.get("delay", 0))
    holder = Holder()
    t0 = time.monotonic()
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
        seg_path = f"{out_path}.tool{len(results)}.json"
        with open(seg_path, "w") as f:
            json.dump(tool, f)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "benchmarks.replay_proc", "tool", seg_path], capture_output=True, text=True)
        alloc = []
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                alloc = json.loads(line)["alloc_ms"]
        results.append({"rc": proc.returncode, "wall_s": time.monotonic() - started, "alloc_ms": alloc})
        # skip the runtime points the tool call covered
        while i < len(runtime_points) and runtime_points[i][0] < tool["start"] + tool["duration"]:
            i += 1
    follow(holder, runtime_points[i:], t0)
    with open(out_path, "w") as f:
        json.dump({"tools": results, "runtime_alloc_ms": holder.alloc_ms, "wall_s": time.monotonic() - t0}, f)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "tool":
        sys.exit(run_tool(sys.argv[2]))
    sys.exit(run_agent(sys.argv[2], sys.argv[3]))
