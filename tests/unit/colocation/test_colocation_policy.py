"""The colocation policy section: classes, guard, queue; errors with file:line."""
import textwrap

import yaml

from agentd.colocation.policy import SPEC, ColocationPolicy


def check(text):
    problems = []
    value = SPEC.check(yaml.compose(textwrap.dedent(text)), "colocation", problems, "p.yaml")
    return value, [(p.line, p.key, p.message) for p in problems]


GOOD = """
classes:
  - name: inference
    type: latency-critical
    priority: 100
    slo_tpot_ms: 40
    util_ceiling_pct: 70
    memory_headroom: 2G
    sm_share_pct: 60
    cpu_cores: 1
  - name: training
    type: best-effort
    priority: 10
guard: {memory_high_pct: 95, memory_low_pct: 85, step_s: 1, hold_s: 3}
queue: {max_length: 8}
mps_pipe_dir: /tmp/mps
"""


def test_a_good_section_builds_classes_with_defaults():
    value, problems = check(GOOD)
    assert problems == []
    assert isinstance(value, ColocationPolicy)
    inf, tr = value.classes["inference"], value.classes["training"]
    assert inf.latency_critical and inf.memory_headroom == 2 << 30 and inf.slo_tpot_ms == 40.0
    assert inf.keeps_cores_apart and not tr.keeps_cores_apart
    assert inf.slowdown_bound == 1.25 and tr.slowdown_bound == 3.0
    assert value.guard.memory_low_pct == 85 and value.queue_max == 8 and value.mps_pipe_dir == "/tmp/mps"


def test_errors_name_the_line_and_key():
    _, problems = check("""
    classes:
      - name: inference
        type: latency-critical
        sm_share_pct: 140
        cpu_coress: 2
      - name: training
        type: best-effort
        slo_tpot_ms: 30
    """)
    assert (5, "colocation.classes[0].sm_share_pct", "expected an integer <= 100, got 140") in problems
    assert any(line == 6 and path == "colocation.classes[0].cpu_coress" and "unknown key" in msg
               for line, path, msg in problems)


def test_cross_field_checks():
    _, problems = check("""
    classes:
      - {name: be, type: best-effort, slo_tpot_ms: 30}
    """)
    assert problems and "best-effort class has no SLO" in problems[0][2] and problems[0][0] == 3
    _, problems = check("""
    classes:
      - {name: a, type: best-effort}
      - {name: a, type: latency-critical}
    guard: {memory_high_pct: 80, memory_low_pct: 90}
    """)
    messages = " | ".join(m for _, _, m in problems)
    assert "does not flap" in messages
    _, problems = check("""
    classes:
      - {name: a, type: best-effort}
      - {name: a, type: latency-critical}
    """)
    assert problems == [(2, "colocation.classes", "class 'a' is defined more than once")]
    _, problems = check("""
    classes:
      - {name: "9x", type: weird}
    """)
    assert any("expected one of latency-critical, best-effort" in m for _, _, m in problems)


def test_classes_are_required():
    _, problems = check("guard: {step_s: 1}\n")
    assert problems == [(1, "colocation.classes", "required key is missing")]
