"""The `bare` variant of benchmarks/overhead.py: the kernel + Python floor under the same
agent, rate, exec gate and clock as the daemon's variants, with nothing of the daemon.

The real BpfBackend (the daemon's tracker, same options, consumer thread at nice -10) gates
the agent's v2 cgroup; its consumer thread calls BareMover for each gated exec, which does
only what any correct placement must: mkdir a v2 tool cgroup, write the pid to its
cgroup.procs, SIGCONT. No policy, no /proc reads, no store, no journal, no event loop, no
v1 hierarchies (so on a hybrid host only the v2 line of the tool's /proc/self/cgroup is
checked for escapes). Latency: the exec tracepoint's ts_ns to just before SIGCONT, the
daemon's own `full_us` clock (agentd/toolcalls/placement.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from agentd import procfs
from agentd.events import ProcEventKind

# The agent waits for a line on stdin before its first tool call, so that the gate is on
# (and the agent's own exec of python behind it) before anything is spawned.
WAIT_FOR_GO = "import sys\nsys.stdin.readline()\n"


def own_v2_dir() -> Path:
    rel = procfs.read_cgroup_v2(os.getpid()) or "/"
    return Path(procfs.v2_mount()) / rel.lstrip("/")


class BareMover:
    """Called on the tracker's consumer thread with every event: for a gated exec in the
    agent's cgroup, mkdir tools/<n>, move, continue. Anything else gated is continued."""

    def __init__(self, backend, agent_id: int, tools_dir: Path):
        self.backend = backend
        self.agent_id = agent_id
        self.tools_dir = tools_dir
        self.seq = 0
        self.full_us: list[float] = []
        self.steps_us: list[dict] = []
        self.errors = 0
        self.lock = threading.Lock()

    def __call__(self, ev) -> None:
        if not ev.gated:
            return
        if ev.kind is not ProcEventKind.EXEC or ev.cgroup_id != self.agent_id:
            self.backend.release(ev.pid)
            return
        clock = time.monotonic_ns
        t0 = clock()
        with self.lock:
            self.seq += 1
            d = self.tools_dir / str(self.seq)
        cont_ns = 0
        try:
            os.mkdir(d)
            t1 = clock()
            fd = os.open(d / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, str(ev.pid).encode())
            finally:
                os.close(fd)
            t2 = clock()
        except OSError:
            self.errors += 1  # gone before the move (ESRCH) or a cgroupfs error: counted, continued
            t1 = t2 = 0
        finally:
            cont_ns = clock()
            self.backend.release(ev.pid)
        if ev.ts_ns and cont_ns > ev.ts_ns:
            self.full_us.append((cont_ns - ev.ts_ns) / 1e3)
        if t2:
            self.steps_us.append({"mkdir": (t1 - t0) / 1e3, "move": (t2 - t1) / 1e3})


def rmcg(d: Path, timeout: float = 30.0) -> bool:
    """rmdir a cgroup once its processes are gone (the tools exit on their own)."""
    deadline = time.monotonic() + timeout
    while d.exists():
        try:
            d.rmdir()
        except FileNotFoundError:
            break
        except OSError:
            if time.monotonic() > deadline:
                try:
                    (d / "cgroup.kill").write_text("1")
                except OSError:
                    pass
                if time.monotonic() > deadline + 5:
                    return False
            time.sleep(0.05)
    return True


def run_bare(agent_code: str, count: int, workdir: Path, rate: float, label: str = "bare",
             consumer_nice: int = -10) -> dict:
    """One bare run of `count` tool calls: the same dict as overhead.run_one (RSS not
    measured: the mover lives in this process; cpu_s is the consumer thread's)."""
    from agentd.tracking.bpf_backend import BpfBackend

    base = own_v2_dir() / f"agentd-overhead-bare-{uuid.uuid4().hex[:8]}"
    agent_dir, tools_dir = base / "agent", base / "tools"
    out = workdir / f"{label}-{time.monotonic_ns()}.out"
    backend = BpfBackend(consumer_nice=consumer_nice)
    agent = None
    mover = None
    try:
        base.mkdir()
        agent_dir.mkdir()
        tools_dir.mkdir()
        agent_id = os.stat(agent_dir).st_ino
        mover = BareMover(backend, agent_id, tools_dir)
        t_start = time.monotonic()
        backend.start(mover)  # compiles and loads the program (BCC), as the daemon's start does
        start_s = time.monotonic() - t_start

        def join() -> None:
            with open(agent_dir / "cgroup.procs", "w") as f:
                f.write("0")

        # Popen returns once python has exec'd: the agent's own exec is never gated.
        agent = subprocess.Popen([sys.executable, "-c", WAIT_FOR_GO + agent_code, str(count), str(rate), str(out)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=join)
        lost0 = backend.lost_events()
        cpu0 = backend.consumer_cpu_s()
        prog0 = backend.program_run_stats()
        backend.set_gated_cgroups({agent_id})
        stdout, stderr = agent.communicate("go\n", timeout=max(120, 2 * count / rate + 60))
        if agent.returncode != 0:
            raise RuntimeError(f"the load agent failed ({agent.returncode}): {stderr[-2000:]}")
        wall = float(stdout.strip().splitlines()[-1])
        backend.set_gated_cgroups(set())
        time.sleep(0.5)
        prog1 = backend.program_run_stats()
        bpf_ns = sum(v["run_time_ns"] - prog0.get(k, {}).get("run_time_ns", 0) for k, v in prog1.items())
        bpf_runs = sum(v["run_cnt"] - prog0.get(k, {}).get("run_cnt", 0) for k, v in prog1.items())
        from benchmarks.overhead import escaped, split_blocks  # one escape rule for every variant

        blocks = split_blocks(out.read_text())
        return {"tool_calls": len(blocks), "wall_s": wall,
                "escaped": sum(1 for b in blocks if escaped(b, v1=())),
                "full_us": list(mover.full_us), "placed_us": [], "steps_us": list(mover.steps_us),
                "cpu_s": backend.consumer_cpu_s() - cpu0, "rss_kb_start": None, "rss_kb_end": None,
                "bpf_ns": bpf_ns, "bpf_runs": bpf_runs,
                "events_lost": backend.lost_events() - lost0, "mover_errors": mover.errors, "start_s": start_s}
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        backend.stop()  # continues any exec still owed
        if tools_dir.exists():
            for child in tools_dir.iterdir():
                if child.is_dir():
                    rmcg(child)
        for d in (tools_dir, agent_dir, base):
            rmcg(d)
