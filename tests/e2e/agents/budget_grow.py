"""An agent runtime for the budget-hold test: memory held in touched 4 MiB chunks, in step
with the other agent through files.

usage: budget_grow.py low DIR     hold 150 MiB, say ready, wait for the high agent's burst,
                                  then grow 4 MiB every 0.1 s to 250 MiB; print each step's time
       budget_grow.py high DIR    wait for the low agent, burst to 200 MiB, hold it 2 s, free, exit
"""

import json
import os
import sys
import time

CHUNK = 4 << 20


def wait_for(path, timeout=60):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {path}")
        time.sleep(0.02)


def low(d):
    held = [bytearray(CHUNK) for _ in range(150 // 4)]
    open(os.path.join(d, "ready"), "w").close()
    wait_for(os.path.join(d, "burst"))
    steps = []
    while len(held) * 4 < 250:
        t0 = time.monotonic()
        held.append(bytearray(CHUNK))
        steps.append(round(time.monotonic() - t0, 3))
        time.sleep(0.1)  # 80 MiB during the high burst: past what is left, so it must be held
    print(json.dumps({"steps": steps, "mib": len(held) * 4, "high_done_before_end": os.path.exists(os.path.join(d, "done"))}),
          flush=True)


def high(d):
    wait_for(os.path.join(d, "ready"))
    held = [bytearray(CHUNK) for _ in range(200 // 4)]
    open(os.path.join(d, "burst"), "w").close()
    time.sleep(2.0)
    del held[:]
    open(os.path.join(d, "done"), "w").close()
    print(json.dumps({"burst_mib": 200}), flush=True)
    time.sleep(0.5)


if __name__ == "__main__":
    {"low": low, "high": high}[sys.argv[1]](sys.argv[2])
