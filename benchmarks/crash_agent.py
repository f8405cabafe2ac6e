"""A busy agent for the crash benchmark: runs short tool calls back to back for a while.

usage: crash_agent.py SECONDS
"""

import random
import subprocess
import sys
import time

deadline = time.monotonic() + float(sys.argv[1])
steps = [
    ["sleep", "0.2"],
    ["sh", "-c", "sleep 0.1; true"],
    [sys.executable, "-c", "x = bytearray(30 << 20); import time; time.sleep(0.3)"],
    ["sh", "-c", "sleep 0.3 & sleep 0.2; wait"],
]
rng = random.Random()
while time.monotonic() < deadline:
    subprocess.run(rng.choice(steps))
