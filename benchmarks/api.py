"""The control plane under load: request latency and event-stream throughput.

    python -m benchmarks.api [--quick] [--socket PATH]

- status and intent latency (p50/p99) and throughput under 50 concurrent clients, over
  kept-alive connections and with a new connection per request (how agentctl and
  declare_intent call); beside them one client alone, for the ratio;
- the highest journal event rate one `events --follow` reader sustains without a single
  event dropped (the server drops the oldest and says so when a reader falls behind).

By default the real daemon runs in a child process (its own state folder and cgroup root,
the cn_proc tracker, no GPU), serving the API with the rate limiter off, so the numbers are
the server's and the daemon's command set's cost, journal writes included. With --socket it
measures a running daemon instead (latency only: it cannot make that daemon emit events). Intents
are sent by a forked child that first registers itself as an agent (as `agentctl run`
does), since only a managed agent may declare one; status comes from outside any agent.
Writes benchmarks/results/api.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

from agentd.api.limits import ApiLimits
from benchmarks.results_file import write_result

RESULTS = Path(__file__).resolve().parent / "results" / "api.json"
CLIENTS = 50


# --- the server process ----------------------------------------------------------------------


def _serve(path: str, limits: ApiLimits, conn) -> None:
    """Child process: the real daemon and its API server; obeys commands from `conn`."""
    import uuid

    from agentd.api.server import start_api
    from agentd.cgroups.detect import open_driver
    from agentd.core.daemon import Daemon, DaemonConfig

    state = Path(path).parent / "state"
    leaf = f"agentd-bench-{uuid.uuid4().hex[:8]}"
    config = DaemonConfig(socket_path=Path(path), state_dir=state, policy_dir=None, cgroup_leaf=leaf,
                          tracker="cn_proc", move_self=False, gpu=False, api=False)

    async def main() -> None:
        daemon = Daemon(config)
        await daemon.start()
        server = daemon.api = await start_api(daemon.controller, path, limits=limits)
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        async def emit(rate: float, seconds: float) -> dict:
            tick = 0.005
            per_tick = rate * tick
            sent, owed, start = 0, 0.0, time.monotonic()
            while (now := time.monotonic()) - start < seconds:
                owed = rate * (now - start) - sent
                for _ in range(int(owed)):
                    daemon.journal.emit("toolcall.throttled", "Tool call bench/0001-x throttled at "
                                        "memory.high.", agent="bench", tool_call="bench/0001-x",
                                        level="warn", n=sent, memory_high=1 << 30)
                    sent += 1
                await asyncio.sleep(tick if owed < per_tick * 4 else 0)
            return {"sent": sent, "seconds": time.monotonic() - start}

        def commands() -> None:
            while True:
                cmd, *args = conn.recv()
                if cmd == "stop":
                    loop.call_soon_threadsafe(done.set)
                    return
                if cmd == "emit":
                    fut = asyncio.run_coroutine_threadsafe(emit(*args), loop)
                elif cmd == "stats":
                    fut = asyncio.run_coroutine_threadsafe(_stats(server), loop)
                conn.send(fut.result())

        threading.Thread(target=commands, daemon=True).start()
        conn.send("ready")
        await done.wait()
        await daemon.stop()

    logging.disable(logging.WARNING)  # the journal logs every event; measure the server, not stderr
    try:
        asyncio.run(main())
    finally:
        open_driver(leaf_name=leaf).remove("")  # the agents the intent load registered ended with their processes


async def _stats(server) -> dict:
    return server.stats.to_json()


# --- load ------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _load(path: str, method: str, url: str, body: dict | None, clients: int,
                per_client: int, keepalive: bool) -> dict:
    connector = aiohttp.UnixConnector(path=path, limit=clients, force_close=not keepalive)
    latencies: list[float] = []
    errors = limited = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            nonlocal errors, limited
            for _ in range(per_client):
                t0 = time.perf_counter()
                async with session.request(method, "http://agentd" + url, json=body) as resp:
                    await resp.read()
                    if resp.status == 429:
                        limited += 1
                    elif resp.status >= 400:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        await worker()  # warm-up connection and code paths
        latencies.clear()
        errors = limited = 0
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    return {"p50_ms": _pct(latencies, 0.50) * 1e3, "p99_ms": _pct(latencies, 0.99) * 1e3,
            "rps": len(latencies) / wall, "errors": errors, "rate_limited": limited,
            "n": len(latencies)}


def _as_agent(path: str, load_args: tuple, conn) -> None:
    """Forked child: become a managed agent, then run the load (intents need an agent)."""
    from agentd.api.client import ApiClient

    ApiClient(path).register_agent(name=f"bench-{os.getpid()}")
    conn.send(asyncio.run(_load(path, *load_args)))


def _load_in_agent(path: str, *load_args) -> dict:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_as_agent, args=(path, load_args, child))
    proc.start()
    result = parent.recv()
    proc.join(30)
    return result


def _count(lines, counts: dict) -> None:
    for line in lines:
        if line.startswith(b"{"):
            counts["received"] += 1
            if b'"dropped"' in line:
                counts["dropped"] += json.loads(line).get("dropped", 0)


def _follow_raw(path: str, stop: threading.Event, counts: dict) -> None:
    """The server's side alone: a socket that counts lines."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    sock.sendall(b"GET /v1/events?follow=1&agent=bench&level=warn HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(0.2)
    buf = b""
    while not stop.is_set():
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            continue
        if not data:
            break
        buf += data
        *lines, buf = buf.split(b"\n")
        _count(lines, counts)
    sock.close()


