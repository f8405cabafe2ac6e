"""Property-based tests (hypothesis) over everything that reads untrusted input: the policy
loader, the intent parser and the API body checks. Any input gives either a valid object or
a clean error (Problem / IntentInvalid / ApiError 4xx), never a traceback; a refused policy
changes nothing on disk (issue 9, "Hostile input")."""

from __future__ import annotations

import json
import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentd.api.contract import ApiError
from agentd.api.server import AGENT_BODY, CANCEL_BODY, POLICY_BODY
from agentd.api.validation import check_body, parse_json_body
from agentd.core.policies import PolicySet
from agentd.toolcalls.rules import Intent, IntentInvalid, parse_intent
from agentd.paths import DEFAULT_POLICY
from agentd.policy.loader import PolicyInvalid, parse_text
from agentd.policy.problems import Problem
from agentd.policy.schema import LIMIT_KEYS, Policy

FAST = settings(max_examples=100, deadline=1000, suppress_health_check=[HealthCheck.too_slow])

# --- generators ----------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["512M", "1G", "2", "0.5", "-1", "1P", "2P", ".inf", ".nan", "1e400", "9" * 60,
                     "9" * 400 + "M", "1" * 70, 1e308, -0.0, 2**64,
                     "(a)\\1", "(?=x)", "^(\\w+\\s?)+$", "pytest", "low", "high", "", "~"]),
)
KEYS = ["version", "name", "priority", "agents", "agent", "toolcalls", "defaults", "ceiling",
        "escalation", "tools", "match", "limits", "argv", "comm", "exe", "uid", "cgroup",
        "psi_full_pct", "sustain_s", "freeze_s", *LIMIT_KEYS, "bogus"]
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=25,
)
policy_like = st.fixed_dictionaries(
    {"version": st.one_of(st.just(1), scalars), "name": st.one_of(st.just("p"), scalars)},
    optional={k: values for k in ("priority", "agents", "agent", "toolcalls", "bogus")},
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20,
)


def _clean_problems(problems: list) -> None:
    assert problems and all(isinstance(p, Problem) for p in problems)
    for p in problems:
        assert isinstance(p.line, int) and p.line >= 0 and isinstance(p.message, str) and p.message
        assert str(p).startswith(p.file)


def _check_policy_text(text: str) -> None:
    policy, problems = parse_text(text, "prop.yaml")
    if policy is None:
        _clean_problems(problems)
    else:
        assert isinstance(policy, Policy) and problems == []


# --- the policy loader ---------------------------------------------------------------------


@FAST
@given(st.text(max_size=300))
def test_any_text_is_a_policy_or_clean_problems(text):
    _check_policy_text(text)


@FAST
@given(policy_like)
def test_any_policy_shaped_yaml_is_a_policy_or_clean_problems(doc):
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, UnicodeEncodeError):
        return
    _check_policy_text(text)


@FAST
@given(st.lists(st.sampled_from(["[", "{", "- ", "a: ", "\n  ", "&x ", "*x", "!!python/name:os.system ",
                                 "9" * 40, ".inf", "'", '"', "]", "}", ": ", "? ", "|\n", "---\n", "%YAML 1.1\n"]),
                max_size=60))
def test_yaml_fragments_never_raise(parts):
    _check_policy_text("version: 1\nname: p\nx: " + "".join(parts))


@settings(max_examples=40, deadline=2000)
@given(policy_like)
def test_a_refused_apply_changes_nothing_on_disk(tmp_path_factory, doc):
    d = tmp_path_factory.mktemp("p")
    ps = PolicySet(d, DEFAULT_POLICY, require_root_owned=False)
    ps.apply("version: 1\nname: p\n", "p.yaml")
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    try:
        text = yaml.safe_dump(doc)
    except yaml.YAMLError:
        return
    try:
        ps.apply(text, "new.yaml")
    except PolicyInvalid as exc:
        _clean_problems(exc.problems)
        assert {f.name: f.read_bytes() for f in d.iterdir()} == before
        assert sorted(ps.policies) == ["default", "p"]


# --- the intent parser ---------------------------------------------------------------------

intent_like = st.dictionaries(
    st.sampled_from(["tool", "memory", "cpu", "duration_s", "priority", "pids", "agent", "x"]),
    st.one_of(scalars, json_values), max_size=6)


@FAST
@given(st.one_of(intent_like, json_values))
def test_any_intent_is_an_intent_or_a_clean_error(data):
    try:
        intent = parse_intent(data)
    except IntentInvalid as exc:
        assert str(exc) and isinstance(exc.field, str)
        return
    assert isinstance(intent, Intent)
    for key in ("cpu", "duration_s"):
        value = getattr(intent, key)
        assert value is None or math.isfinite(value)


# --- API bodies ----------------------------------------------------------------------------


def _body_or_4xx(raw: bytes, spec) -> None:
    try:
        body = parse_json_body(raw)
        if spec is not None:
            check_body(body, spec)
    except ApiError as exc:
        assert 400 <= exc.status < 500 and exc.code and exc.message
        json.dumps(exc.to_json())
        return
    assert isinstance(body, dict)


SPECS = st.sampled_from([AGENT_BODY, POLICY_BODY, CANCEL_BODY, None])


@FAST
@given(st.binary(max_size=300), SPECS)
def test_any_bytes_are_a_body_or_a_4xx(raw, spec):
    _body_or_4xx(raw, spec)


@FAST
@given(st.one_of(json_values, st.dictionaries(st.sampled_from(["name", "policy", "filename", "text", "reason", "x"]),
                                              json_values, max_size=4)), SPECS)
def test_any_json_is_a_body_or_a_4xx(value, spec):
    _body_or_4xx(json.dumps(value).encode(), spec)


@FAST
@given(st.integers(min_value=1, max_value=5000), st.sampled_from(["[", '{"a":']), SPECS)
def test_deep_json_is_a_4xx(depth, opener, spec):
    _body_or_4xx(opener.encode() * depth, spec)


@FAST
@given(st.sampled_from(["memory", "cpu", "duration_s", "pids"]),
       st.one_of(st.text(alphabet="0123456789.eEkKmMgGtTiIbB -+", max_size=500), st.floats(), st.integers(),
                 st.sampled_from(["9" * 400 + "M", "9" * 5000, "1e309", "inf", "nan"])))
def test_any_intent_number_or_size_is_a_value_or_a_clean_error(key, value):
    try:
        intent = parse_intent({key: value})
    except IntentInvalid as exc:
        assert exc.field == key and str(exc).startswith(key)
        return
    assert isinstance(getattr(intent, key), (int, float))
