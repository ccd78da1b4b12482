"""Subject builders and parsers."""

from __future__ import annotations

import pytest

from memstream.schemas.errors import InvalidSubject, InvalidTenant
from memstream.schemas.subjects import (
    dlq_subject,
    event_subject,
    parse_event_subject,
    parse_query_subject,
    query_subject,
    tenant_event_filter,
)


def test_event_subject_round_trip() -> None:
    """mem.<tenant>.<family>.<name> builds and parses back."""
    subject = event_subject("acme", "knowledge.stored")
    assert "mem.acme.knowledge.stored" == subject
    assert ("acme", "knowledge.stored", None) == tuple(parse_event_subject(subject))


def test_event_subject_as_stored_carries_its_slot() -> None:
    """The stream stores an event with its tenant's slot after it; anything else in
    that place is not a subject memstream reads."""
    assert ("acme", "knowledge.stored", 7) == tuple(
        parse_event_subject("mem.acme.knowledge.stored.7")
    )
    for bad in ("x", "64", "07", "-1", ""):
        with pytest.raises(InvalidSubject):
            parse_event_subject(f"mem.acme.knowledge.stored.{bad}")


@pytest.mark.parametrize("type_", ["knowledge", "a.b.c", "a.*", "a.>", ".b", "a. b"])
def test_event_subject_rejects_bad_types(type_: str) -> None:
    """A type must be exactly two clean tokens."""
    with pytest.raises(InvalidSubject):
        event_subject("acme", type_)


def test_event_subject_rejects_bad_tenant() -> None:
    """The tenant token is validated, so no wildcard can be built into a subject."""
    with pytest.raises(InvalidTenant):
        event_subject("*", "knowledge.stored")


@pytest.mark.parametrize(
    "subject", ["mem.acme.knowledge", "mem.acme.a.b.c", "memq.acme.a.b", "x.acme.a.b"]
)
def test_parse_event_subject_rejects(subject: str) -> None:
    """Only four-token mem.* subjects (a slot after them, as stored) are event subjects."""
    with pytest.raises(InvalidSubject, match="is not an event subject"):
        parse_event_subject(subject)


def test_query_subjects() -> None:
    """memq.<tenant>.<op> builds and parses; the tenant comes from the subject alone."""
    assert "memq.acme.search" == query_subject("acme", "search")
    assert ("acme", "search", None) == tuple(parse_query_subject("memq.acme.search"))
    # as the server's mapping delivers it, with the tenant's slot
    assert ("acme", "search", 7) == tuple(parse_query_subject("memq.acme.search.7"))
    with pytest.raises(InvalidSubject):
        parse_query_subject("memq.acme")
    with pytest.raises(InvalidTenant):
        parse_query_subject("memq.ACME.search")


def test_dlq_subject_files_bad_tenants_apart() -> None:
    """A dead letter whose tenant is unreadable still gets a valid subject."""
    assert "memdlq.history.acme" == dlq_subject("history", "acme")
    assert "memdlq.history._invalid" == dlq_subject("history", "Not A Tenant")
    assert "mem.acme.>" == tenant_event_filter("acme")
