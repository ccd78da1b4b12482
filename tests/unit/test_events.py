"""The event catalog: encoding, decoding, validation and upcasting."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memstream.schemas import events as ev
from memstream.schemas.errors import EventTooLarge, InvalidEvent, SubjectMismatch
from memstream.schemas.events import (
    EVENT_TYPES,
    EventDecoder,
    UnknownEvent,
    decode_event,
    encode_event,
)
from tests.samples import sample_events


def _body(**fields: Any) -> bytes:
    base = {"id": "e1", "tenant": "acme", "agent": "a1", "ts": "2026-11-21T12:00:00Z"}
    return msgspec.json.encode({**base, **fields})


def test_samples_cover_every_type() -> None:
    """The samples hold exactly one event of every catalog type."""
    assert sorted(EVENT_TYPES) == sorted(e.type for e in sample_events())


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: e.type)
def test_round_trip(event: ev.Event) -> None:
    """Every event type survives encode -> decode unchanged."""
    assert event == decode_event(encode_event(event))


def test_wire_form_is_flat_json_with_type() -> None:
    """Own fields sit beside the envelope fields, and `type` carries the tag."""
    wire = msgspec.json.decode(encode_event(sample_events()[0]))
    assert "knowledge.stored" == wire["type"]
    assert "2026-11-21T12:00:00.123456Z" == wire["ts"]
    assert {"id", "tenant", "agent", "ts", "v", "memory_id", "domain", "content"} <= set(wire)
    assert 1 == wire["v"]


def test_foreign_json_decodes_with_defaults() -> None:
    """A minimal event from another language, without optional fields, decodes."""
    event = decode_event(_body(type="knowledge.stored", memory_id="m", domain="d", content="c"))
    assert isinstance(event, ev.KnowledgeStored)
    assert () == event.tags
    assert 1 == event.v
    assert dt.datetime(2026, 11, 21, 12, tzinfo=dt.UTC) == event.ts


def test_unknown_fields_are_ignored() -> None:
    """A newer producer's extra field does not make an event invalid."""
    event = decode_event(_body(type="task.started", task_id="t", new_field={"x": 1}))
    assert isinstance(event, ev.TaskStarted)


def test_unknown_type_with_valid_envelope() -> None:
    """A valid envelope of an unknown type decodes to UnknownEvent, keeping the raw body."""
    body = _body(type="plan.drafted", steps=[1, 2])
    event = decode_event(body)
    assert isinstance(event, UnknownEvent)
    assert ("plan.drafted", "acme", body) == (event.type, event.tenant, event.raw)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", "event is not valid JSON"),
        (b"[1, 2]", "Expected `object`"),
        (
            _body(type="knowledge.stored", domain="d", content="c"),
            "missing required field `memory_id`",
        ),
        (
            _body(type="knowledge.stored", memory_id="m", domain="d", content=5),
            "Expected `str`, got `int` - at `$.content`",
        ),
        (
            _body(type="task.started", task_id="t", tenant="Acme Corp"),
            "Expected a tenant id (lowercase letters, digits, '_' and '-', at most 63)"
            " - at `$.tenant`",
        ),
        (_body(type="task.started", task_id="t", ts="2026-11-21T12:00:00"), "at `$.ts`"),
        (_body(type="task.started", task_id="x" * 129), "length <= 128 - at `$.task_id`"),
        (_body(type="task.started", task_id="t", id="i" * 65), "length <= 64 - at `$.id`"),
        (_body(type="task.started", task_id="t", agent="bad\nagent"), "at `$.agent`"),
        (_body(type="tool.used", tool="grep", duration_ms=-1), ">= 0 - at `$.duration_ms`"),
        (_body(type="context.set", key="k", data=[1]), "at `$.data`"),
        (_body(type="unknown", x=1), "at `$.type`"),
        (_body(type="a.b", tenant="Nope"), "at `$.type`"),
    ],
)
def test_invalid_events_name_the_problem(body: bytes, expected: str) -> None:
    """Each invalid body raises InvalidEvent whose message names the field and rule."""
    with pytest.raises(InvalidEvent) as info:
        decode_event(body)
    assert expected in str(info.value)


def test_oversized_event_rejected_on_both_sides() -> None:
    """Encoding and decoding both refuse a body over the limit, saying both sizes."""
    big = ev.KnowledgeStored(
        id="e",
        tenant="acme",
        agent="a",
        ts=ev.utc_now(),
        memory_id="m",
        domain="d",
        content="x" * 2000,
    )
    with pytest.raises(EventTooLarge) as info:
        encode_event(big, max_bytes=1024)
    assert "over the limit of 1024 bytes" in str(info.value)
    body = encode_event(big)
    with pytest.raises(EventTooLarge):
        EventDecoder(max_bytes=1024).decode(body)


