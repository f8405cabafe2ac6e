"""The event loop under bursts of short tool calls: does it keep up?

    python -m benchmarks.loop_load [--quick] [--tracker auto|bpf|cn_proc] [--rates 50,100,200,400]

For each store write path (`direct`: every journal event and record committed on the event
loop, a JSONL line and a log line there too; `batched`: the loop only enqueues, one writer
thread commits them in batches and writes the JSONL lines), a fresh real daemon runs in a
child process (its own state folder, cgroup root under ours, the API on its own socket,
INFO logging to a file as under journald). An agent (a process registered through the API,
as `agentctl run` does) runs /bin/true at each rate in turn (50, 100, 200, 400 execs/s);
a follower reads `GET /v1/events?follow=1` for that agent, as `agentctl events -f` does.

Per path and rate:
- loop lag: the delay of a call_soon'd probe, put every 10 ms on the daemon's loop (p50/p99);
- end trail: how long after the tool call's exit (the agent's wait4 returning: an upper
  bound on the kernel's exit, so the trail is if anything understated) the daemon journalled
  its toolcall.end (`decided`), and the follower received it (`received`), p50/p99;
- the events per second the follower received, and every drop: the stream's, the journal's
  subscriber queues', and rows the store refused;
- the daemon's CPU (all its threads) per tool call.
Writes benchmarks/results/loop_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from benchmarks.results_file import write_result

PATHS = ("direct", "batched")
RATES = (50, 100, 200, 400)
PROBE_S = 0.01


# --- the daemon process ----------------------------------------------------------------------


def _serve(tmp: str, path: str, tracker: str, conn) -> None:
    """Child process: the real daemon with a loop-lag probe; obeys commands from `conn`."""
    from agentd.cgroups.detect import open_driver
    from agentd.core.daemon import Daemon, DaemonConfig
    from benchmarks.daemon_process import _kill_tree

    leaf = f"agentd-bench-{uuid.uuid4().hex[:8]}"
    config = DaemonConfig(socket_path=Path(tmp, "agentd.sock"), state_dir=Path(tmp, "state"), policy_dir=None,
                          cgroup_leaf=leaf, tracker=tracker, move_self=False, gpu=False, store_writes=path)
    logging.basicConfig(level=logging.INFO, format="agentd: %(message)s", stream=open(Path(tmp, "daemon.log"), "a"))

    async def main() -> None:
        daemon = Daemon(config)
        try:
            await daemon.start()
        except BaseException:
            daemon.abort()
            raise
        loop = asyncio.get_running_loop()
        lags: list[float] = []
        done = asyncio.Event()

        async def probe() -> None:
            while True:
                t = time.perf_counter()
                loop.call_soon(lambda t=t: lags.append(time.perf_counter() - t))
                await asyncio.sleep(PROBE_S)

        def snapshot() -> dict:
            t = os.times()
            batcher = daemon.store.batcher
            return {"cpu_s": t.user + t.system, "lags": list(lags), "starts": daemon.journal.counts.get("toolcall.start", 0),
                    "ends": daemon.journal.counts.get("toolcall.end", 0), "subscriber_drops": daemon.journal.dropped,
                    "store_drops": batcher.stats["dropped"] if batcher else 0,
                    "batches": batcher.stats["batches"] if batcher else 0, "pending": daemon.store.pending_writes}

        def commands() -> None:
            while True:
                cmd = conn.recv()
                if cmd == "stop":
                    loop.call_soon_threadsafe(done.set)
                    return
                if cmd == "begin":
                    asyncio.run_coroutine_threadsafe(_call(lags.clear), loop).result()
                conn.send(asyncio.run_coroutine_threadsafe(_call(snapshot), loop).result())

        task = loop.create_task(probe())
        threading.Thread(target=commands, daemon=True).start()
        conn.send({"tracker": daemon.lines.get("tracker", "")})
        await done.wait()
        task.cancel()
        await daemon.stop()

    profile = os.environ.get("LOOP_LOAD_PROFILE")  # --profile: where the loop's time goes
    try:
        if profile:
            import cProfile

            cProfile.runctx("asyncio.run(main())", globals(), {"asyncio": asyncio, "main": main},
                            filename=f"{profile}.{path}")
        else:
            asyncio.run(main())
    finally:
        driver = open_driver(leaf_name=leaf)
        if driver.exists(""):
            for _ in range(5):
                try:
                    _kill_tree(driver, "")
                    driver.remove("")
                    break
                except OSError:
                    time.sleep(0.3)


async def _call(fn):
    return fn()


# --- the agent (a process of its own, registered as an agent) ---------------------------------


def agent_main(sock: str, name: str, rate: float, seconds: float) -> None:
    """Run /bin/true `rate` times a second for `seconds`; print spawned pids and reap times."""
    from agentd.api.client import ApiClient

    ApiClient(sock).register_agent(name=name)
    exits: dict[int, float] = {}
    spawned = 0
    stop = threading.Event()

    def reap() -> None:
        while True:
            try:
                pid, _status, _ru = os.wait4(-1, 0)
            except ChildProcessError:
                if stop.is_set():
                    return
                time.sleep(0.001)
                continue
            exits[pid] = time.time()

    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    start = time.monotonic()
    while (now := time.monotonic()) - start < seconds:
        owed = int(rate * (now - start)) - spawned
        for _ in range(owed):
            os.posix_spawn("/bin/true", ["/bin/true"], {})
            spawned += 1
        time.sleep(0.002)
    elapsed = time.monotonic() - start
    stop.set()
    reaper.join(30)
    print(json.dumps({"spawned": spawned, "seconds": elapsed, "exits": exits}))


# --- the follower ------------------------------------------------------------------------------


class Follower:
    """GET /v1/events?follow=1&agent=NAME on a raw socket: each event's receive time."""

    def __init__(self, sock: str, name: str):
        self.ends: dict[str, float] = {}  # tool call id -> received
        self.pids: dict[str, int] = {}  # tool call id -> pid (from toolcall.start)
        self.decided: dict[str, float] = {}  # tool call id -> the end event's own ts
        self.received = 0
        self.dropped = 0
        self.first = self.last = 0.0
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.connect(sock)
        self._sock.sendall(f"GET /v1/events?follow=1&agent={name}&level=debug HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._sock.settimeout(0.2)
        buf = b""
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not data:
                break
            now = time.time()
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                line = line.strip()
                if not line.startswith(b"{"):
                    continue
                ev = json.loads(line)
                self.dropped += ev.get("dropped", 0) if isinstance(ev.get("dropped"), int) else 0
                if "kind" not in ev:
                    continue
                self.received += 1
                self.first = self.first or now
                self.last = now
                if ev["kind"] == "toolcall.start":
                    self.pids[ev["tool_call"]] = ev["data"].get("pid")
                elif ev["kind"] == "toolcall.end":
                    self.ends[ev["tool_call"]] = now
                    self.decided[ev["tool_call"]] = ev["ts"]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


# --- the write path alone -------------------------------------------------------------------------


def write_path_alone(path: str, n: int) -> dict:
    """What one tool call's journal and store work costs its caller (the loop) and the whole
    process, without the daemon: per tool call a start record and event, an end record and
    event (the end's two in one transaction, as the ladder does), real SQLite and JSONL."""
    from agentd.core.journal import Journal
    from agentd.core.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="agentd-loopbench-"))
    store = Store(tmp / "agentd.db", writes=path)
    journal = Journal(store, jsonl=tmp / "journal.jsonl")
    record = {"id": "", "agent": "bench", "seq": 0, "name": "true", "cgroup": "", "pid": 0, "argv": ["/bin/true"],
              "started": 0.0, "ended": None, "state": "running", "outcome": None, "reason": None, "rule": "defaults",
              "limits": {"memory_high": 64 << 20, "memory_max": 128 << 20, "pids_max": 64}, "clips": [], "intent": None,
              "peak_bytes": 0, "cpu_s": 0.0, "exit_code": None, "ladder": None}
    caller = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        ident = f"bench/{i:05d}-true"
        store.put_toolcall({**record, "id": ident, "seq": i, "cgroup": f"agents/bench/tools/{i:05d}-true", "pid": i})
        journal.emit("toolcall.start", f"tool call {ident} started: /bin/true", agent="bench", tool_call=ident, pid=i)
        with store.transaction():
            store.put_toolcall({**record, "id": ident, "seq": i, "state": "done", "outcome": "ok", "ended": 1.0})
            journal.emit("toolcall.end", f"tool call {ident} ended: ok", agent="bench", tool_call=ident, outcome="ok")
        caller.append(time.perf_counter() - t0)
    journal.close()
    store.close()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    shutil.rmtree(tmp, ignore_errors=True)
    return {"path": path, "toolcalls": n, "caller_us_p50": _pct(caller, 0.5) * 1e6, "caller_us_p99": _pct(caller, 0.99) * 1e6,
            "caller_us_mean": sum(caller) / n * 1e6, "cpu_us_per_toolcall": cpu / n * 1e6, "wall_s": wall}


