"""Hostile policy files: each is refused with `file:line: what was expected`, in
milliseconds, without a traceback (issue 8 item 6, issue 9 item 4).

Before bounded_yaml, the deep documents here ended in a RecursionError after seconds and the
long integer in a ValueError (Python's int max str digits); `.inf` as a size in an
OverflowError."""

import time

import pytest

from agentd.toolcalls.rules import rule_matches
from agentd.policy import bounded_yaml
from agentd.policy.loader import parse_text
from agentd.policy.schema import Match

HEAD = "version: 1\nname: hostile\n"


def _refused(text: str, budget_s: float = 0.5):
    t0 = time.monotonic()
    policy, problems = parse_text(text, "evil.yaml")
    took = time.monotonic() - t0
    assert policy is None and problems, "a hostile file was accepted"
    assert took < budget_s, f"refusing took {took:.3f} s"
    return problems


@pytest.mark.parametrize("text, line", [
    ("[" * 100_000, 1),  # flow, deep
    ("{a: " * 100_000, 1),
    ("- " * 100_000, 1),  # block sequences on one line
    (HEAD + "agents:\n" + "".join(" " * i + "- \n" for i in range(1, 1200)), 3),  # block, deep
])
def test_deep_nesting_is_refused_in_milliseconds_with_a_line(text, line):
    problems = _refused(text)
    assert problems[0].line >= line
    assert f"deeper than {bounded_yaml.MAX_DEPTH}" in problems[0].message
    assert str(problems[0]).startswith(f"evil.yaml:{problems[0].line}: ")


def test_nesting_at_the_bound_is_still_parsed():
    text = "[" * bounded_yaml.MAX_DEPTH + "]" * bounded_yaml.MAX_DEPTH
    node, problems = bounded_yaml.compose(text, "ok.yaml")
    assert node is not None and problems == []


def test_five_thousand_digit_integer_is_a_clean_problem():
    problems = _refused(HEAD + "toolcalls:\n  defaults:\n    pids_max: " + "9" * 5000 + "\n")
    assert problems[0].line == 5
    assert "5000 digits" in problems[0].message and "at most 30" in problems[0].message


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN", "1e400"])
@pytest.mark.parametrize("key", ["cpu_max", "timeout_s", "memory_max"])
def test_infinite_and_nan_numbers_are_refused(key, value):
    problems = _refused(HEAD + f"agent:\n  {key}: {value}\n")
    assert problems[0].line == 4 and problems[0].key == f"agent.{key}"


def test_long_scalar_is_refused():
    problems = _refused(HEAD + "x: " + "a" * (bounded_yaml.MAX_SCALAR_CHARS + 1) + "\n")
    assert problems[0].line == 3 and "longer than" in problems[0].message


def test_many_values_are_refused():
    problems = _refused("[" + "1," * (bounded_yaml.MAX_NODES + 1) + "]", budget_s=2.0)
    assert "more than" in problems[0].message


@pytest.mark.parametrize("text, words", [
    (HEAD + "x: &a [1]\ny: *a\n", "anchors"),
    (HEAD + "x: !!python/object:os.system {}\n", "not allowed"),
    (HEAD + "x: !custom 1\n", "not allowed"),
    (HEAD + "---\nversion: 1\n", "more than one"),
    (HEAD + "agent: {memory_max: 2001-12-14t21:59:43.10-05:00}\n", "expected a size"),
])
def test_other_hostile_shapes(text, words):
    problems = _refused(text)
    assert words in str(problems[0]), problems


@pytest.mark.parametrize("pattern, words", [
    (r"(a)\1", "backreferences"),
    (r"(?=a)b", "lookaround"),
    (r"(?<!a)b", "lookaround"),
    (r"(unclosed", "missing )"),
])
def test_patterns_re2_cannot_run_are_refused(pattern, words):
    text = HEAD + f"toolcalls:\n  tools:\n    - name: t\n      match: {{argv: '{pattern}'}}\n"
    problems = _refused(text)
    assert problems[0].key == "toolcalls.tools[0].match.argv"
    assert words in problems[0].message and "RE2" in problems[0].message


def test_catastrophic_pattern_matches_in_linear_time():
    """`^(\\w+\\s?)+$` against 'a'*40+'!' takes Python's re minutes; RE2 microseconds."""
    policy, problems = parse_text(HEAD + "toolcalls:\n  tools:\n    - name: t\n"
                                  "      match: {argv: '^(\\w+\\s?)+$'}\n", "ok.yaml")
    assert problems == []
    argv = ["a" * 5000 + "!"]
    t0 = time.monotonic()
    assert not rule_matches(policy.toolcalls.tools[0].match, name="x", comm="x", exe=None, argv=argv, uid=0)
    assert time.monotonic() - t0 < 0.1
    assert rule_matches(Match(argv=r"(^|/)pytest\b"), name="x", comm="x", exe=None, argv=["/usr/bin/pytest", "-x"], uid=0)
