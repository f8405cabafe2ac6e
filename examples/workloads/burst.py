"""A tool call with a short memory burst far over its average (the shape of a real agent's
test run: peak-to-average up to 15x in the AgentCgroup traces).

usage: burst.py [BASE_MB] [BURST_MB] [HOLD_S]
"""

import sys
import time

base_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 20
burst_mb = int(sys.argv[2]) if len(sys.argv) > 2 else 320
hold_s = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0

base = bytearray(base_mb << 20)
time.sleep(0.3)
chunks = []
for _ in range(burst_mb // 16):
    chunks.append(bytearray(16 << 20))  # touched: bytearray zero-fills
time.sleep(hold_s)
peak = sum(len(c) for c in chunks) + len(base)
del chunks
time.sleep(0.2)
print(f"burst done: base {base_mb} MB, peak {peak >> 20} MB")
