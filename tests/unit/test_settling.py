"""JetStream settling: what a worker waits out (a cluster forming), and what it does not."""

from __future__ import annotations

import nats.js.errors
import pytest

from memstream.consumers.streams import until_jetstream_answers


def _no_peers_yet() -> nats.js.errors.BadRequestError:
    return nats.js.errors.BadRequestError(
        code=400, err_code=10005, description="no suitable peers for placement"
    )


async def test_a_cluster_that_does_not_know_its_peers_yet_is_waited_for() -> None:
    """Seen right after a 3-node cluster started: a stream of 3 replicas cannot be placed
    for a moment. It is asked again, and placed."""
    failures = [_no_peers_yet(), _no_peers_yet()]

    async def place() -> str:
        if failures:
            raise failures.pop()
        return "placed"

    assert "placed" == await until_jetstream_answers(place, "a stream", within=10)
    assert [] == failures


async def test_a_bad_request_of_another_kind_is_not_waited_for() -> None:
    """A request JetStream refuses for what it says is raised at once."""
    calls = []

    async def refused() -> None:
        calls.append(1)
        raise nats.js.errors.BadRequestError(code=400, err_code=10052, description="bad")

    with pytest.raises(nats.js.errors.BadRequestError):
        await until_jetstream_answers(refused, "a stream", within=10)
    assert [1] == calls
