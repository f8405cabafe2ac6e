"""Authorization decisions: who may do what, from peer credentials and the process tree."""

import pytest

from agentd.api.auth import (
    Action,
    Caller,
    can_see,
    decide,
    is_admin,
)
from agentd.api.contract import Peer
from agentd.procfs import parse_status_groups

ROOT = Caller(Peer(100, 0, 0), admin=True, agent=None)
OPERATOR = Caller(Peer(101, 1001, 1001), admin=True, agent=None)  # in the admin group
USER = Caller(Peer(102, 1000, 1000), admin=False, agent=None)
AGENT = Caller(Peer(103, 1000, 1000), admin=False, agent="a1")
ROOT_AGENT = Caller(Peer(104, 0, 0), admin=True, agent="a1")  # root, but inside an agent

EVERYTHING = list(Action)


@pytest.mark.parametrize("caller", [ROOT, OPERATOR])
@pytest.mark.parametrize("action", [a for a in EVERYTHING if a != Action.INTENT])
def test_admins_may_do_everything_but_declare_intents_from_outside_an_agent(caller, action):
    assert decide(action, caller, "a2", 1000).allowed


@pytest.mark.parametrize("caller", [ROOT, OPERATOR, USER])
def test_intents_come_only_from_inside_an_agent(caller):
    d = decide(Action.INTENT, caller, None, None)
    assert not d.allowed and "agentctl run" in d.reason


@pytest.mark.parametrize("caller", [AGENT, ROOT_AGENT])
def test_an_agent_acts_on_itself_only_even_as_root(caller):
    for action in (Action.INTENT, Action.AGENT_READ, Action.TOOLCALL_READ, Action.EVENTS):
        assert decide(action, caller, "a1", 1000).allowed, action
        d = decide(action, caller, "a2", 1000)
        assert not d.allowed and "a2" in d.reason, action
    for action in (Action.POLICY_APPLY, Action.POLICY_READ, Action.STATUS, Action.METRICS,
                   Action.TOOLCALL_CANCEL, Action.AGENT_REGISTER):
        assert not decide(action, caller, "a1", 0).allowed, action
    assert decide(Action.EVENTS, caller, None, None).allowed  # narrowed to a1 by the server


def test_a_user_registers_and_acts_on_its_own_agents_only():
    assert decide(Action.AGENT_REGISTER, USER).allowed
    for action in (Action.AGENT_READ, Action.TOOLCALL_READ, Action.TOOLCALL_CANCEL, Action.EVENTS):
        assert decide(action, USER, "mine", 1000).allowed
        d = decide(action, USER, "theirs", 1001)
        assert not d.allowed and "does not own" in d.reason
        assert not decide(action, USER, "unowned", None).allowed


@pytest.mark.parametrize("action", [Action.POLICY_APPLY, Action.POLICY_READ, Action.STATUS,
                                    Action.METRICS])
def test_a_user_is_refused_admin_actions_with_a_reason(action):
    d = decide(action, USER, admin_group="agentd")
    assert not d.allowed
    assert "root or members of group 'agentd'" in d.reason and "uid 1000" in d.reason


@pytest.mark.parametrize("caller", [ROOT, USER, AGENT])
def test_anyone_may_validate_a_policy_and_list(caller):
    for action in (Action.POLICY_VALIDATE, Action.AGENT_LIST, Action.TOOLCALL_LIST):
        assert decide(action, caller).allowed


def test_listings_show_what_a_caller_may_see():
    assert can_see(ROOT, "a2", 1000) and can_see(ROOT, None, None)
    assert can_see(USER, "mine", 1000) and not can_see(USER, "x", 0)
    assert not can_see(USER, None, None)  # daemon-wide events are for admins
    assert can_see(AGENT, "a1", 5) and not can_see(AGENT, "a2", 1000)
    assert not can_see(ROOT_AGENT, "a2", 0)


def test_admin_is_root_or_a_member_of_the_admin_group():
    assert is_admin(Peer(1, 0, 0), None, set())
    assert not is_admin(Peer(1, 1000, 1000), None, {27})
    assert is_admin(Peer(1, 1000, 27), 27, set())  # primary group
    assert is_admin(Peer(1, 1000, 1000), 27, {4, 27})  # supplementary group
    assert not is_admin(Peer(1, 1000, 1000), 27, {4})


def test_supplementary_groups_from_proc_status():
    text = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 1000 \nVmRSS:\t1 kB\n"
    assert parse_status_groups(text) == {4, 24, 27, 1000}
    assert parse_status_groups("Groups:\t\n") == set()
    assert parse_status_groups("Name: x\n") == set()
