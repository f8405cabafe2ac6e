"""Flat controller metrics to Prometheus families."""

import re

from prometheus_client import CollectorRegistry, generate_latest

from agentd.api.server import ApiStats, _Collector, _split_metric, parse_listen


def test_metric_names_and_labels_are_split_and_sanitized():
    assert _split_metric("agentd_agents") == ("agentd_agents", {})
    assert _split_metric('agentd_kills_total{agent="a1",reason="oom"}') == (
        "agentd_kills_total", {"agent": "a1", "reason": "oom"})
    assert _split_metric("agentd.gpu-mem") == ("agentd_gpu_mem", {})
    assert _split_metric("9lives") == ("_9lives", {})


def test_counters_and_gauges_are_exposed_and_a_broken_controller_does_not_break_metrics():
    class Ctl:
        def metrics(self):
            return {"agentd_kills_total": 3, 'agentd_rss{agent="a"}': 5.5, "junk": "x"}

    class Broken:
        def metrics(self):
            raise RuntimeError("no")

    reg = CollectorRegistry()
    reg.register(_Collector(Ctl(), ApiStats()))
    text = generate_latest(reg).decode()
    assert re.search(r"# TYPE agentd_kills(_total)? counter", text)  # spelling varies by version
    assert "agentd_kills_total 3.0" in text
    assert 'agentd_rss{agent="a"} 5.5' in text and "junk" not in text
    reg2 = CollectorRegistry()
    reg2.register(_Collector(Broken(), ApiStats()))
    assert "agentd_api_streams_open 0.0" in generate_latest(reg2).decode()


def test_listen_addresses():
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen(":9464") == ("0.0.0.0", 9464)
    import pytest
    for bad in ("9464", "host:", "h:0", "h:99999"):
        with pytest.raises(ValueError):
            parse_listen(bad)
