"""agentd: a resource controller for AI agents, inference servers and training jobs."""

__version__ = "0.1.0"
