"""The kv kind in the real daemon: engines register and ask over the real socket (peer
credentials decide whose engine it is), bad input is a 4xx, an engine that exits loses its
pins, and the duration model learns from real tool calls that the tracker observes (agents
started with `agentctl run`, their tool calls placed in cgroups by the cn_proc tracker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentd.api.client import ApiClient, ApiClientError
from agentd.kinds.registry import KindEntry
from agentd.kv.client import KvClient
from tests.daemon_thread import DaemonThread, test_config, tmp  # noqa: F401 - tmp is a fixture
from tests.e2e.test_kind_routes import as_nobody

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs root")]

KV = KindEntry("kv", "agentd.kv", "cli.kv_commands")
BIN = Path(sys.executable).parent
SCRIPTED = Path(__file__).parent / "agents" / "scripted.py"
MB = 1 << 20


class KvDaemon(DaemonThread):
    def __init__(self, tmp: str, leaf: str):
        super().__init__(test_config(tmp, leaf, kinds=(KV,)))

    @property
    def kv(self):
        return self.kind("kv")

    def events(self, prefix="kv."):
        return [e for e in ApiClient(self.config.socket_path).recent_events(limit=1000) if e["kind"].startswith(prefix)]


def error_of(fn):
    try:
        fn()
    except ApiClientError as e:
        return (e.status, e.code)
    return None


def register(kv: KvClient, **kw):
    args = dict(bytes_per_token=160 * 1024, prefill_tps=5000.0, capacity_bytes=8 << 30, host_bytes=32 << 30, model="llama-70b")
    args.update(kw)
    return kv.register(**args)


def test_engine_protocol_bad_input_ownership_and_disconnect(tmp):
    d, leaf = tmp
    with KvDaemon(d, leaf) as dt:
        sock = dt.config.socket_path
        kv = KvClient("e1", sock)
        assert register(kv, host_bytes=0)["budget_bytes"] == 4 << 30  # no host tier: keep or free
        # Bad input is a 4xx with a field, and changes nothing.
        assert error_of(lambda: register(KvClient("e2", sock), bytes_per_token=-5)) == (400, "out_of_range")
        assert error_of(lambda: register(KvClient("../x", sock))) == (400, "invalid_name")
        assert error_of(lambda: KvClient("nobody-here", sock).turn_ended("p", tokens=10)) == (404, "unknown_engine")
        assert error_of(lambda: kv.decide("never-reported")) == (404, "unknown_program")
        assert error_of(lambda: kv.next_turn("never-reported")) == (404, "unknown_program")
        assert error_of(lambda: kv.turn_ended("p1", tokens=-1)) == (400, "out_of_range")
        assert error_of(lambda: kv.turn_ended("p1", tokens=10**9)) == (400, "out_of_range")
        assert error_of(lambda: kv.turn_ended("p1", tokens=100_000)) == (400, "out_of_range")  # more KV than the engine has
        assert error_of(lambda: kv.turn_ended("p1", tokens=100, tool_call="ghost/1-pytest")) == (404, "unknown_tool_call")
        assert error_of(lambda: kv.turn_ended("p1", tokens=100, agent="ghost")) == (404, "unknown_agent")
        assert error_of(lambda: kv.turn_ended("p1", tokens=100, pid=1)) == (404, "unknown_pid")
        assert "e2" not in dt.kv.engines and not dt.kv.programs
        # A short turn (no tool call known: the prior) on an idle engine is kept, with both hint forms.
        dec = kv.turn_ended("p1", tokens=2000, pressure=0.0)
        assert dec["action"] == "keep" and dec["tier"] == "gpu" and dec["ttl_s"] > 0
        assert dec["hints"]["sglang"]["cache_control"]["type"] == "ephemeral"
        assert dec["hints"]["sglang"]["cache_control"]["ttl"].endswith("s")
        assert dec["hints"]["vllm"]["kv_retention"] == "retain" and dec["hints"]["vllm"]["session_id"] == "p1"
        pins = kv.pins()
        assert [p["program"] for p in pins["pins"]] == ["p1"] and pins["pins"][0]["bytes"] == 2000 * 160 * 1024
        assert kv.next_turn("p1")["outcome"] == "hit"
        assert kv.next_turn("p1")["outcome"] == "miss"
        # Another uid may not see or act on e1, nor take its name.
        assert as_nobody(lambda: KvClient("e1", sock).decide("p1")) == ("error", 403, "not_your_engine")
        assert as_nobody(lambda: register(KvClient("e1", sock))) == ("error", 409, "engine_taken")
        assert as_nobody(lambda: KvClient("e9", sock).pins()["pins"]) == []
        # A flood: with the allowance lowered to 5 events and 1/s, real requests over the socket
        # get 429 once it is spent, and the refused ones record nothing.
        import agentd.kv.engines as engines

        old_rate = (engines.RATE_PER_S, engines.RATE_BURST)
        engines.RATE_PER_S, engines.RATE_BURST = 1.0, 5.0
        dt.kv.engines["e1"].tokens = 5.0
        try:
            answers = [error_of(lambda i=i: kv.turn_ended(f"flood{i}", tokens=100)) for i in range(12)]
        finally:
            engines.RATE_PER_S, engines.RATE_BURST = old_rate
        assert answers[:5] == [None] * 5 and answers[5:].count((429, "rate_limited")) >= 6  # at most one refilled
        refused = [f"flood{i}" for i, a in enumerate(answers) if a is not None]
        assert not [p for p in refused if ("e1", p) in dt.kv.programs]
        dt.kv.engines["e1"].tokens = 100.0
        for i, a in enumerate(answers):
            if a is None:
                assert kv.next_turn(f"flood{i}", done=True)["outcome"] == "hit"
        assert not [k for k in dt.kv.programs if k[1].startswith("flood")]
        # An engine that exits with pins held: they are released, and the journal says so.
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                c = KvClient("child", sock)
                register(c)
                c.turn_ended("c1", tokens=1000, pressure=0.1)
                os.write(w, b"ok")
            finally:
                os._exit(0)
        os.close(w)
        assert os.read(r, 10) == b"ok"
        os.waitpid(pid, 0)
        deadline = time.monotonic() + 10
        while "child" in dt.kv.engines and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "child" not in dt.kv.engines and not [p for p in dt.kv.ledger.pins.values() if p.engine == "child"]
        gone = [e for e in dt.events() if e["kind"] == "kv.engine_gone"]
        assert gone and gone[0]["data"]["pins"] == 1 and "exited" in gone[0]["message"]
        kinds = {e["kind"] for e in dt.events()}
        assert {"kv.engine", "kv.pin", "kv.turn"} <= kinds
        # agentctl kv shows pins and counters, as a table and as JSON.
        kv.turn_ended("p3", tokens=1000, pressure=0.1)
        out = subprocess.run([str(BIN / "agentctl"), "--socket", sock, "kv"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "p3" in out.stdout and "hit rate" in out.stdout, out.stderr
        out = subprocess.run([str(BIN / "agentctl"), "--socket", sock, "kv", "--json"], capture_output=True, text=True,
                             timeout=30)
        doc = json.loads(out.stdout)
        hits = 1 + answers.count(None)  # p1, and the flood programs let through
        assert doc["counters"]["hits"] == hits and doc["counters"]["misses"] == 1 and doc["pins"][0]["program"] == "p3"
        status = ApiClient(sock).status()["kinds"]["kv"]
        assert status["pins"] == 1 and status["engines"] == 1
        assert f"agentd_kv_hits_total {float(hits)}" in ApiClient(sock).metrics()


def test_duration_model_learns_from_real_tool_calls_and_pins_follow_them(tmp):
    d, leaf = tmp
    with KvDaemon(d, leaf) as dt:
        sock = dt.config.socket_path
        kv = KvClient("eng", sock)  # registered first: the question below must come quickly
        register(kv, capacity_bytes=64 << 30)
        steps = [["sleep", "0.3"]] * 4 + [["sleep", "4"]]
        agent = subprocess.Popen([str(BIN / "agentctl"), "--socket", sock, "run", "--name", "kva", "--", sys.executable,
                                  str(SCRIPTED), *[json.dumps(s) for s in steps]],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            client = ApiClient(sock)
            deadline = time.monotonic() + 30
            running = None
            while time.monotonic() < deadline:
                calls = client.tool_calls(agent="kva")
                running = next((c for c in calls if c["state"] == "running" and c["argv"][-1] == "4"), None)
                if running:
                    break
                time.sleep(0.05)
            assert running, f"the long tool call never showed up: {client.tool_calls(agent='kva')}"
            # The model learned the four short sleeps from the tracker's toolcall.end records.
            deadline = time.monotonic() + 5  # the fourth end may be handled after the fifth start
            while (dur := client.kind_get("kv", "durations"))["learned_from_tracker"] < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            sleep = {x["key"]: x for x in dur["durations"]}["kva|exec|sleep"]
            assert dur["learned_from_tracker"] >= 4 and sleep["n"] >= 4
            assert 0.25 <= sleep["p50_s"] <= 0.6
            # An engine's turn ends in the `sleep 4` just started: like the sleeps seen, it may end soon: keep.
            dec = kv.turn_ended("prog", tokens=30_000, tool_call=running["id"], pressure=0.0)
            assert dec["agent"] == "kva" and dec["tool_call"] == running["id"]
            assert dec["hints"]["vllm"]["tool_waiting"] is True
            # Asked well within the sleeps seen (0.3 s): keep. A loaded host may ask late; past
            # twice every sleep seen the Lindy tail says it runs on: the host tier. Between the two
            # the answer turns on the fitted distribution's tail and either is right.
            if dec["elapsed_s"] < 0.2:
                assert dec["action"] == "keep" and dec["expected_resume_s"] < 0.5, dec
            elif dec["elapsed_s"] > 0.6:
                assert dec["action"] == "demote", dec
            out = subprocess.run([str(BIN / "agentctl"), "--socket", sock, "kv", "durations", "--json"],
                                 capture_output=True, text=True, timeout=30)
            assert "kva|exec|sleep" in {x["key"] for x in json.loads(out.stdout)["durations"]}, out.stderr
            out = subprocess.run([str(BIN / "agentctl"), "--socket", sock, "kv", "durations"], capture_output=True,
                                 text=True, timeout=30)
            assert out.returncode == 0 and "kva|exec|sleep" in out.stdout
            # Once it has outlived every sleep seen, and the engine is full, the answer is the host tier.
            time.sleep(max(0.0, running["started"] + 1.5 - time.time()))
            dec = kv.decide("prog", pressure=1.0)
            assert dec["action"] == "demote" and dec["hints"]["vllm"]["kv_retention"] == "offload"
            assert dec["expected_resume_s"] > 0.5 and dec["elapsed_s"] >= 1.4
            [pin] = kv.pins()["pins"]
            assert pin["tier"] == "host" and pin["state"] == "tool_running" and pin["tool_call"] == running["id"]
            # Another agent's tool call cannot be claimed for this program.
            assert error_of(lambda: kv.turn_ended("prog", tokens=30_000, tool_call=running["id"], agent="other")) \
                == (403, "wrong_agent")
            # The kernel sees the tool end: the engine is told to prefetch, and the next turn hits the host tier.
            notices = []
            deadline = time.monotonic() + 15
            while not any(n["event"] == "prefetch" for n in notices) and time.monotonic() < deadline:
                notices += kv.watch(timeout_s=2)
            assert any(n["event"] == "prefetch" and n["program"] == "prog" for n in notices), notices
            assert kv.next_turn("prog")["outcome"] == "host_hit"
            kinds = [e["kind"] for e in dt.events()]
            assert "kv.demote" in kinds and "kv.prefetch" in kinds
            out, _ = agent.communicate(timeout=30)
            assert agent.returncode == 0
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)
        # Learned durations outlive the daemon.
        assert dt.kv.durations.observations >= 5
    with KvDaemon(d, leaf) as dt2:
        assert dt2.daemon.kind_readopt["kv"]["observations"] >= 5
        assert dt2.kv.durations.known("kva|exec|sleep") >= 4
