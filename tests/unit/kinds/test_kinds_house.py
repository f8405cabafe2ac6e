"""The house drawn from the imports: every kind a room of the same shape, no room importing
another, pure models (agentd/kinds/house.py)."""

from __future__ import annotations

from agentd.kinds import house


def test_every_room_has_the_shape_and_no_breach():
    rooms = house.survey()
    assert [r.name for r in rooms] == house.room_names()
    assert {r.name for r in rooms} >= {"toolcalls", "budget", "colocation", "tiers", "kv"}
    assert [b for r in rooms for b in r.breaches] == []
    assert "breaches: none" in house.draw(rooms)


def test_a_room_that_imports_another_or_an_impure_model_is_a_breach(tmp_path, monkeypatch):
    monkeypatch.setattr(house, "room_names", lambda: ["alpha", "beta"])
    (tmp_path / "alpha").mkdir()
    (tmp_path / "beta").mkdir()
    (tmp_path / "alpha" / "kind.py").write_text("from agentd.beta.model import x\n")
    (tmp_path / "alpha" / "policy.py").write_text("")
    (tmp_path / "alpha" / "model.py").write_text("import time\nimport subprocess\ndef f():\n    return time.time()\n")
    (tmp_path / "beta" / "kind.py").write_text("")
    rooms = {r.name: r for r in house.survey(tmp_path)}
    assert rooms["alpha"].breaches == [
        "alpha/kind.py imports the room beta",
        "alpha/model.py imports subprocess (a model touches no kernel)",
        "alpha/model.py calls time.time() (a model takes `now` and its inputs)",
    ]
    assert rooms["beta"].breaches == ["beta: no policy.py", "beta: no model.py"]
