"""A tool call that reports where the kernel placed it and what the kernel counted:
its own /proc/self/cgroup and its v1 memory cgroup's counters (or v2 memory.events).

usage: report.py MODE [ARGS]: MODE is `where`, `burst MB`, `escape ROOT_V2_DIR`.
"""

import json
import os
import sys
import time


def where():
    out = {}
    for line in open("/proc/self/cgroup"):
        num, ctrl, path = line.strip().split(":", 2)
        out[ctrl or "v2"] = path
    return out


def memory_counters(paths):
    mem = paths.get("memory")
    if mem is not None:
        base = f"/sys/fs/cgroup/memory{mem}"
        read = lambda f: open(f"{base}/{f}").read()
        memsw = int(read("memory.memsw.failcnt")) if os.path.exists(f"{base}/memory.memsw.failcnt") else 0
        # With swap_max 0 the memory+swap counter is charged first, so it is the one that fails.
        return {"failcnt": int(read("memory.failcnt")) + memsw, "limit": int(read("memory.limit_in_bytes")),
                "max_usage": int(read("memory.max_usage_in_bytes")), "oom_control": read("memory.oom_control")}
    base = f"/sys/fs/cgroup{paths['v2']}"
    events = dict(line.split() for line in open(f"{base}/memory.events"))
    return {k: int(v) for k, v in events.items()}


mode = sys.argv[1]
if mode == "where":
    print(json.dumps({"pid": os.getpid(), "cgroup": where()}), flush=True)
elif mode == "burst":
    mb = int(sys.argv[2])
    hold = [bytearray(1 << 20) for _ in range(mb)]
    time.sleep(0.3)
    print(json.dumps({"pid": os.getpid(), "cgroup": where(), "kernel": memory_counters(where())}), flush=True)
elif mode == "escape":
    before = where()
    with open(os.path.join(sys.argv[2], "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    moved = where()
    t0 = time.monotonic()
    while "/tools/" not in where()["v2"] and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    print(json.dumps({"pid": os.getpid(), "before": before, "moved": moved, "after": where(),
                      "back_after_s": round(time.monotonic() - t0, 3)}), flush=True)
