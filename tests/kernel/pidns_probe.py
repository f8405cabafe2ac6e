"""Run inside a child pid namespace by test_tracker_pidns.py: load the real BPF tracker there,
make processes whose pids this namespace knows (os.fork/Popen numbers), and print as one JSON
object what the tracker reported for them. argv[1]: a v2 cgroup directory to gate."""

import json
import os
import subprocess
import sys
import time

from agentd.events import ProcEventKind as K
from agentd.tracking.bpf_backend import BpfBackend

gated_dir = sys.argv[1]
events, out = [], {}
backend = BpfBackend(gate_timeout_s=30)  # a hang shows as one: no early fail-open here


def sink(ev):
    events.append(ev)
    if ev.gated:
        backend.release(ev.pid)  # what the daemon does once it has placed it


def of(pid, kind):
    return [e for e in events if e.pid == pid and e.kind == kind]


def settle(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while not pred() and time.monotonic() < end:
        time.sleep(0.02)
    return pred()


backend.start(sink)
try:
    backend.set_gated_cgroups({os.stat(gated_dir).st_ino})
    out["pid_ns"] = backend.pid_ns is not None
    out["forks_reported"] = backend.pidns_forks
    out["self"] = os.getpid()
    # An ordinary child: fork, exec and exit, each named by this namespace's pid.
    p = subprocess.Popen(["/bin/sh", "-c", "exit 3"])
    p.wait(10)
    settle(lambda: of(p.pid, K.EXIT))
    out["plain"] = {"pid": p.pid, "fork": len(of(p.pid, K.FORK)), "exec": len(of(p.pid, K.EXEC)),
                    "exit_codes": [e.exit_code for e in of(p.pid, K.EXIT)]}
    # A child that moves itself into the gated cgroup, then execs: stopped, released by pid.
    p = subprocess.Popen(["/bin/sh", "-c", f"echo $$ > {gated_dir}/cgroup.procs; exec /bin/true"])
    t0 = time.monotonic()
    try:
        p.wait(10)
        out["gated"] = {"rc": p.returncode, "s": round(time.monotonic() - t0, 3)}
    except subprocess.TimeoutExpired:
        out["gated"] = {"rc": None, "hung": True}
        p.kill()
    out["gated"]["events"] = [e.gated for e in of(p.pid, K.EXEC)]
    # A task in a pid namespace below this one, in the gated cgroup: the daemon cannot name
    # it, so it must run, never stopped; its unshare (in this namespace) is gated and placed.
    p = subprocess.Popen(["/bin/sh", "-c", f"echo $$ > {gated_dir}/cgroup.procs; "
                          "exec unshare --pid --fork /bin/sh -c '/bin/true; exit 5'"])
    try:
        p.wait(10)
        out["nested"] = {"rc": p.returncode}
    except subprocess.TimeoutExpired:
        out["nested"] = {"rc": None, "hung": True}
        p.kill()
    out["nested"]["gated_execs"] = [e.filename for e in events if e.kind == K.EXEC and e.gated and e.pid == p.pid]
    out["stats"] = backend.stats()
finally:
    backend.stop()
print(json.dumps(out))