# --- one path ----------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _ask(conn, cmd: str) -> dict:
    conn.send(cmd)
    return conn.recv()


def run_path(path: str, tracker: str, rates: list[int], seconds: float) -> tuple[list[dict], str]:
    tmp = tempfile.mkdtemp(prefix="agentd-loopbench-")
    os.chmod(tmp, 0o755)
    sock = str(Path(tmp, "agentd.sock"))
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(tmp, path, tracker, child))
    proc.start()
    rows = []
    try:
        if not parent.poll(120):
            raise RuntimeError(f"the daemon did not start: {Path(tmp, 'daemon.log').read_text()[-2000:]}")
        tracker_line = parent.recv()["tracker"]
        for rate in rates:
            name = f"burst{rate}"
            follower = Follower(sock, name)
            time.sleep(0.2)  # the stream is subscribed
            before = _ask(parent, "begin")
            out = subprocess.run([sys.executable, "-m", "benchmarks.loop_load", "--agent", sock, name, str(rate), str(seconds)],
                                 capture_output=True, text=True, timeout=seconds + 120, cwd=Path(__file__).resolve().parents[1])
            if out.returncode != 0:
                raise RuntimeError(f"the agent failed: {out.stderr[-2000:]}")
            agent = json.loads(out.stdout.strip().splitlines()[-1])
            during = _ask(parent, "snapshot")  # the lag of the burst itself, not of the drain
            idle_since, seen = time.time(), -1
            while len(follower.ends) < agent["spawned"] and time.time() - idle_since < 3:
                if len(follower.ends) != seen:
                    seen, idle_since = len(follower.ends), time.time()
                time.sleep(0.05)
            after = _ask(parent, "snapshot")
            follower.close()
            rows.append(_row(path, rate, agent, follower, before, during, after))
            print(_line(rows[-1]), flush=True)
    finally:
        parent.send("stop")
        proc.join(60)
        if proc.is_alive():
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows, tracker_line


