"""The `budget` policy section: the memory all agents together may use."""

from agentd.policy.spec import Mapping, Scalar

SPEC = Mapping(
    {
        "memory_max": Scalar("size", description="memory all agents together (agents/) may use, e.g. 12G"),
        "grace_s": Scalar("number", minimum=0.2, maximum=60,
                          description="paused at the budget this long with no tool call left: end an agent's runtime"),
    },
    required=("memory_max",),
    description="host memory budget for all agents together (the smallest over the policies in force applies)",
)
