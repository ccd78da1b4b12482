"""The framework adapters against a real memstream (memstream.testing, one per module),
each test on a tenant of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from memstream import SyncMemoryClient
from memstream.testing import RunningMemstream, memstream_server

__all__ = ["memstream_server"]  # memstream.testing's fixture, one memstream per module


@pytest.fixture
def tenant() -> str:
    """A tenant no other test writes."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def mem(memstream_server: RunningMemstream, tenant: str) -> Iterator[SyncMemoryClient]:
    """A blocking client of the module's memstream, on the test's own tenant."""
    with memstream_server.sync_client(tenant=tenant, agent="graph") as client:
        yield client
