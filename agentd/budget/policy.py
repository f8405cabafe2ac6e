"""The `budget` policy section: the memory all agents together may use, and how agentd
orders the lowest-priority agents in time ahead of it (`hold`)."""

from agentd.policy.spec import Mapping, Scalar

HOLD = Mapping(
    {
        "enabled": Scalar("bool", description="hold the lowest-priority agents near the budget (default true)"),
        "headroom_pct": Scalar("number", minimum=0, maximum=50,
                               description="hold when the agents are this close to the budget at least (default 5); "
                                           "the learned burst sizes widen it"),
        "margin_pct": Scalar("number", minimum=0, maximum=20,
                             description="kept free under the budget for what is not an agent's (default 2)"),
        "patience_s": Scalar("number", minimum=0.2, maximum=3600,
                             description="every held agent waiting this long while the higher-priority agents do not "
                                         "grow: the room kept for them goes to the held (default 2)"),
    },
    description="pause the lowest-priority agents as a whole near the budget instead of ending anyone",
)

SPEC = Mapping(
    {
        "memory_max": Scalar("size", description="memory all agents together (agents/) may use, e.g. 12G"),
        "grace_s": Scalar("number", minimum=0.2, maximum=60,
                          description="paused at the budget this long with no tool call left: end an agent's runtime"),
        "hold": HOLD,
    },
    required=("memory_max",),
    description="host memory budget for all agents together (the smallest over the policies in force applies)",
)
