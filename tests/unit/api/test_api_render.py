"""agentctl's human output: sizes, tables, event lines."""

from cli import render


def test_cells_format_sizes_times_and_lists():
    assert render.cell("memory_max", 512 << 20) == "512M"
    assert render.cell("peak_bytes", 3 << 29) == "1.5G"
    assert render.cell("granted", 768 << 20) == "768M"
    assert render.cell("granted", 2) == "2" and render.cell("pids_max", 4096) == "4096"
    assert render.cell("x", None) == "-" and render.cell("x", True) == "yes"
    assert render.cell("argv", ["a", "b"]) == "a,b"


def test_table_aligns_columns_and_marks_missing_values():
    out = render.table([{"name": "a1", "uid": 0}, {"name": "longer", "uid": 1000, "x": 1}],
                       ["name", "uid", "x"])
    assert out.splitlines() == ["NAME    UID   X", "a1      0     -", "longer  1000  1"]
    assert render.table([]) == "(none)"


def test_event_line_has_level_kind_who_message_and_the_numbers_only():
    ev = {"ts": 0.0, "level": "warn", "kind": "toolcall.killed", "agent": "a1",
          "tool_call": "a1/0003-pytest", "message": "killed at 512.0M",
          "data": {"memory_max": 512 << 20, "argv": ["x"], "gated": True, "rule": "defaults"}}
    line = render.event_line(ev)
    assert "WARN" in line and "toolcall.killed" in line and "a1/0003-pytest " in line
    assert "a1/a1/" not in line and line.endswith("killed at 512.0M  [memory_max=512M]")
    told = render.event_line({**ev, "dropped": 7})
    assert told.startswith("... 7 event(s) dropped here")


def test_problem_lines_match_the_loader_format():
    assert render.problems_lines([{"file": "p.yaml", "line": 3, "key": "tools[0].memory",
                                   "message": "expected a size"},
                                  {"file": "p.yaml", "line": 0, "key": "", "message": "empty"}]) \
        == ["p.yaml:3: tools[0].memory: expected a size", "p.yaml: <document>: empty"]
