"""Host side of the VM tests.

tests/vm/guest holds tests that run only inside the VM (pure cgroup v2, NUMA, swap):
tests/vm/test_vm.py boots the VM once and runs them there. On the host they are not
collected, except when:
  AGENTD_IN_VM=1       the guest's own run (tests/vm/guest_run.sh exports it), or
  AGENTD_VM_COLLECT=1  test_vm.py listing the guest test ids (--collect-only) to report
                       each of them as its own host test.
"""

import os

IN_VM = os.environ.get("AGENTD_IN_VM") == "1"
LISTING = os.environ.get("AGENTD_VM_COLLECT") == "1"

if IN_VM or LISTING:
    # Inside the VM (or listing its tests): never boot a VM from the VM.
    collect_ignore = ["test_vm.py", "test_vm_kernels.py", "test_harness.py", "harness.py", "tracker_check.py"]
else:
    collect_ignore = ["guest", "harness.py", "tracker_check.py"]


def pytest_terminal_summary(terminalreporter):
    """One measurement line per VM boot of this session."""
    if IN_VM or LISTING:
        return
    import sys

    harness = sys.modules.get("agentd_vm_harness")
    if harness is None:
        return
    for r in harness.RUNS:
        terminalreporter.write_line(r.summary())
