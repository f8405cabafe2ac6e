"""The vLLM adapter's translation logic, without vLLM: requests shaped like vLLM's Request
(request_id, num_tokens, kv_transfer_params, sampling_params.extra_args), a fake agentd client.
What this does not show: that vLLM calls these hooks as assumed (docs/kv.md, "vLLM")."""

from __future__ import annotations

from types import SimpleNamespace

from agentd.kv.vllm_adapter import VllmKvTranslator, WorkerReleases, program_meta


class FakeKv:
    def __init__(self, action="keep", ttl=3.0):
        self.action, self.ttl = action, ttl
        self.calls = []
        self.notices = []

    def turn_ended(self, program, **kw):
        self.calls.append(("turn_ended", program, kw))
        return {"action": self.action, "ttl_s": self.ttl, "hints": {"sglang": None}}

    def next_turn(self, program):
        self.calls.append(("next_turn", program))
        return {"outcome": "hit"}

    def watch(self, timeout_s):
        out, self.notices = self.notices, []
        return out


def req(rid, program=None, tokens=1000, where="kv"):
    meta = {"agentd": {"program": program, "pid": 4242}} if program else None
    return SimpleNamespace(request_id=rid, num_tokens=tokens, prompt_token_ids=[0] * tokens,
                           kv_transfer_params=meta if where == "kv" else None,
                           sampling_params=SimpleNamespace(extra_args=meta if where == "extra" else None))


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_keep_holds_blocks_until_the_next_turn_then_releases_the_old_request():
    kv, clock = FakeKv(), Clock()
    tr = VllmKvTranslator(kv, clock)
    delay, params = tr.request_finished(req("r1", "prog"), [1, 2, 3])
    assert delay is True and params["agentd"]["action"] == "keep"
    assert kv.calls[0] == ("turn_ended", "prog", {"tokens": 1000, "tool_call": None, "pid": 4242, "agent": None,
                                                  "remaining_turns": None})
    assert tr.step() == set()  # still held
    r2 = req("r2", "prog")
    assert tr.new_request(r2) == "hit"
    assert tr.step() == set()  # not before the new request has its blocks (its prefix hit holds them)
    tr.allocated(r2)
    assert tr.step() == {"r1"}
    # The worker reports r1 only once vLLM has named it as finished.
    w = WorkerReleases()
    w.bind({"r1"})
    assert w.get_finished(set()) == (None, None)
    assert w.get_finished({"r1"}) == ({"r1"}, None)
    assert w.get_finished({"r1"}) == (None, None)  # once
    w.get_finished({"r7"})
    w.bind({"r7"})
    assert w.get_finished(set()) == ({"r7"}, None)  # named earlier, released later


def test_free_and_demote_do_not_delay_and_unknown_requests_are_left_alone():
    tr = VllmKvTranslator(FakeKv(action="free"), Clock())
    assert tr.request_finished(req("r1", "p"), [1])[0] is False
    tr = VllmKvTranslator(FakeKv(action="demote"), Clock())
    delay, params = tr.request_finished(req("r1", "p", where="extra"), [1])
    assert delay is False and params["agentd"]["action"] == "demote"
    kv = FakeKv()
    tr = VllmKvTranslator(kv, Clock())
    assert tr.request_finished(req("r9"), [1]) == (False, None) and tr.new_request(req("r9")) is None
    assert kv.calls == [] and program_meta(req("r9")) is None


def test_expiry_and_agentd_notices_release_holds():
    kv, clock = FakeKv(ttl=3.0), Clock()
    tr = VllmKvTranslator(kv, clock)
    tr.request_finished(req("r1", "a"), [1])
    tr.request_finished(req("r2", "b"), [2])
    tr.request_finished(req("r3", "c"), [3])
    kv.notices = [{"event": "evict", "program": "b"}, {"event": "tool_ended", "program": "c", "ttl_s": 10.0}]
    assert tr.step() == {"r2"}
    clock.t += 4
    assert tr.step() == {"r1"}  # a's TTL ran out; c's was extended by the tool's end
    clock.t += 7
    assert tr.step() == {"r3"}


def test_agentd_away_means_vllms_own_behaviour():
    class Down(FakeKv):
        def turn_ended(self, program, **kw):
            raise OSError("no socket")

    tr = VllmKvTranslator(Down(), Clock())
    assert tr.request_finished(req("r1", "p"), [1]) == (False, None) and tr.errors == 1


def test_program_level_fcfs_order():
    clock = Clock()
    tr = VllmKvTranslator(FakeKv(), clock)
    tr.new_request(req("r1", "old"))
    clock.t = 200.0
    tr.new_request(req("r2", "new"))
    assert tr.program_order(req("r3", "old"), 300.0) < tr.program_order(req("r2", "new"), 200.0)



def test_at_its_ttl_a_hold_asks_agentd_which_may_extend_it():
    """agentd re-decides a pin at its TTL while the tool runs; the adapter asks (decide) rather
    than dropping blocks agentd still counts as pinned, and frees on free or on no answer."""
    answers = [{"action": "keep", "ttl_s": 10.0}, {"action": "free", "ttl_s": 0.0}]

    class Asking(FakeKv):
        def decide(self, program):
            self.calls.append(("decide", program))
            if not answers:
                raise OSError("agentd away")
            return answers.pop(0)

    kv, clock = Asking(ttl=3.0), Clock()
    tr = VllmKvTranslator(kv, clock)
    tr.request_finished(req("r1", "p"), [1, 2])
    clock.t += 3.5
    assert tr.step() == set() and kv.calls[-1] == ("decide", "p")  # agentd extended it by 10 s
    clock.t += 5
    assert tr.step() == set() and kv.calls.count(("decide", "p")) == 1  # within the new TTL: not asked
    clock.t += 6
    assert tr.step() == {"r1"} and not tr.holds  # agentd now says free
    tr.request_finished(req("r2", "q"), [3])
    clock.t += 4
    assert tr.step() == {"r2"} and tr.errors == 1  # no answer: vLLM's own behaviour (free)


def test_reclaim_gives_up_the_largest_hold_and_tells_agentd():
    class Told(FakeKv):
        def evicted(self, program):
            self.calls.append(("evicted", program))
            return {"released": True}

    kv = Told()
    tr = VllmKvTranslator(kv, Clock())
    assert tr.reclaim() is False  # nothing held: vLLM preempts as usual
    tr.request_finished(req("r1", "small"), [1])
    tr.request_finished(req("r2", "big"), [2, 3, 4])
    assert tr.reclaim() is True and kv.calls[-1] == ("evicted", "big")
    assert tr.reclaim() is True and list(tr.holds) == ["small"]  # one release at a time, pending
    assert tr.step() == {"r2"}
    assert tr.reclaim() is True and list(tr.holds) == ["small"]  # sent, not yet freed by vLLM
    tr.freed({"r2"})
    assert tr.reclaim() is True and not tr.holds  # freed: the next hold goes
    tr.step()
    for _ in range(9):
        tr.step()
    assert tr.reclaim() is False  # never reported freed: not waited on for ever
