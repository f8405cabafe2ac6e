"""The host budget's pure decisions: which budget applies, and what is ended at it."""

from agentd.budget.model import (
    AgentFacts,
    BudgetSample,
    BudgetSettings,
    BudgetState,
    EndAgentRuntime,
    EndToolCall,
    ToolCallFacts,
    decide,
    settings_from,
)

MB = 1 << 20
S = BudgetSettings(1000 * MB, 2.0, "policy p")
TCS = (ToolCallFacts("a/1-x", "a", "normal", 300 * MB), ToolCallFacts("b/1-y", "b", "low", 100 * MB),
       ToolCallFacts("c/1-z", "c", "low", 200 * MB), ToolCallFacts("d/1-w", "d", "high", 900 * MB))
AGENTS = (AgentFacts("old-low", "low", 1.0), AgentFacts("new-low", "low", 5.0), AgentFacts("hi", "high", 9.0))


def test_the_smallest_budget_wins_and_names_its_source():
    assert settings_from(None, {}) == BudgetSettings(None)
    s = settings_from(2000 * MB, {"gpu": {"memory_max": 1500 * MB, "grace_s": 4.0}, "x": {"memory_max": 3000 * MB}})
    assert (s.memory_max, s.grace_s, s.source) == (1500 * MB, 4.0, "policy gpu")
    assert settings_from(1000 * MB, {"gpu": {"memory_max": 1500 * MB}}).source == "--host-memory-max"


def test_nothing_happens_below_the_budget_or_on_the_first_paused_tick():
    state, actions = decide(BudgetState(paused_since=5.0), BudgetSample(10.0, False, 500 * MB, TCS, AGENTS), S)
    assert actions == [] and state.paused_since is None
    state, actions = decide(BudgetState(), BudgetSample(10.0, True, 1000 * MB, TCS, AGENTS), S)
    assert actions == [] and state.paused_since == 10.0  # freeing processes get one tick


def test_the_lowest_priority_largest_tool_call_is_ended_never_a_runtime_first():
    state, actions = decide(BudgetState(paused_since=10.0), BudgetSample(10.2, True, 1000 * MB, TCS, AGENTS), S)
    [end] = actions
    assert isinstance(end, EndToolCall) and end.id == "c/1-z" and end.figures["priority"] == "low"
    assert "host budget" in end.reason and state.paused_since is None and state.decisions == 1


def test_with_no_tool_call_left_the_newest_lowest_priority_runtime_goes_after_grace():
    paused = BudgetState(paused_since=10.0)
    assert decide(paused, BudgetSample(11.0, True, 1000 * MB, (), AGENTS), S)[1] == []
    state, actions = decide(paused, BudgetSample(12.5, True, 1000 * MB, (), AGENTS), S)
    assert actions == [EndAgentRuntime("new-low", actions[0].reason, actions[0].figures)]
    assert "runtimes alone" in actions[0].reason


def test_no_budget_no_decision():
    assert decide(BudgetState(paused_since=1.0), BudgetSample(9.0, True, 0, TCS, AGENTS), BudgetSettings(None))[1] == []
