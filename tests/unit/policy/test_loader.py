"""The policy loader: valid files load into the typed model; every bad input names file,
line, key path and what was expected, and nothing is built."""

import json

import pytest

from agentd.paths import DEFAULT_POLICY
from agentd.policy.loader import MAX_POLICY_BYTES, PolicyInvalid, load_file, validate_file, validate_text
from agentd.policy.schema import json_schema

GOOD = """\
version: 1
name: team-a
agents:
  - name: claude
    match: {comm: "^claude$", uid: 1000}
agent: {memory_max: 8G}
toolcalls:
  defaults: {memory_high: 256M, memory_max: 512M, pids_max: 100, timeout_s: 60}
  ceiling: {memory_max: 2G}
  escalation: {psi_full_pct: 30, sustain_s: 1, freeze_s: 2}
  tools:
    - name: pytest
      match: {argv: "pytest"}
      limits: {memory_max: 1G}
"""


def test_default_policy_loads():
    policy = load_file(DEFAULT_POLICY)
    assert policy.name == "default"
    assert policy.toolcalls.defaults.memory_high == 256 << 20
    assert policy.toolcalls.defaults.pids_max == 512
    assert any(t.name == "pytest" for t in policy.toolcalls.tools)


def test_good_policy_builds_typed_model():
    from agentd.policy.loader import parse_text

    policy, problems = parse_text(GOOD, "a.yaml")
    assert problems == []
    assert policy.agents[0].match.uid == 1000
    assert policy.toolcalls.ceiling.memory_max == 2 << 30
    assert policy.toolcalls.escalation.freeze_s == 2.0
    assert policy.toolcalls.tools[0].limits.memory_max == 1 << 30


@pytest.mark.parametrize(
    "text, line, key, words",
    [
        ("version: 1\nname: x\ntoolcalls:\n  defaults: {memory_max: lots}\n", 4, "toolcalls.defaults.memory_max", "size"),
        ("version: 1\nname: x\ntoolcalls:\n  defaults:\n    pids_max: -3\n", 5, "toolcalls.defaults.pids_max", ">= 1"),
        ("version: 1\nname: x\ntoolcalls:\n  defaults:\n    pids_max: 1.5\n", 5, "toolcalls.defaults.pids_max", "integer"),
        ("version: 1\nname: x\nfoo: 1\n", 3, "foo", "unknown key"),
        ("version: 1\nname: x\ntoolcalls: {tools: [{name: a, match: {argv: '('}}]}\n", 3, "toolcalls.tools[0].match.argv", "regular expression"),
        ("version: 1\nname: x\ntoolcalls: {tools: [{name: a, match: {}}]}\n", 3, "toolcalls.tools[0].match", "at least one"),
        ("version: 1\nname: x\ntoolcalls: {defaults: {memory_high: 2G, memory_max: 1G}}\n", 3, "toolcalls.defaults.memory_high", "<= memory_max"),
        ("version: 1\n", 1, "name", "required"),
        ("version: 2\nname: x\n", 1, "version", "<= 1"),
        ("version: 1\nname: ../etc\n", 1, "name", "A-Z"),
        ("version: 1\nname: x\nname: y\n", 3, "name", "duplicate"),
        ("- 1\n- 2\n", 1, "", "mapping"),
        ("version: [1\n", 2, "", "not valid YAML"),
        ("a: &x [1]\nb: *x\n", 1, "", "anchors"),
        ("!!python/object/apply:os.system ['true']\n", 1, "", "not allowed"),
        ("version: 1\nname: x\ntoolcalls: {defaults: {memory_max: 99999T}}\n", 3, "toolcalls.defaults.memory_max", "between"),
        ("", 0, "", "empty"),
    ],
)
def test_bad_policies_name_line_key_and_expectation(text, line, key, words):
    problems = validate_text(text, "p.yaml")
    assert problems, "a bad policy must be refused"
    first = problems[0]
    assert first.file == "p.yaml"
    assert first.line == line
    assert first.key == key
    assert words in first.message
    assert str(first).startswith("p.yaml")


def test_billion_laughs_is_refused_fast():
    lol = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    problems = validate_text(lol, "lol.yaml")
    assert "anchors" in problems[0].message


def test_huge_and_binary_files(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# x\n" * (MAX_POLICY_BYTES // 4 + 10))
    assert "larger than" in validate_file(big)[0].message
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert "UTF-8" in validate_file(binary)[0].message
    assert "cannot read" in validate_file(tmp_path / "missing.yaml")[0].message


def test_untrusted_file_refused_when_root_owned_required(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(GOOD)
    f.chmod(0o666)
    with pytest.raises(PolicyInvalid) as exc:
        load_file(f, require_root_owned=True)
    assert "writable" in str(exc.value)
    f.chmod(0o644)
    assert load_file(f, require_root_owned=True).name == "team-a"


def test_json_schema_matches_the_spec():
    schema = json_schema()
    json.dumps(schema)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"version", "name"}
    tc = schema["properties"]["toolcalls"]["properties"]
    assert "memory_high" in tc["defaults"]["properties"]
    assert tc["defaults"]["properties"]["pids_max"]["minimum"] == 1
