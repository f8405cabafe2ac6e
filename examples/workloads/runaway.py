"""A runaway tool call: keeps allocating (a leak in a test, an unbounded cache) until
something stops it.

usage: runaway.py [STEP_MB] [LIMIT_MB]
"""

import sys
import time

step_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 32
limit_mb = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
held = []
while len(held) * step_mb < limit_mb:
    held.append(bytearray(step_mb << 20))
    time.sleep(0.02)
print(f"runaway reached {limit_mb} MB without being stopped")
