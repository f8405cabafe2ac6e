"""The daemon on its default write path (batched: the loop only enqueues; one writer thread
commits journal rows and records and writes journal.jsonl): real tool calls of a real agent
are visible through the API as soon as they are journalled, and after a stop the JSONL file
and the database hold the same events in the same order."""

import json
import sqlite3

from agentd.api.client import ApiClient
from tests.daemon_thread import DaemonThread, test_config, tmp, wait_for  # noqa: F401 (fixture)


def test_tool_calls_are_read_back_at_once_and_jsonl_matches_the_database(tmp):
    d, leaf = tmp
    config = test_config(d, leaf)
    assert config.store_writes == "batched"
    with DaemonThread(config) as dt:
        assert dt.daemon.store.batched
        dt.start_agent("burst", "for i in 1 2 3 4 5 6 7 8; do sleep 0.05; done; sleep 300")
        client = ApiClient(dt.socket_path)
        wait_for(lambda: len([e for e in client.recent_events(agent="burst", limit=1000)
                              if e["kind"] == "toolcall.end"]) >= 8, "8 toolcall.end events through the API")
        ended = [t for t in client.tool_calls(agent="burst") if t["state"] == "done"]
        assert len(ended) >= 8 and all(t["outcome"] == "ok" for t in ended)  # the records, read back
        explained = client.explain(ended[0]["id"])
        assert any(e["kind"] == "toolcall.end" for e in explained["decisions"])
        metrics = client.metrics()
        assert "agentd_store_batch_items_total" in metrics
    state = config.state_dir
    lines = [json.loads(line) for line in (state / "journal.jsonl").read_text().splitlines()]
    db = sqlite3.connect(str(state / "agentd.db"))
    rows = [r[0] for r in db.execute("SELECT seq FROM events ORDER BY seq")]
    db.close()
    assert [e["seq"] for e in lines] == rows  # every event in both, same order, the stop's included
    assert lines[-1]["kind"] == "daemon.stopped"