def _follow_agentctl(path: str, stop: threading.Event, counts: dict) -> None:
    """What an operator runs: `agentctl --json events -f`, which parses every event."""
    proc = subprocess.Popen([sys.executable, "-m", "cli.agentctl", "--socket", path, "--json",
                             "events", "-f", "--agent", "bench", "--level", "warn"],
                            stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    threading.Thread(target=lambda: (stop.wait(), proc.terminate()), daemon=True).start()
    _count(iter(proc.stdout.readline, b""), counts)
    proc.wait()


def _streams_open(conn) -> int:
    conn.send(("stats",))
    return conn.recv()["streams_open"]


def _event_rates(path: str, conn, rates: list[int], seconds: float, follow) -> list[dict]:
    rows = []
    for rate in rates:
        counts = {"received": 0, "dropped": 0}
        stop = threading.Event()
        t = threading.Thread(target=follow, args=(path, stop, counts), daemon=True)
        t.start()
        deadline = time.time() + 10
        while _streams_open(conn) < 1 and time.time() < deadline:
            time.sleep(0.02)  # the server has subscribed
        conn.send(("emit", rate, seconds))
        sent = conn.recv()
        # The stream may lag behind the emitter: wait while it still delivers (or 3 s idle).
        seen, idle_since = -1, time.time()
        while (got := counts["received"] + counts["dropped"]) < sent["sent"] and time.time() - idle_since < 3:
            if got != seen:
                seen, idle_since = got, time.time()
            time.sleep(0.05)
        deadline = time.time() + 10
        stop.set()
        t.join(5)
        while _streams_open(conn) > 0 and time.time() < deadline:
            time.sleep(0.02)
        rows.append({"target": rate, "sent": sent["sent"],
                     "sent_per_s": sent["sent"] / sent["seconds"],
                     "received": counts["received"], "dropped": counts["dropped"],
                     "lossless": counts["dropped"] == 0 and counts["received"] == sent["sent"]})
        if counts["dropped"] and len(rows) >= 2 and rows[-2]["dropped"]:
            break  # two lossy rates in a row: higher ones only lose more
    return rows


def _machine() -> str:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()} {platform.system()} {platform.release()}, {cpu}, " \
           f"{os.cpu_count()} CPUs, Python {platform.python_version()}, aiohttp {aiohttp.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="finish well under a minute")
    ap.add_argument("--socket", help="measure a running daemon on this socket instead")
    args = ap.parse_args()
    per_client = 20 if args.quick else 100
    seconds = 1.0 if args.quick else 3.0
    rates = [1000, 5000, 10000, 20000, 40000, 80000] if args.quick else \
        [1000, 2000, 5000, 10000, 20000, 40000, 60000, 80000, 120000]
    limits = ApiLimits(rate_per_s=1e9, rate_burst=1e9)  # measure the server, not the limiter

    tmp = None
    proc = conn = None
    if args.socket:
        path = args.socket
    else:
        tmp = tempfile.mkdtemp(prefix="agentd-bench-")
        path = os.path.join(tmp, "agentd.sock")
        ctx = multiprocessing.get_context("fork")
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(path, limits, child), daemon=True)
        proc.start()
        assert conn.recv() == "ready"

    load_before = [round(x, 2) for x in os.getloadavg()]  # other work on this machine
    intent = {"tool": "pytest", "memory": 2 << 30, "cpu": 2, "duration_s": 60}
    results: dict[str, dict] = {}
    try:
        for name, method, url, body in (("status", "GET", "/v1/status", None),
                                        ("intent", "POST", "/v1/intents", intent)):
            run = (lambda *a: asyncio.run(_load(*a))) if name == "status" else _load_in_agent
            results[f"{name}_1client"] = run(path, method, url, body, 1, per_client * 5, True)
            results[f"{name}_{CLIENTS}clients"] = run(path, method, url, body, CLIENTS,
                                                      per_client, True)
            results[f"{name}_{CLIENTS}clients_newconn"] = run(path, method, url, body, CLIENTS,
                                                              per_client, False)
        followers = {"raw": _follow_raw, "agentctl": _follow_agentctl}
        events = {name: _event_rates(path, conn, rates, seconds, fn)
                  for name, fn in followers.items()} if conn is not None else {}
        server_stats = None
        if conn is not None:
            conn.send(("stats",))
            server_stats = conn.recv()
    finally:
        if conn is not None:
            conn.send(("stop",))
            proc.join(10)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    metrics: dict[str, float] = {}
    for key, r in results.items():
        for field in ("p50_ms", "p99_ms", "rps"):
            metrics[f"{key}_{field}"] = round(r[field], 3)
        metrics[f"{key}_errors"] = r["errors"]
        metrics[f"{key}_rate_limited"] = r["rate_limited"]
    for name in ("status", "intent"):
        one = results[f"{name}_1client"]["p50_ms"]
        metrics[f"{name}_{CLIENTS}clients_p50_over_1client"] = round(
            results[f"{name}_{CLIENTS}clients"]["p50_ms"] / one, 2)
    for name, rows in events.items():
        lossless = [e["sent_per_s"] for e in rows if e["lossless"]]
        metrics[f"events_{name}_per_s_lossless_max"] = round(max(lossless), 0) if lossless else 0.0
        first_lossy = next((e for e in rows if not e["lossless"]), None)
        if first_lossy:
            metrics[f"events_{name}_first_lossy_rate_per_s"] = round(first_lossy["sent_per_s"], 0)
            metrics[f"events_{name}_first_lossy_dropped_fraction"] = round(
                first_lossy["dropped"] / max(1, first_lossy["sent"]), 4)
        metrics[f"events_{name}_accounted_fraction"] = round(
            sum(e["received"] + e["dropped"] for e in rows) / max(1, sum(e["sent"] for e in rows)), 4)
    params = {
        "controller": "the real daemon (cn_proc tracker, no GPU, journal to SQLite and JSONL) "
                      "in a child process, rate limiter off"
                      if not args.socket else f"a running daemon on {args.socket}",
        "quick": args.quick, "clients": CLIENTS, "requests_per_client": per_client,
        "client": "aiohttp UnixConnector in one asyncio process",
        "followers": {"raw": "a socket that counts lines (the server's side alone)",
                      "agentctl": "`agentctl --json events -f` in its own process, counted "
                                  "from its stdout (what an operator runs)"},
        "event_seconds_per_rate": seconds,
        "limits": {"stream_queue": limits.stream_queue, "write_timeout_s": limits.write_timeout_s,
                   "rate_limit": "disabled for the benchmark" if not args.socket
                   else "the daemon's own (429s are counted apart from errors)"},
        "events": events, "server_stats": server_stats,
        "load_average_before_after": [load_before, [round(x, 2) for x in os.getloadavg()]],
    }
    write_result("api", metrics, params)

    against = "the daemon in a child process" if not args.socket else f"the daemon on {args.socket}"
    print(f"API benchmark ({against}), {_machine()}")
    print(f"{'load':<32}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'errors':>8}{'429s':>8}")
    for key, r in results.items():
        print(f"{key:<32}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['rps']:>10.0f}{r['errors']:>8}"
              f"{r['rate_limited']:>8}")
    for name in ("status", "intent"):
        print(f"{name}: p50 with {CLIENTS} clients / 1 client = "
              f"{metrics[f'{name}_{CLIENTS}clients_p50_over_1client']}x")
    for name, rows in events.items():
        print(f"\nfollower: {name}")
        print(f"{'events/s target':<18}{'sent/s':>10}{'sent':>10}{'received':>10}{'dropped':>10}"
              "  lossless")
        for e in rows:
            print(f"{e['target']:<18}{e['sent_per_s']:>10.0f}{e['sent']:>10}{e['received']:>10}"
                  f"{e['dropped']:>10}  {'yes' if e['lossless'] else 'no'}")
        print(f"highest lossless rate ({name}): "
              f"{metrics[f'events_{name}_per_s_lossless_max']:.0f} events/s "
              f"(stream queue {limits.stream_queue})")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