def _row(path: str, rate: int, agent: dict, f: Follower, before: dict, during: dict, after: dict) -> dict:
    exits = {int(pid): ts for pid, ts in agent["exits"].items()}
    received, decided = [], []
    for ident, at in f.ends.items():
        pid = f.pids.get(ident)
        if pid in exits:
            received.append(at - exits[pid])
            decided.append(f.decided[ident] - exits[pid])
    tool_calls = after["starts"] - before["starts"]
    span = max(f.last - f.first, 1e-9)
    lags = during["lags"]
    return {"path": path, "rate": rate, "execs": agent["spawned"], "execs_per_s": agent["spawned"] / agent["seconds"],
            "tool_calls": tool_calls, "ends_received": len(f.ends),
            "loop_lag_p50_ms": _pct(lags, 0.5) * 1e3, "loop_lag_p99_ms": _pct(lags, 0.99) * 1e3,
            "loop_lag_max_ms": max(lags) * 1e3 if lags else float("nan"),
            "end_decided_p50_ms": _pct(decided, 0.5) * 1e3, "end_decided_p99_ms": _pct(decided, 0.99) * 1e3,
            "end_received_p50_ms": _pct(received, 0.5) * 1e3, "end_received_p99_ms": _pct(received, 0.99) * 1e3,
            "events_received": f.received, "events_per_s": f.received / span,
            "dropped": f.dropped + (after["subscriber_drops"] - before["subscriber_drops"])
            + (after["store_drops"] - before["store_drops"]),
            "cpu_ms_per_toolcall": (after["cpu_s"] - before["cpu_s"]) * 1e3 / max(tool_calls, 1),
            "batches": after["batches"] - before["batches"]}


