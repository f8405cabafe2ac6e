"""Moved to agentd.procfs (the one home for /proc reading). This alias remains only for
agentd/core/manager.py and agentd/core/readopt.py (`from agentd.tracking import procfs`),
which another branch is moving into agentd/toolcalls/; switch them to `from agentd import
procfs` at that merge and delete this file."""

from agentd.procfs import *  # noqa: F401,F403
from agentd.procfs import cgroup_id_of, read_cgroup_v2, read_cmdline, read_exe, v2_mount  # noqa: F401
