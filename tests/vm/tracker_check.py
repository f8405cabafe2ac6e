"""Run inside the VM by test_vm_kernels.py: load the BPF tracker on the guest's kernel
(BCC compiles against the guest kernel's headers from its Debian package) and check the
exit events of known children. Prints one JSON object."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agentd.tracking import bpf_source as src  # noqa: E402
from agentd.tracking.bpf_backend import BpfBackend  # noqa: E402

THREADED_EXIT = ("import os, threading, time\n"
                 "[threading.Thread(target=time.sleep, args=(30,), daemon=True).start() for _ in range(3)]\n"
                 "time.sleep(0.1)\nos._exit(4)\n")


def main() -> int:
    facts = src.kernel_facts()
    out: dict = {"kernel": platform.release(),
                 "fork_child_comm_data_loc": facts.layouts["sched_process_fork"].field("child_comm").data_loc,
                 "exit_group_dead_field": facts.layouts["sched_process_exit"].field("group_dead") is not None,
                 "btf_offsets": facts.offsets}
    t0 = time.monotonic()
    backend = BpfBackend(guard=False)
    try:
        backend.load()
    except Exception as exc:  # the reason, and the verifier's last lines
        out["error"] = str(exc)
        out["log_tail"] = (getattr(exc, "compiler_output", "") or "").splitlines()[-15:]
        print(json.dumps(out))
        return 0
    out.update(load_s=round(time.monotonic() - t0, 1), exit_codes=backend.exit_codes, group_exit=backend.group_exit)
    events = []
    backend.start(events.append)
    cases = {"exit3": ["/bin/sh", "-c", "exit 3"], "threaded_exit4": [sys.executable, "-c", THREADED_EXIT],
             "ls_missing": ["/bin/sh", "-c", "exec ls /nonexistent 2>/dev/null"], "sigkill": ["/bin/sleep", "30"]}
    pids = {}
    for name, argv in cases.items():
        p = subprocess.Popen(argv)
        if name == "sigkill":
            time.sleep(0.3)
            p.kill()
        p.wait()
        pids[name] = p.pid
    time.sleep(1.0)
    backend.stop()
    out["exits"] = {name: [[e.exit_code_known, e.exit_code] for e in events if e.kind.value == "exit" and e.pid == pid]
                    for name, pid in pids.items()}
    out["forks_seen"] = sum(1 for e in events if e.kind.value == "fork" and e.pid in pids.values())
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
