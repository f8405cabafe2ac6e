"""Moved to agentd.units (the one home for sizes). This alias remains only for
agentd/core/manager.py and agentd/core/escalation.py, which another branch is moving into
agentd/toolcalls/; switch their import to agentd.units at that merge and delete this file."""

from agentd.units import format_size, parse_size  # noqa: F401
