"""What parsing a policy off the event loop costs: in-process vs a warm worker process vs a
cold one (started for the call), side by side, and how long the loop stalls meanwhile.

    python -m benchmarks.policy_parse [--quick]

Policies: the shipped default, a large valid one (500 tool rules), and hostile ones (nested
100,000 deep; 99,000 values). "loop stall" is the longest gap of a 1 ms ticker on the same
event loop during the parse: in-process parsing stalls it for the whole parse.
Writes benchmarks/results/policy_parse.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from agentd.paths import DEFAULT_POLICY
from agentd.policy.loader import parse_text
from agentd.policy.parse_worker import ParseWorkers
from benchmarks.results_file import write_result

LARGE = "version: 1\nname: large\ntoolcalls:\n  tools:\n" + "".join(
    f"    - name: tool{i}\n      match: {{argv: '(^|/)tool{i}\\b', uid: {1000 + i}}}\n"
    f"      limits: {{memory_high: 512M, memory_max: 1G, pids_max: 256, timeout_s: 600}}\n" for i in range(500))
POLICIES = {
    "default": DEFAULT_POLICY.read_text(),
    "large_valid": LARGE,
    "deep_hostile": "[" * 100_000,
    "many_values_hostile": "version: 1\nname: x\nagents: [" + ",".join(["1"] * 99_000) + "]\n",
}


async def _with_ticker(coro):
    """Run coro; return (its result, seconds it took, the loop's longest stall)."""
    ticks = [time.monotonic()]

    async def tick():
        while True:
            await asyncio.sleep(0.001)
            ticks.append(time.monotonic())

    task = asyncio.create_task(tick())
    await asyncio.sleep(0.005)
    t0 = time.monotonic()
    result = await coro
    took = time.monotonic() - t0
    task.cancel()
    ticks.append(time.monotonic())
    stall = max(b - a for a, b in zip(ticks, ticks[1:]))
    return result, took, stall


async def _in_process(text: str):
    return parse_text(text, "bench.yaml")


async def run(repeat: int) -> tuple[list, dict]:
    rows, metrics = [], {}
    warm = ParseWorkers(workers=1, timeout_s=30)
    await warm.parse("version: 1\nname: x\n", "warm.yaml")
    try:
        for name, text in POLICIES.items():
            for mode in ("in_process", "worker_warm", "worker_cold"):
                times, stalls = [], []
                for _ in range(repeat if mode != "worker_cold" else max(3, repeat // 5)):
                    if mode == "in_process":
                        _, took, stall = await _with_ticker(_in_process(text))
                    elif mode == "worker_warm":
                        _, took, stall = await _with_ticker(warm.parse(text, "bench.yaml"))
                    else:
                        cold = ParseWorkers(workers=1, timeout_s=30)
                        _, took, stall = await _with_ticker(cold.parse(text, "bench.yaml"))
                        await cold.close()
                    times.append(took)
                    stalls.append(stall)
                p50 = statistics.median(times) * 1000
                worst_stall = max(stalls) * 1000
                rows.append((name, len(text), mode, p50, worst_stall))
                metrics[f"{name}_{mode}_ms_p50"] = round(p50, 3)
                metrics[f"{name}_{mode}_loop_stall_ms_max"] = round(worst_stall, 3)
    finally:
        await warm.close()
    return rows, metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    repeat = 5 if args.quick else 20
    rows, metrics = asyncio.run(run(repeat))
    print(f"{'policy':22} {'bytes':>8} {'mode':12} {'parse p50':>11} {'loop stall max':>15}")
    for name, size, mode, p50, stall in rows:
        print(f"{name:22} {size:>8} {mode:12} {p50:>8.2f} ms {stall:>12.2f} ms")
    path = write_result("policy_parse", metrics, {"quick": args.quick, "repeat": repeat,
                                                  "policies": {k: len(v) for k, v in POLICIES.items()}})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
