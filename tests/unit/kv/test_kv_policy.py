"""The `kv:` policy section: built into KvPolicy, every key checked with file:line."""

from agentd.kv.model import KvPolicy
from agentd.policy.loader import parse_text

BASE = "version: 1\nname: default\n"


def test_kv_section_builds_the_decision_policy():
    policy, problems = parse_text(BASE + "kv:\n  rule: continuum\n  budget_fraction: 0.3\n  demote: false\n", "p.yaml")
    assert problems == []
    kv = policy.sections["kv"]
    assert isinstance(kv, KvPolicy) and (kv.rule, kv.budget_fraction, kv.demote) == ("continuum", 0.3, False)
    assert kv.fixed_ttl_s == KvPolicy().fixed_ttl_s  # unset keys keep their defaults


def test_bad_kv_keys_are_errors_with_file_and_line():
    _, problems = parse_text(BASE + "kv:\n  rule: sometimes\n  budget_fraction: 2\n  ttl: 3\n", "p.yaml")
    text = [str(p) for p in problems]
    assert any("p.yaml:4" in t and "kv.rule" in t and "one of" in t for t in text), text
    assert any("p.yaml:5" in t and "kv.budget_fraction" in t for t in text), text
    assert any("p.yaml:6" in t and "kv.ttl" in t and "unknown key" in t for t in text), text
    _, problems = parse_text(BASE + "kv:\n  resume_grace_s: 100\n  max_ttl_s: 10\n", "p.yaml")
    assert any("resume_grace_s" in str(p) for p in problems)
