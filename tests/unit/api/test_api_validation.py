"""Request checks: names, strict JSON bodies, query parameters."""

import pytest

from agentd.api.contract import ApiError
from agentd.api.validation import (
    Field,
    check_body,
    check_name,
    check_query,
    level_at_least,
    parse_json_body,
    query_bool,
    query_int,
    query_level,
)


@pytest.mark.parametrize("name", ["a1", "coder.v2", "tool_call-17", "x" * 64, "a.b", "default.yaml"])
def test_good_names(name):
    assert check_name(name, "name") == name


@pytest.mark.parametrize("name", ["", "..", ".", "../x", "a/b", "a..b", "x" * 65, "a b",
                                  "a\x00b", "é", "~root", "a\nb"])
def test_bad_names_are_400_invalid_name_with_the_field(name):
    with pytest.raises(ApiError) as e:
        check_name(name, "agent")
    assert (e.value.status, e.value.code, e.value.field) == (400, "invalid_name", "agent")


def test_a_name_must_be_a_string():
    with pytest.raises(ApiError) as e:
        check_name(5, "name")
    assert e.value.code == "invalid_type"


@pytest.mark.parametrize("raw, code", [
    (b"{", "invalid_json"), (b"nul", "invalid_json"), (b"\xff", "invalid_json"),
    (b"[]", "invalid_body"), (b'"x"', "invalid_body"), (b"3", "invalid_body"),
])
def test_bodies_must_be_json_objects(raw, code):
    with pytest.raises(ApiError) as e:
        parse_json_body(raw)
    assert (e.value.status, e.value.code) == (400, code)


def test_an_empty_body_is_an_empty_object():
    assert parse_json_body(b"") == {} and parse_json_body(b"  \n") == {}


SPEC = {"name": Field((str,), name=True), "count": Field((int,)), "ratio": Field((float,)),
        "text": Field((str,), required=True)}


def test_a_body_that_fits_the_spec_passes():
    body = {"name": "a1", "count": 3, "ratio": 1, "text": "x"}
    assert check_body(body, SPEC) is body
    assert check_body({"text": "x", "name": None}, SPEC)  # null is "not given"


@pytest.mark.parametrize("body, code, field", [
    ({"text": "x", "extra": 1}, "unknown_field", "extra"),
    ({}, "missing_field", "text"),
    ({"text": 1}, "invalid_type", "text"),
    ({"text": "x", "count": True}, "invalid_type", "count"),  # bool is not an integer here
    ({"text": "x", "count": 1.5}, "invalid_type", "count"),
    ({"text": "x", "ratio": "1"}, "invalid_type", "ratio"),
    ({"text": "x", "name": "../a"}, "invalid_name", "name"),
])
def test_body_faults_name_the_field(body, code, field):
    with pytest.raises(ApiError) as e:
        check_body(body, SPEC)
    assert (e.value.status, e.value.code, e.value.field) == (400, code, field)


def test_query_parameters():
    check_query({"agent": "a"}, {"agent", "live"})
    with pytest.raises(ApiError) as e:
        check_query({"agnet": "a"}, {"agent"})
    assert e.value.field == "agnet"
    assert query_bool({"live": "1"}, "live") and not query_bool({"live": "false"}, "live")
    assert query_bool({}, "live", default=True)
    with pytest.raises(ApiError):
        query_bool({"live": "maybe"}, "live")
    assert query_int({"limit": "5"}, "limit", 1, 0, 10) == 5
    with pytest.raises(ApiError) as e:
        query_int({"limit": "50"}, "limit", 1, 0, 10)
    assert e.value.code == "out_of_range"
    assert query_level({"level": "warning"}) == "warn"
    assert query_level({}) == "info"
    with pytest.raises(ApiError) as e:
        query_level({"level": "critical"})
    assert e.value.code == "invalid_level"


def test_level_order():
    assert level_at_least("error", "warn") and level_at_least("warn", "warn")
    assert not level_at_least("info", "warn")
    assert level_at_least("weird", "error")  # unknown levels are shown, not hidden
