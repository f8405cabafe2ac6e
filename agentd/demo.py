"""`agentd demo`: the daemon with its embedded default policy on the bundled demo agent.

A live view of agents, tool calls and enforcement decisions, then a summary table (or one
JSON object with --json). Everything the demo creates lives in a temporary state folder
and under <own cgroup>/agentd-demo, and is removed at the end.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from agentd.cgroups.layout import parse_rel
from agentd.paths import DEFAULT_POLICY, EXAMPLES_DIR
from agentd.units import format_size

AGENT_NAME = "demo"
_MARKS = {"toolcall.start": "▶", "toolcall.throttled": "≈", "toolcall.frozen": "❄", "toolcall.killed": "✖",
          "toolcall.end": "■", "agent.registered": "●", "agent.ended": "○", "toolcall.moved_back": "↩"}


def _live_printer(out, t0: float):
    def show(event: dict) -> None:
        kind = event["kind"]
        if kind.startswith("daemon."):
            return
        mark = _MARKS.get(kind, "·")
        who = event.get("tool_call") or event.get("agent") or ""
        print(f"{event['ts'] - t0:7.2f}s {mark} {kind:<19} {who:<28} {event['message']}", file=out, flush=True)
    return show


def _pump(stream, out) -> None:
    for line in stream:
        print(f"         │ {line.rstrip()}", file=out, flush=True)


def short_command(argv: list[str]) -> str:
    """`/venv/bin/python /repo/examples/workloads/burst.py 20` -> `python burst.py 20`."""
    return " ".join(os.path.basename(a) if a.startswith("/") else a for a in argv)


def summary_rows(records: list[dict], events: dict[str, list[str]] | None = None) -> list[dict]:
    """One row per tool call; `events`: the journal kinds of each tool call by id (the
    ladder it went through: throttled, frozen, killed), carried as the row's "events"."""
    rows = []
    for r in records:
        wall = (r.get("ended") or time.time()) - r["started"]
        rows.append({"name": r["name"], "command": short_command(r["argv"])[:60], "cgroup": r["cgroup"], "peak_bytes": r["peak_bytes"],
                     "cpu_s": r["cpu_s"], "wall_s": round(wall, 3), "outcome": r["outcome"] or r["state"], "reason": r["reason"] or "",
                     "exit_code": r.get("exit_code"), "limits": r["limits"], "events": list((events or {}).get(r["id"], ()))})
    return rows


def _tool_leaf(cgroup: str) -> str:
    """0003-pytest of agents/<agent>/tools/0003-pytest (the cgroup itself if not a tool call's)."""
    place = parse_rel(cgroup)
    return place.tool if place is not None and place.tool else cgroup


def _collect_toolcall_events(into: dict[str, list[str]]):
    def collect(event: dict) -> None:
        if event.get("tool_call"):
            into.setdefault(event["tool_call"], []).append(event["kind"])
    return collect


def print_table(rows: list[dict], out) -> None:
    headers = ("tool call", "command", "peak", "cpu s", "wall s", "outcome", "why")
    table = [(_tool_leaf(r["cgroup"]), r["command"][:40], format_size(r["peak_bytes"]), f"{r['cpu_s']:.2f}",
              f"{r['wall_s']:.2f}", r["outcome"], r["reason"][:90]) for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print("\n" + line, file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)), file=out)


async def _run(as_json: bool, tracker: str, trace: str | None, speed: float, out) -> int:
    from agentd.core.daemon import Daemon, DaemonConfig

    import logging

    quiet = logging.getLogger("agentd")
    quiet.propagate = False  # the live view shows every event; keep tracebacks only
    quiet.addHandler(logging.StreamHandler(sys.stderr))
    quiet.handlers[-1].setLevel(logging.ERROR)
    state = Path(tempfile.mkdtemp(prefix="agentd-demo-"))
    config = DaemonConfig(socket_path=state / "agentd.sock", state_dir=state, policy_dir=None, default_policy=DEFAULT_POLICY,
                          tracker=tracker, move_self=False, require_root_owned_policies=False, cgroup_leaf="agentd-demo")
    daemon = Daemon(config)
    t0 = time.time()
    toolcall_events: dict[str, list[str]] = {}
    daemon.journal.listeners.append(_collect_toolcall_events(toolcall_events))
    if not as_json:
        daemon.journal.listeners.append(_live_printer(out, t0))
        print("agentd demo: the daemon with its default policy (policies/default.yaml) and a scripted coding agent", file=out)
    try:
        await daemon.start()
    except BaseException:  # e.g. --tracker bpf that cannot load: leave nothing behind
        daemon.abort()
        try:
            daemon.driver.remove("")
        except OSError:
            pass
        shutil.rmtree(state, ignore_errors=True)
        raise
    if not as_json:
        for line in daemon.lines.values():
            print(f"  {line}", file=out)
    agent_exit = -1
    try:
        env = dict(os.environ)
        if trace:
            env["DEMO_TRACE"] = trace
        env["DEMO_SPEED"] = str(speed)
        proc = daemon.launch_agent([sys.executable, str(EXAMPLES_DIR / "demo_agent.py")], AGENT_NAME, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        pump = threading.Thread(target=_pump, args=(io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace"), _Null() if as_json else out), daemon=True)
        pump.start()
        while proc.poll() is None:
            await asyncio.sleep(0.1)
        agent_exit = proc.returncode
        pump.join(timeout=2)
        deadline = time.monotonic() + 10
        while daemon.engine.toolcalls and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # the agent's exit reaches the tick
    finally:
        records = daemon.store.toolcalls(agent=AGENT_NAME)
        status = daemon.status()
        for agent in list(daemon.engine.agents.values()):
            if agent.state == "live":
                daemon.engine.end_agent(agent, "the demo is over")
        await daemon.stop()
        try:
            daemon.driver.remove("")
        except OSError:
            pass
        shutil.rmtree(state, ignore_errors=True)
    rows = summary_rows(records, toolcall_events)
    if as_json:
        print(json.dumps({"agent_exit": agent_exit, "tool_calls": rows, "tracker": status["tracker"], "cgroups": status["cgroups"]["driver"],
                          "lines": status["lines"]}, indent=None), file=out)
    else:
        print_table(rows, out)
        print(f"\nagent exit status {agent_exit}; {len(rows)} tool calls, each in its own cgroup under agents/{AGENT_NAME}/tools/", file=out)
    return 0 if agent_exit == 0 else 1


class _Null:
    def write(self, _):
        return 0

    def flush(self):
        pass


def run_demo(*, as_json: bool = False, tracker: str = "auto", trace: str | None = None, speed: float = 20.0, out=None) -> int:
    return asyncio.run(_run(as_json, tracker, trace, speed, out or sys.stdout))
