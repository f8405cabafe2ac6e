"""A busy agent for the crash benchmark: runs tool calls back to back for a while.

usage: crash_agent.py SECONDS [mix|rapid]

mix: short tool calls, children, and memory bursts past memory_high (paused there and
granted up to memory_max, then completed) and past memory_max (held there by the kernel,
then killed by the daemon at the end of its grace), so the daemon can die while a tool call
is held. rapid: short sleeps back to back, many execs stopped at the gate and many tool cgroups
made per second, so the daemon can die while an exec is gated or between a tool cgroup's
mkdir and its limits.
"""

import random
import subprocess
import sys
import time

deadline = time.monotonic() + float(sys.argv[1])
mode = sys.argv[2] if len(sys.argv) > 2 else "mix"
burst = "import time\nhold = [bytearray(1 << 20) for _ in range({mb})]\ntime.sleep(0.3)"
steps = {
    "mix": [
        (3, ["sleep", "0.2"]),
        (2, ["sh", "-c", "sleep 0.1; true"]),
        (2, ["sh", "-c", "sleep 0.3 & sleep 0.2; wait"]),
        (2, [sys.executable, "-c", burst.format(mb=70)]),  # past memory_high 48M, under memory_max 96M
        (2, [sys.executable, "-c", burst.format(mb=160)]),  # past memory_max: held, then killed
    ],
    # short, yet alive for a while after a kill at the gate (continued then by the gate
    # guard), so the benchmark can see it was never placed
    "rapid": [(8, ["sleep", "0.05"]), (1, ["sh", "-c", "sleep 0.05"])],
}[mode]
rng = random.Random()
weights = [w for w, _ in steps]
# rapid is paced: back to back `true` (100+ execs/s) outruns the daemon's event loop on a
# 2-core host (its tick then walks a growing backlog of unrecorded tool calls).
pause = 0.05 if mode == "rapid" else 0.0
while time.monotonic() < deadline:
    subprocess.run(rng.choices([s for _, s in steps], weights)[0])
    time.sleep(pause)
