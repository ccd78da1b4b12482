"""SyncMemoryClient is MemoryClient's blocking twin: same methods, same parameters."""

from __future__ import annotations

import inspect

import pytest

from memstream.producers import MemoryClient, SyncMemoryClient

# Not a twin's business: the async context protocol and the connection itself.
_ASYNC_ONLY = {"connect", "close"}
# Not coroutines on either side: they build a value (an event, a lock, a feed).
_PLAIN = {"new_event", "encode", "lock", "watch"}


def _public_methods(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and callable(member)
    }


def _parameters(fn: object) -> list[tuple[str, object, object, object]]:
    params = list(inspect.signature(fn).parameters.values())[1:]  # drop self / cls
    return [(p.name, p.kind, p.default, p.annotation) for p in params]


ASYNC = _public_methods(MemoryClient)
TWINS = sorted(set(ASYNC) - _ASYNC_ONLY)


def test_every_public_method_has_a_blocking_twin() -> None:
    """No public MemoryClient method is missing from SyncMemoryClient."""
    assert [] == [name for name in TWINS if not hasattr(SyncMemoryClient, name)]


@pytest.mark.parametrize("name", TWINS)
def test_twin_takes_the_same_parameters(name: str) -> None:
    """Names, kinds, defaults and annotations of the parameters are the async method's."""
    assert _parameters(ASYNC[name]) == _parameters(getattr(SyncMemoryClient, name))


@pytest.mark.parametrize("name", TWINS)
def test_twin_blocks(name: str) -> None:
    """The twin is a plain function, not a coroutine function."""
    assert inspect.iscoroutinefunction(ASYNC[name]) == (name not in _PLAIN)
    assert not inspect.iscoroutinefunction(getattr(SyncMemoryClient, name))


def test_connect_takes_what_the_async_connect_takes() -> None:
    """SyncMemoryClient.connect hands its arguments on to MemoryClient.connect."""
    assert ["url", "options"] == [
        p.name for p in inspect.signature(SyncMemoryClient.connect).parameters.values()
    ]
