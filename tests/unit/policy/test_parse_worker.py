"""Policy parsing in worker processes: answers like parse_text, a parse past its time limit
is killed (the worker replaced), and workers run as nobody when started by root."""

import asyncio
import json
import os
import time

import pytest

from agentd.paths import DEFAULT_POLICY
from agentd.policy.parse_worker import ParseTimeout, ParseWorkers

SLOW = "version: 1\nname: big\nagents: [" + ",".join(["1"] * 99_000) + "]\n"  # ~0.4 s to parse


def run(coro):
    return asyncio.run(coro)


def test_a_worker_answers_like_the_loader_and_is_reused():
    async def go():
        pool = ParseWorkers(workers=2, timeout_s=10)
        try:
            policy, problems = await pool.parse(DEFAULT_POLICY.read_text(), "d.yaml", want_policy=True)
            assert policy.name == "default" and problems == []
            _, problems = await pool.parse("[" * 100_000, "deep.yaml")
            assert problems[0].file == "deep.yaml" and problems[0].line == 1
            t0 = time.monotonic()
            await pool.parse(DEFAULT_POLICY.read_text(), "d.yaml")
            warm_ms = (time.monotonic() - t0) * 1000
            assert pool.stats["worker_starts"] == 1 and warm_ms < 200
        finally:
            await pool.close()

    run(go())


def test_a_parse_past_its_time_limit_is_killed_and_the_pool_goes_on():
    async def go():
        pool = ParseWorkers(workers=1, timeout_s=0.05)
        try:
            with pytest.raises(ParseTimeout, match="longer than 0.05 s"):
                await pool.parse(SLOW, "slow.yaml")
            worker_pids = [w.proc.pid for w in pool._all]
            assert worker_pids == []  # the overrunning worker is gone (killed and reaped)
            pool.timeout_s = 10
            policy, _ = await pool.parse(DEFAULT_POLICY.read_text(), "d.yaml", want_policy=True)
            assert policy.name == "default"
            assert pool.stats["timeouts"] == 1 and pool.stats["worker_starts"] == 2
        finally:
            await pool.close()

    run(go())


def test_the_event_loop_runs_while_a_worker_parses():
    async def go():
        pool = ParseWorkers(workers=1, timeout_s=10)
        ticks = []

        async def ticker():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        try:
            await pool.parse(SLOW, "slow.yaml")
        finally:
            t.cancel()
            await pool.close()
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        assert max(gaps) < 0.15, f"the loop stalled {max(gaps):.2f} s"

    run(go())


@pytest.mark.skipif(os.geteuid() != 0, reason="privileges are dropped only when started by root")
def test_workers_run_as_nobody_niced_with_bounded_memory():
    async def go():
        pool = ParseWorkers(workers=1, timeout_s=10)
        try:
            await pool.parse("version: 1\nname: x\n", "x.yaml")
            (worker,) = pool._all
            status = open(f"/proc/{worker.proc.pid}/status").read()
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert uid_line.split()[1:] == ["65534"] * 4
            limits = open(f"/proc/{worker.proc.pid}/limits").read()
            assert "Max address space" in limits and str(1 << 30) in limits
            stat = open(f"/proc/{worker.proc.pid}/stat").read().rsplit(")", 1)[1].split()
            assert int(stat[16]) == os.getpriority(os.PRIO_PROCESS, 0) + 10  # field 19: nice
        finally:
            await pool.close()

    run(go())


def test_a_worker_that_dies_mid_parse_is_a_clean_problem_and_is_replaced():
    async def go():
        pool = ParseWorkers(workers=1, timeout_s=10)
        try:
            await pool.parse("version: 1\nname: x\n", "x.yaml")
            (worker,) = pool._all
            parse = asyncio.create_task(pool.parse(SLOW, "slow.yaml"))
            await asyncio.sleep(0.05)
            os.kill(worker.proc.pid, 9)  # as the kernel does to a worker over its memory bound
            policy, problems = await parse
            # -9; or 255 when asyncio's child watcher lost the race to reap it (a loaded host)
            assert policy is None and "ended before answering (exit status" in problems[0].message
            policy, _ = await pool.parse("version: 1\nname: y\n", "y.yaml", want_policy=True)
            assert policy.name == "y" and pool.stats["worker_deaths"] == 1
        finally:
            await pool.close()

    run(go())


def test_the_worker_answers_json_data_never_objects_the_daemon_would_rebuild():
    """The worker parses untrusted text as nobody: its answer must be plain data (a
    compromised worker must not be able to make the root daemon build objects)."""
    import subprocess
    import sys

    from agentd.policy.parse_worker import _LEN, READY

    req = json.dumps({"text": "version: 1\nname: x\nbogus: 1\n", "filename": "x.yaml"}).encode()
    out = subprocess.run([sys.executable, "-m", "agentd.policy.parse_worker"], input=_LEN.pack(len(req)) + req,
                         capture_output=True, timeout=60).stdout
    assert out.startswith(READY)
    out = out[len(READY):]
    answer = json.loads(out[_LEN.size:_LEN.size + _LEN.unpack(out[:_LEN.size])[0]])
    assert [p["key"] for p in answer["problems"]] == ["bogus"]
