"""Query requests and the reply envelope."""

from __future__ import annotations

import msgspec
import pytest

from memstream.schemas.errors import QueryError
from memstream.schemas.queries import OPS, SERVED_BY, SearchRequest, decode_request, ops_served
from memstream.schemas.replies import ErrorBody, Reply, encode_reply, error_reply


def test_every_op_has_a_request_type() -> None:
    """The ops of the contract each decode their request."""
    expected = {
        "search",
        "history",
        "task",
        "context",
        "conversation",
        "recall",
        "stats",
        "analytics",
        "get",
        "list",
        "revisions",
        "links",
        "watch",
        "outcome",
    }
    assert expected == set(OPS)


def test_defaults_and_read_your_writes_fields() -> None:
    """min_seq and wait_ms are accepted by every op, wait_ms defaulting to 2000."""
    for op in ("search", "stats"):
        req = decode_request(op, b'{"min_seq": 42}')
        assert (42, 2000) == (req.min_seq, req.wait_ms)
    search = decode_request("search", b'{"query": "x"}')
    assert isinstance(search, SearchRequest)
    assert (5, ("knowledge", "solutions", "collaborations")) == (search.top_k, search.kinds)


@pytest.mark.parametrize(
    ("op", "body", "expected"),
    [
        ("nope", b"{}", "unknown query op 'nope': use one of analytics, context"),
        ("search", b'{"query": "x", "topk": 3}', "unknown field `topk`"),
        ("search", b'{"query": "x", "top_k": 0}', ">= 1 - at `$.top_k`"),
        ("search", b'{"kinds": ["memes"]}', "at `$.kinds[0]`"),
        ("task", b"{}", "missing required field `task_id`"),
        ("analytics", b'{"name": "drop_tables"}', "at `$.name`"),
        ("analytics", b'{"name": "tool_usage", "params": {"x": [1]}}', "at `$.params"),
        ("history", b"{nope", "history request is not valid JSON"),
        ("stats", b'{"wait_ms": -1}', ">= 0 - at `$.wait_ms`"),
    ],
)
def test_bad_requests_name_the_field(op: str, body: bytes, expected: str) -> None:
    """A malformed request is bad_request with a message naming what is wrong."""
    with pytest.raises(QueryError) as info:
        decode_request(op, body)
    assert "bad_request" == info.value.code
    assert expected in info.value.message


def test_reply_envelope_shapes() -> None:
    """ok replies carry result; error replies carry code and message, nothing else."""
    assert {"ok": True, "result": {"n": 1}} == msgspec.json.decode(
        encode_reply(Reply(ok=True, result={"n": 1}))
    )
    err = Reply(ok=False, error=ErrorBody(code="not_found", message="no such task"))
    assert {
        "ok": False,
        "error": {"code": "not_found", "message": "no such task", "correlation_id": None},
    } == msgspec.json.decode(encode_reply(err))


def test_every_op_is_served_by_some_projection() -> None:
    """The op -> projection table covers every op, and only the projections there are."""
    assert set(OPS) == set(SERVED_BY)
    assert {"history", "vectors"} == {p for needs in SERVED_BY.values() for p in needs}


def test_an_op_is_served_where_its_first_projection_is() -> None:
    """The role -> ops table comes from SERVED_BY alone: recall is the vectors' (it reads
    the history from wherever that is), never the history's; watch reads none and is
    the unknown-op answerer's."""
    assert ["search", "recall"] == ops_served({"vectors"})
    assert "recall" not in ops_served({"history"})
    assert "watch" not in ops_served({"history"})
    assert "watch" in ops_served({"history"}, answers_unknown=True)
    assert list(OPS) == sorted(
        ops_served({"history", "vectors"}, answers_unknown=True), key=list(OPS).index
    )


def test_an_error_code_outside_the_contract_is_sent_as_internal() -> None:
    """A reply never carries a code clients do not know."""
    error = msgspec.json.decode(error_reply("odd", "x"))["error"]
    assert ("internal", "x") == (error["code"], error["message"])


def test_the_sdks_search_arguments_are_the_search_requests_fields() -> None:
    """SearchFilters types the SDK's keyword arguments; the request it sends is the
    contract's SearchRequest. The two name the same fields, so they cannot drift."""
    from memstream.producers._queries import SearchFilters
    from memstream.schemas.queries import SearchRequest

    assert set(SearchRequest.__struct_fields__) - {"query", "queries"} == set(
        SearchFilters.__annotations__
    )


def test_a_request_is_sent_without_its_defaults() -> None:
    """A newer client never sends a field at its default: an older worker, which refuses
    unknown fields, still answers it."""
    import msgspec

    from memstream.schemas.queries import SearchRequest

    assert b'{"query":"q","top_k":3}' == msgspec.json.encode(SearchRequest(query="q", top_k=3))
