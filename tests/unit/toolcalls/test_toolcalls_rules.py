"""Tool-call naming, intent validation and the limits that result (pure)."""

import json

import pytest

from agentd.toolcalls.rules import (
    IntentInvalid,
    find_tool_rule,
    parse_intent,
    parse_intent_env,
    resolve_limits,
    tool_name,
)
from agentd.paths import DEFAULT_POLICY
from agentd.policy.loader import load_file

POLICY = load_file(DEFAULT_POLICY)


@pytest.mark.parametrize(
    "argv, name",
    [
        (["/usr/bin/git", "status"], "git"),
        (["python3", "-m", "pytest", "-x"], "pytest"),
        (["/venv/bin/python3.11", "script.py"], "python-script.py"),
        (["bash", "-c", "pytest -q tests/"], "pytest"),
        (["sh", "-c", "cd /x && make"], "cd"),
        (["env", "FOO=1", "cargo", "build"], "cargo"),
        (["timeout", "10", "npm", "test"], "npm"),
        (["node"], "node"),
        (["../../evil name;rm -rf"], "evil_name_rm_-rf"),
        ([], "tool"),
    ],
)
def test_tool_names(argv, name):
    assert tool_name(argv) == name


def test_tool_name_is_always_cgroup_safe():
    for argv in (["\x00\n/"], ["..."], ["a" * 500]):
        name = tool_name(argv)
        assert name and "/" not in name and ".." not in name and len(name) <= 40


def test_rule_match_picks_pytest_limits():
    rule = find_tool_rule(POLICY, name="pytest", comm="python3", exe="/usr/bin/python3", argv=["python3", "-m", "pytest"], uid=1000)
    assert rule is not None and rule.name == "pytest"
    resolved = resolve_limits(POLICY, rule, None)
    assert resolved.limits.memory_max == 768 << 20
    assert resolved.limits.pids_max == 1024
    assert resolved.limits.timeout_s == 600  # from defaults
    assert resolved.rule == "tools[pytest]"


def test_intent_within_ceiling_is_honoured():
    resolved = resolve_limits(POLICY, None, parse_intent({"memory": "1G", "cpu": 2, "duration_s": 30, "priority": "high"}))
    assert resolved.clips == ()
    assert resolved.limits.memory_high == 1 << 30
    assert resolved.limits.memory_max == 2 << 30  # the policy's max/high ratio above the declared peak
    assert resolved.limits.cpu_max == 2
    assert resolved.limits.timeout_s == 60
    assert resolved.limits.cpu_weight == 400


def test_intent_beyond_ceiling_is_clipped_and_reported():
    resolved = resolve_limits(POLICY, None, parse_intent({"memory": "100G", "cpu": 64, "pids": 100000, "duration_s": 86400}))
    clipped = {c.field: c for c in resolved.clips}
    assert set(clipped) == {"memory_high", "cpu_max", "pids_max", "timeout_s"}
    assert resolved.limits.memory_max == POLICY.toolcalls.ceiling.memory_max
    assert resolved.limits.memory_high <= resolved.limits.memory_max
    assert resolved.limits.cpu_max == 4
    assert clipped["cpu_max"].requested == 64


@pytest.mark.parametrize(
    "intent, field",
    [
        ({"memory": -5}, "memory"),
        ({"memory": "lots"}, "memory"),
        ({"memory": True}, "memory"),
        ({"cpu": "two"}, "cpu"),
        ({"cpu": float("nan")}, "cpu"),
        ({"cpu": 1e12}, "cpu"),
        ({"duration_s": -1}, "duration_s"),
        ({"priority": "urgent"}, "priority"),
        ({"tool": "../../etc"}, "tool"),
        ({"tool": 7}, "tool"),
        ({"pids": 0}, "pids"),
        ({"sudo": True}, "sudo"),
    ],
)
def test_absurd_intent_is_rejected_with_the_field(intent, field):
    with pytest.raises(IntentInvalid) as exc:
        parse_intent(intent)
    assert exc.value.field == field


def test_intent_must_be_an_object():
    for bad in ([], "x", None, 3):
        with pytest.raises(IntentInvalid):
            parse_intent(bad)


def test_intent_from_environment():
    env = b"PATH=/bin\0AGENTD_INTENT=" + json.dumps({"tool": "build", "memory": "300M"}).encode() + b"\0HOME=/root\0"
    intent = parse_intent_env(env)
    assert intent.tool == "build" and intent.memory == 300 << 20
    assert parse_intent_env(b"PATH=/bin\0") is None
    with pytest.raises(IntentInvalid):
        parse_intent_env(b"AGENTD_INTENT={not json\0")
    with pytest.raises(IntentInvalid):
        parse_intent_env(b"AGENTD_INTENT=" + b"x" * 5000 + b"\0")
