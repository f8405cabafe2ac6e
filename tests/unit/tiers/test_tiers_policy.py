"""The tiers: policy section: built values, and file:line errors for bad tiers, nodes, ratios."""
from __future__ import annotations

from pathlib import Path

from agentd.policy.loader import parse_text
from agentd.tiers.policy import check_against
from agentd.tiers.topology import discover

FIX = Path(__file__).resolve().parent / "fixtures"


def topo(name):
    return discover(str(FIX / name / "sys"), str(FIX / name / "proc"))


def load(body: str):
    return parse_text("version: 1\nname: t\ntiers:\n" + body, "p.yaml")


GOOD = """\
  classes:
    - name: optimizer
      match: {argv: "train"}
      placement: {mode: interleave, weights: {local: 3, cxl: 1}}
      top_tier_max: 4G
      migrate: {rate_mb_s: 50}
      reclaim: {to: zswap, budget: 1G, psi_target_pct: 0.2}
    - name: server
      match: {comm: "^vllm$"}
      scope: [jobs]
      placement: {mode: bind, weights: {local: 1}}
"""


def test_a_good_section_builds_typed_classes_with_their_lines():
    policy, problems = load(GOOD)
    assert problems == []
    sec = policy.sections["tiers"]
    opt, srv = sec.classes
    assert opt.placement.weights == (("local", 3), ("far", 1)) and opt.top_tier_max == 4 << 30
    assert opt.reclaim.to == "zswap" and opt.reclaim.budget == 1 << 30 and opt.migrate.rate_mb_s == 50
    assert opt.where == "p.yaml:5" and srv.where == "p.yaml:11" and srv.scope == ("jobs",)


def test_percentages_reduce_and_must_add_up_to_100():
    policy, problems = load("  classes:\n    - name: a\n      match: {comm: x}\n"
                            "      placement: {mode: interleave, percent: true, weights: {local: 75, node2: 25}}\n")
    assert problems == [] and policy.sections["tiers"].classes[0].placement.weights == (("local", 3), ("node2", 1))
    _, problems = load("  classes:\n    - name: a\n      match: {comm: x}\n"
                       "      placement: {mode: interleave, percent: true, weights: {local: 70, cxl: 20}}\n")
    assert [(p.line, p.key) for p in problems] == [(7, "tiers.classes[0].placement.weights")]
    assert "add up to 90, not 100" in problems[0].message


def test_bad_tiers_modes_and_ratios_are_file_line_errors():
    _, problems = load("  classes:\n    - name: a\n      match: {comm: x}\n"
                       "      placement: {mode: interleave, weights: {dram: 1, cxl: 0}}\n")
    assert [(p.line, p.key) for p in problems] == [(7, "tiers.classes[0].placement.weights.dram")]
    assert "unknown tier" in problems[0].message
    _, problems = load("  classes:\n    - name: a\n      match: {comm: x}\n      placement: {mode: interleave, weights: {local: 0}}\n")
    assert "add up to 0" in problems[0].message
    _, problems = load("  classes:\n    - name: a\n      match: {comm: x}\n      placement: {mode: bind, weights: {local: 2, cxl: 1}}\n")
    assert "without ratios" in problems[0].message
    _, problems = load("  classes:\n    - name: a\n      match: {comm: x}\n      placement: {mode: teleport}\n")
    assert "expected one of local, bind" in problems[0].message
    _, problems = load("  classes:\n    - name: a\n      match: {comm: x}\n      placement: {weights: {cxl: 1, far: 2}, mode: interleave}\n")
    assert "named twice" in problems[0].message
    _, problems = load("  classes:\n    - name: a\n      match: {}\n")
    assert "at least one of" in problems[0].message
    _, problems = load("  classes:\n    - name: a\n      match: {comm: x}\n    - name: a\n      match: {comm: y}\n")
    assert "unique" in problems[0].message
    _, problems = load("  classes:\n    - name: a\n      match: {comm: x}\n      reclaim: {to: nvme, budget: 1G}\n")
    assert problems[0].key == "tiers.classes[0].reclaim.to"
    _, problems = load("  klasses: []\n")
    assert problems[0].line == 4 and "unknown key" in problems[0].message


def test_host_checks_name_the_class_line_for_missing_nodes_and_tiers():
    policy, _ = load("  classes:\n    - name: a\n      match: {comm: x}\n"
                     "      placement: {mode: interleave, weights: {local: 1, node7: 1}}\n"
                     "    - name: b\n      match: {comm: y}\n"
                     "      placement: {mode: interleave, weights: {local: 1, cxl: 1}, fallback: refuse}\n"
                     "    - name: c\n      match: {comm: z}\n      placement: {mode: interleave, weights: {local: 1, cxl: 1}}\n")
    lines = check_against(policy.sections["tiers"], topo("two_socket_dram"))
    assert lines[0].startswith("p.yaml:5: class a: node 7 does not exist on this host (nodes 0,1)")
    assert lines[1].startswith("p.yaml:8: class b: this host has no far tier") and "refuses" in lines[1]
    assert lines[2].startswith("p.yaml:11: class c: this host has no far tier") and "goes to the other tiers" in lines[2]
    assert check_against(policy.sections["tiers"], topo("two_cxl"))[0].startswith("p.yaml:5: class a: node 7")
