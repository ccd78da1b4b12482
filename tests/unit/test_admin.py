"""Admin requests and replies (memadm.*): typed both ways, malformed ones one line."""

from __future__ import annotations

import msgspec
import pytest

from memstream.schemas.admin import (
    PurgeReport,
    PurgeResult,
    SqlResult,
    decode_admin_reply,
    decode_admin_request,
)
from memstream.schemas.errors import AdminError, QueryError
from memstream.schemas.replies import error_reply, ok_reply


def test_a_reply_decodes_to_its_result_type() -> None:
    """An ok reply gives the typed result."""
    body = ok_reply(SqlResult(columns=["n"], rows=[[1]], truncated=False))
    assert SqlResult(columns=["n"], rows=[[1]], truncated=False) == decode_admin_reply(
        "sql", body, SqlResult
    )


def test_an_error_reply_raises_its_message_and_code() -> None:
    """The responder's own words reach the operator, with the code."""
    with pytest.raises(AdminError) as info:
        decode_admin_reply("sql", error_reply("bad_request", "only SELECT"), SqlResult)
    assert ("bad_request", "only SELECT") == (info.value.code, str(info.value))


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b'{"ok": true}', b'{"ok": true, "result": {"columns": 3}}', b"[]"],
)
def test_a_malformed_reply_is_one_line_not_a_traceback(body: bytes) -> None:
    """Whatever comes back, the error is an AdminError with a single-line message."""
    with pytest.raises(AdminError) as info:
        decode_admin_reply("sql", body, SqlResult)
    assert 1 == len(str(info.value).splitlines())
    assert "sql" in str(info.value)


def test_requests_reject_unknown_fields_and_bad_tenants() -> None:
    """A misspelt field or an invalid tenant is a bad_request naming it."""
    with pytest.raises(QueryError) as info:
        decode_admin_request("sql", b'{"sql": "SELECT 1", "max_row": 5}')
    assert "max_row" in info.value.message
    with pytest.raises(QueryError) as info:
        decode_admin_request("purge", b'{"tenant": "Acme Corp"}')
    assert "tenant" in info.value.message


def test_purge_reports_add_up_across_processes() -> None:
    """Each role purges what it runs; the stream counts are the same everywhere."""
    report = PurgeReport(tenant="acme")
    history = PurgeReport(tenant="acme", stream_messages=5, history_rows={"events": 5})
    vectors = PurgeReport(tenant="acme", stream_messages=5, vector_points=2)
    for part in (history, vectors):
        wire = msgspec.json.decode(ok_reply(PurgeResult(report=part, projections=[])))
        report.merge(decode_admin_reply("purge", msgspec.json.encode(wire), PurgeResult).report)
    assert (5, {"events": 5}, 2) == (
        report.stream_messages,
        report.history_rows,
        report.vector_points,
    )
