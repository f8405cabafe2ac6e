"""Placement notes (agentd.toolcalls.notes): one line per placement, read back at re-adoption
into the very record placement made; torn lines skipped; two generations kept."""

from __future__ import annotations

import os
import stat

from agentd.policy.schema import ResourceLimits
from agentd.toolcalls import model, notes
from agentd.toolcalls.notes import PlacementNotes
from agentd.toolcalls.rules import Clip, Intent, Resolved


def _note(seq: int, pid: int = 42) -> dict:
    resolved = Resolved(ResourceLimits(memory_high=40 << 20, memory_max=80 << 20), "tools[sleepy]+intent",
                        (Clip("memory", 9e9, 2e8),))
    return model.placement_note("a", seq, "sleep", f"agents/a/tools/{seq:04d}-sleep", pid, 777, 1000.5, resolved,
                                Intent(memory=48 << 20, tool="sleep"), "low")


def test_a_note_rebuilds_the_record_placement_would_have_written(tmp_path):
    pn = PlacementNotes(tmp_path / "placements.jsonl")
    assert pn.write(_note(3))
    pn.close()
    assert stat.S_IMODE(os.stat(tmp_path / "placements.jsonl").st_mode) == 0o600
    note = PlacementNotes(tmp_path / "placements.jsonl").by_cgroup()["agents/a/tools/0003-sleep"]
    tc = model.toolcall_from_note(note, ["sleep", "30"], "sleep", "/usr/bin/sleep")
    assert (tc.id, tc.seq, tc.pid, tc.started, tc.ladder.started, tc.priority) == ("a/0003-sleep", 3, 42, 1000.5, 1000.5, "low")
    assert tc.resolved == Resolved(ResourceLimits(memory_high=40 << 20, memory_max=80 << 20), "tools[sleepy]+intent",
                                   (Clip("memory", 9e9, 2e8),))
    assert tc.intent == Intent(memory=48 << 20, tool="sleep")
    assert tc.record()["argv"] == ["sleep", "30"]


def test_a_line_cut_short_by_a_crash_is_skipped_and_the_newest_note_wins(tmp_path):
    path = tmp_path / "placements.jsonl"
    pn = PlacementNotes(path)
    pn.write(_note(1, pid=10))
    pn.write(_note(1, pid=11))
    pn.close()
    with open(path, "ab") as f:
        f.write(b'{"cgroup":"agents/a/tools/0002-sleep","pid":')  # died in the middle of a write
    got = PlacementNotes(path).by_cgroup()
    assert set(got) == {"agents/a/tools/0001-sleep"} and got["agents/a/tools/0001-sleep"]["pid"] == 11


def test_two_generations_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(notes, "MAX_BYTES", 600)
    pn = PlacementNotes(tmp_path / "placements.jsonl")
    for seq in range(1, 4):
        pn.write(_note(seq))
    assert pn.rotate_if_large()
    pn.write(_note(4))
    assert set(pn.by_cgroup()) == {f"agents/a/tools/{s:04d}-sleep" for s in range(1, 5)}
    for seq in range(5, 8):
        pn.write(_note(seq))
    assert pn.rotate_if_large()  # the first generation goes
    assert set(pn.by_cgroup()) == {f"agents/a/tools/{s:04d}-sleep" for s in range(4, 8)}
    pn.close()
