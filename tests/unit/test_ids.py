"""Identifier rules and the UUIDv7 generator."""

from __future__ import annotations

import uuid

import pytest

from memstream.schemas.errors import InvalidId, InvalidTenant
from memstream.schemas.ids import new_id, validate_agent, validate_ref_id, validate_tenant


@pytest.mark.parametrize("tenant", ["acme", "a", "0", "team_7-x", "a" * 63])
def test_valid_tenants(tenant: str) -> None:
    """Lowercase letters, digits, '_' and '-', at most 63, pass unchanged."""
    assert tenant == validate_tenant(tenant)


@pytest.mark.parametrize(
    "tenant",
    [
        "",
        "Acme",
        "acme corp",
        "-acme",
        "_a",
        "a" * 64,
        "acme.x",
        "acme*",
        "acme>",
        "acme\n",
        7,
        None,
    ],
)
def test_invalid_tenants(tenant: object) -> None:
    """Anything else raises InvalidTenant with a message saying the rule."""
    with pytest.raises(InvalidTenant) as info:
        validate_tenant(tenant)
    assert "use lowercase letters, digits, '_' and '-'" in str(info.value)


def test_invalid_tenant_message_is_exact() -> None:
    """The message quotes the value and says how to fix it."""
    with pytest.raises(InvalidTenant) as info:
        validate_tenant("Acme Corp")
    expected = (
        "tenant 'Acme Corp' is not a valid tenant id: use lowercase letters, digits, '_' "
        "and '-', starting with a letter or digit (at most 63)"
    )
    assert expected == str(info.value)


@pytest.mark.parametrize("agent", ["", "x" * 129, "tab\tbed", "new\nline", 3])
def test_invalid_agents(agent: object) -> None:
    """Agents are 1-128 printable characters."""
    with pytest.raises(InvalidId, match="agent .* must be a string of 1 to 128 printable"):
        validate_agent(agent)


def test_valid_ids() -> None:
    """Unicode and spaces are printable; 128 characters is the limit."""
    assert "planner ü 1" == validate_agent("planner ü 1")
    assert "k" * 128 == validate_ref_id("memory_id", "k" * 128)
    with pytest.raises(InvalidId, match="memory_id"):
        validate_ref_id("memory_id", "k" * 129)


def test_new_id_is_uuid7_and_time_ordered() -> None:
    """new_id gives RFC 9562 version-7 UUIDs whose timestamp prefix does not go back."""
    ids = [new_id() for _ in range(2000)]
    parsed = [uuid.UUID(i) for i in ids]
    assert all(7 == u.version and uuid.RFC_4122 == u.variant for u in parsed)
    assert len(set(ids)) == len(ids)
    stamps = [u.int >> 80 for u in parsed]
    assert stamps == sorted(stamps)
