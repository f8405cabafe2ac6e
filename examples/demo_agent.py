"""A scripted multi-turn coding agent (no LLM): each turn "thinks" for as long as a recorded
run's gap between tool calls (time-compressed), then runs a real tool call. It reads the
structured result agentd leaves for each tool call and adapts, as a model would.

Run it under agentd (`agentd demo`); alone it runs too, with nothing enforced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
TRACES = REPO / "data" / "agent-traces" / "swe-agent-traces.json"


def turn_gaps(task: str | None, speed: float) -> list[float]:
    """Think times between tool calls from a recorded run, compressed by `speed`."""
    if not task:
        return []
    runs = [r for r in json.loads(TRACES.read_text()) if r["task"] == task]
    if not runs:
        print(f"agent: no recorded run named {task!r}; thinking 0.2 s per turn", flush=True)
        return []
    calls = sorted(runs[0]["tool_calls"], key=lambda c: c["start"])
    gaps = [max(0.0, b["start"] - (a["start"] + a["duration"])) for a, b in zip(calls, calls[1:])]
    return [min(2.0, g / speed) for g in gaps]


TURNS = [
    ("search the code", ["grep", "-rn", "--include=*.py", "-c", "def ", str(REPO / "agentd")], None),
    ("run the tests", [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "demo_project")], None),
    ("profile a data load (memory burst)", [PY, str(HERE / "workloads" / "burst.py"), "20", "320", "1.0"], None),
    ("run the full suite (a leak: runaway memory)", [PY, str(HERE / "workloads" / "runaway.py"), "32", "8192"], None),
    ("start a server and wait on it (hangs)", ["bash", "-c", "sleep 300 & sleep 300"], {"duration_s": 1, "tool": "server"}),
    ("stress the worker pool (fork storm)", [PY, str(HERE / "workloads" / "forkstorm.py"), "3000"], {"pids": 200, "tool": "forkstorm"}),
    ("check the repository state", ["git", "--version"], None),
    ("write the summary", ["sh", "-c", "echo 'all turns done'"], None),
]


def result_of(pid: int) -> dict | None:
    """agentd's record of a finished tool call (AGENTD_RESULTS_DIR/<pid>.json)."""
    folder = os.environ.get("AGENTD_RESULTS_DIR")
    if not folder:
        return None
    path = Path(folder) / f"{pid}.json"
    for _ in range(40):  # agentd writes it when the tool call's cgroup empties
        if path.exists():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                pass
        time.sleep(0.1)
    return None


def chosen_turns(spec: str | None) -> list[int]:
    """DEMO_TURNS="3,4,5,6": only those turns (1-based), e.g. the ladder's in a slow VM;
    unset or empty: every turn."""
    if not spec:
        return list(range(len(TURNS)))
    return [int(n) - 1 for n in spec.split(",") if n.strip()]


def main() -> int:
    task = os.environ.get("DEMO_TRACE")
    gaps = turn_gaps(task, float(os.environ.get("DEMO_SPEED", "20")))
    for i in chosen_turns(os.environ.get("DEMO_TURNS")):
        goal, argv, intent = TURNS[i]
        time.sleep(gaps[i] if i < len(gaps) else 0.2)
        env = dict(os.environ)
        if intent:
            env["AGENTD_INTENT"] = json.dumps(intent)
        print(f"agent: turn {i + 1}: {goal}", flush=True)
        started = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = proc.communicate()
        took = time.monotonic() - started
        last = (out.strip().splitlines() or [""])[-1][:100]
        print(f"agent: turn {i + 1} exit {proc.returncode} after {took:.1f} s: {last}", flush=True)
        result = result_of(proc.pid)
        if result and result.get("outcome") not in (None, "ok"):
            advice = (result.get("retry_with") or {}).get("advice", "")
            print(f"agent: agentd says {result['outcome']}: {result['reason']}" + (f" -> {advice}" if advice else ""), flush=True)
    print("agent: finished every turn", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