COLUMNS = (("path", "{}"), ("rate", "{}"), ("execs_per_s", "{:.0f}"), ("tool_calls", "{}"),
           ("loop_lag_p50_ms", "{:.2f}"), ("loop_lag_p99_ms", "{:.1f}"), ("end_received_p50_ms", "{:.1f}"),
           ("end_received_p99_ms", "{:.1f}"), ("events_per_s", "{:.0f}"), ("dropped", "{}"),
           ("cpu_ms_per_toolcall", "{:.2f}"))


def _line(row: dict) -> str:
    return "  ".join(f"{fmt.format(row[key]):>{max(len(key), 8)}}" for key, fmt in COLUMNS)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--agent":
        agent_main(argv[1], argv[2], float(argv[3]), float(argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 s per rate instead of 10")
    ap.add_argument("--tracker", choices=("auto", "bpf", "cn_proc"), default="auto")
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--profile", metavar="FILE", help="cProfile the daemon's loop thread into FILE.<path>")
    ap.add_argument("--paths", default=",".join(PATHS), help="write paths to compare (direct,batched)")
    ap.add_argument("--alone-only", action="store_true", help="only the write path without the daemon")
    args = ap.parse_args(argv)
    if args.profile:
        os.environ["LOOP_LOAD_PROFILE"] = args.profile
    rates = [int(r) for r in args.rates.split(",")]
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    paths = [p for p in args.paths.split(",") if p in PATHS]
    logging.basicConfig(level=logging.INFO, format="agentd: %(message)s", stream=open(os.devnull, "w"))
    alone = [write_path_alone(p, 2000 if args.quick else 10_000) for p in paths]
    print("write path alone (journal + store work of one tool call: 2 records, 2 events):")
    for a in alone:
        print(f"  {a['path']:>8}: on the caller {a['caller_us_p50']:.0f} us p50, {a['caller_us_p99']:.0f} us p99, "
              f"{a['caller_us_mean']:.0f} us mean; process CPU {a['cpu_us_per_toolcall']:.0f} us per tool call")
    logging.getLogger().handlers.clear()
    if args.alone_only:
        return 0
    print("  ".join(f"{key:>{max(len(key), 8)}}" for key, _ in COLUMNS))
    rows, trackers = [], {}
    for path in paths:
        got, trackers[path] = run_path(path, args.tracker, rates, seconds)
        rows += got
    metrics = {f"{r['path']}_{r['rate']}_{key}": (round(v, 3) if isinstance(v, float) else v)
               for r in rows for key, v in r.items() if key not in ("path", "rate")}
    for a in alone:
        for key in ("caller_us_p50", "caller_us_p99", "caller_us_mean", "cpu_us_per_toolcall"):
            metrics[f"{a['path']}_alone_{key}"] = round(a[key], 1)
    for path in paths:  # the headline: the highest rate, each path
        top = [r for r in rows if r["path"] == path and r["rate"] == max(rates)]
        if top:
            for key in ("loop_lag_p99_ms", "end_received_p99_ms", "events_per_s", "dropped", "cpu_ms_per_toolcall"):
                metrics[f"{path}_top_{key}"] = round(top[0][key], 3)
    path = write_result("loop_load", metrics, {"rates": rates, "seconds_per_rate": seconds, "tracker": args.tracker,
                                               "trackers": trackers, "paths": paths, "probe_s": PROBE_S,
                                               "quick": args.quick}, rows=rows, write_path_alone=alone)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
