"""Helpers shared by the benchmarks: a throwaway broker and a results line."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from consumers.nats_server import NatsServer


@contextmanager
def broker() -> Iterator[NatsServer]:
    """A fresh embedded nats-server in a temporary directory, stopped by pid afterwards."""
    with (
        tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp,
        NatsServer(tmp, port=0, max_payload=2 * 1024 * 1024) as server,
    ):
        yield server


def report(name: str, figure: float, raw: float, target: float, unit: str = "events/s") -> bool:
    """Print the figure beside the raw limit measured in the same run; True if on target."""
    ratio = figure / raw if raw else 0.0
    ok = ratio >= target
    print(
        f"{name}: {figure:,.0f} {unit} vs raw {raw:,.0f} {unit} = {ratio:.2f}x raw "
        f"(target >= {target:.2f}x) {'OK' if ok else 'BELOW TARGET'}"
    )
    return ok


def median(values: list[float]) -> float:
    return statistics.median(values)
