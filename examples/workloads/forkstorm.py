"""A fork storm (a real agent runaway spawned 3,000 shells in 17 s): fork sleeping children
until fork fails, then report how far it got.

usage: forkstorm.py [MAX_CHILDREN]
"""

import os
import signal
import sys
import time

want = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
children = []
error = None
for _ in range(want):
    try:
        pid = os.fork()
    except OSError as exc:
        error = exc
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, signal.SIGKILL)
for pid in children:
    os.waitpid(pid, 0)
if error is not None:
    print(f"fork storm stopped after {len(children)} children: {error.strerror}")
else:
    print(f"fork storm ran all {want} children")
