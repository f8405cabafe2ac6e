"""Moved to agentd.procfs (the one home for /proc reading). This alias remains only for
agentd/core/manager.py and agentd/core/readopt.py, which another branch is moving into
agentd/toolcalls/; switch their imports to agentd.procfs at that merge and delete this file."""

from agentd.procfs import ProcInfo, alive, is_stopped, read_environ, read_proc, set_oom_score_adj  # noqa: F401
