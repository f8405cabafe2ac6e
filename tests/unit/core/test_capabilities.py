"""agentd.core.capabilities: what `agentctl status` says about the capabilities held."""

from __future__ import annotations

from agentd.core import capabilities, capprobe
from agentd.core.capabilities import REASONS, summary


def mask(*names: str) -> int:
    return sum(1 << REASONS[n][0] for n in names)


def test_plain_root_holds_all():
    s = summary((1 << capabilities.ALL_CAPS) - 1)
    assert s["all"] and s["missing"] == [] and s["line"].startswith("capabilities: all")


def test_the_units_set_is_complete(monkeypatch):
    monkeypatch.setattr(capprobe, "perf_event_paranoid", lambda: 3)
    s = summary(mask(*REASONS))
    assert not s["all"] and s["held"] == list(REASONS) and s["missing"] == []
    assert set(s["why"]) == set(REASONS)


def test_a_capability_taken_away_is_named_with_what_it_is_for(monkeypatch):
    monkeypatch.setattr(capprobe, "perf_event_paranoid", lambda: 3)
    s = summary(mask(*(n for n in REASONS if n != "CAP_CHOWN")))
    assert s["missing"] == ["CAP_CHOWN"] and "result files" in s["line"]


def test_cap_sys_admin_is_not_missing_where_perf_event_open_does_not_need_it(monkeypatch):
    monkeypatch.setattr(capprobe, "perf_event_paranoid", lambda: 2)
    assert "CAP_SYS_ADMIN" not in summary(mask(*(n for n in REASONS if n != "CAP_SYS_ADMIN")))["missing"]
    monkeypatch.setattr(capprobe, "perf_event_paranoid", lambda: 3)
    assert "CAP_SYS_ADMIN" in summary(mask(*(n for n in REASONS if n != "CAP_SYS_ADMIN")))["missing"]


def test_effective_reads_capeff():
    assert capabilities.effective("Name:\tx\nCapEff:\t000000c001881025\n") == 0xc001881025