def test_check_subject() -> None:
    """The envelope must agree with its subject's tenant and type tokens."""
    event = sample_events()[0]
    ev.check_subject(event, "mem.acme.knowledge.stored")
    with pytest.raises(SubjectMismatch, match="tenant 'acme' disagrees"):
        ev.check_subject(event, "mem.beta.knowledge.stored")
    with pytest.raises(SubjectMismatch, match="type 'knowledge.stored' disagrees"):
        ev.check_subject(event, "mem.acme.solution.stored")


def test_upcaster_lifts_an_older_version() -> None:
    """An event at an older v is lifted step by step to the current version."""

    def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        data["content"] = data.pop("body")
        return data

    decoder = EventDecoder(
        upcasters={("knowledge.stored", 1): v1_to_v2},
        current_versions={"knowledge.stored": 2},
    )
    old = _body(type="knowledge.stored", v=1, memory_id="m", domain="d", body="old text")
    event = decoder.decode(old)
    assert isinstance(event, ev.KnowledgeStored)
    assert ("old text", 2) == (event.content, event.v)
    # An event already at v2 is not touched.
    new = _body(type="knowledge.stored", v=2, memory_id="m", domain="d", content="new")
    assert "new" == decoder.decode(new).content  # type: ignore[union-attr]


def test_missing_upcaster_is_an_invalid_event() -> None:
    """Without a path to the current version the event is invalid, and says why."""
    decoder = EventDecoder(current_versions={"task.started": 3})
    with pytest.raises(InvalidEvent, match="no upcaster for 'task.started' from v1 to v2"):
        decoder.decode(_body(type="task.started", task_id="t"))


# --- property: any valid event survives the wire ------------------------------------

_text = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=40)
_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_tz = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
_ts = st.datetimes(
    min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=_tz
)


def _strategy(t: msgspec.inspect.Type) -> st.SearchStrategy[Any]:
    match t:
        case msgspec.inspect.StrType(pattern=p) if p and "a-z0-9" in p:
            return st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,62}\Z")
        case msgspec.inspect.StrType(min_length=lo, max_length=hi):
            return st.text(
                st.characters(exclude_categories=("Cc", "Cs")),
                min_size=lo or 0,
                max_size=min(hi or 60, 60),
            )
        case msgspec.inspect.IntType(ge=ge):
            return st.integers(min_value=ge, max_value=2**53)
        case msgspec.inspect.FloatType():
            return st.floats(min_value=0.001, max_value=1e9)
        case msgspec.inspect.BoolType():
            return st.booleans()
        case msgspec.inspect.NoneType():
            return st.none()
        case msgspec.inspect.DateTimeType():
            return _ts
        case msgspec.inspect.UnionType(types=types):
            return st.one_of([_strategy(x) for x in types])
        case msgspec.inspect.VarTupleType(item_type=item, max_length=hi):
            return st.lists(_strategy(item), max_size=min(hi or 5, 5)).map(tuple)
        case msgspec.inspect.DictType():
            return st.dictionaries(st.text(max_size=8), _json, max_size=4)
        case msgspec.inspect.AnyType():
            return _json
    raise AssertionError(f"no strategy for {t}")


def _event_strategy(cls: type[ev.Event]) -> st.SearchStrategy[ev.Event]:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = {f.name: _strategy(f.type) for f in info.fields}
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))


_any_event = st.one_of([_event_strategy(cls) for cls in EVENT_TYPES.values()])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_any_event)
def test_any_valid_event_survives_the_wire(event: ev.Event) -> None:
    """Any event that satisfies the contract decodes to an equal event."""
    assert event == decode_event(encode_event(event, max_bytes=1 << 30))


def test_nesting_is_bounded_and_brackets_in_strings_do_not_count() -> None:
    """An event may nest 64 levels (itself included); one more is InvalidEvent, from the
    decoder and from encode_event alike; brackets inside strings are text."""
    from memstream.schemas.events import MAX_DEPTH, EventDecoder, check_depth

    def body(levels: int, text: str = "c") -> bytes:
        inner = b'{"a":' * levels + b"{}" + b"}" * levels
        return (
            b'{"type":"knowledge.stored","id":"e1","tenant":"acme","agent":"a","ts":'
            b'"2026-11-21T12:00:00Z","memory_id":"m","domain":"d","content":'
            + msgspec.json.encode(text)
            + b',"metadata":'
            + inner
            + b"}"
        )

    EventDecoder().decode(body(MAX_DEPTH - 2))  # event + metadata + 62 more = 64
    with pytest.raises(InvalidEvent, match="nests more than 64 levels"):
        EventDecoder().decode(body(MAX_DEPTH - 1))
    with pytest.raises(InvalidEvent, match="nests more than 64 levels"):
        EventDecoder().decode(body(5000))  # deeper than msgspec itself can go
    check_depth(body(3, text="[[[[{{{{" * 100))
