"""Helpers shared by the benchmarks: a throwaway broker, a results line and the results
file each full run leaves in ``benchmarks/results/`` (what the docs' charts draw)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats

from benchmarks._workload import fill
from memstream.consumers._runtime import tune_for_throughput
from memstream.consumers.log import configure_logging
from memstream.consumers.nats_server import NatsServer
from memstream.consumers.streams import ensure_streams
from memstream.producers import MemoryClient

RESULTS = Path(__file__).parent / "results"
# Set by arguments(): a smoke run's tiny sizes measure nothing worth keeping.
_keep = {"results": True}


def record(
    benchmark: str,
    figure: str,
    value: float,
    raw: float | None,
    unit: str,
    ratio: float | None = None,
) -> None:
    """Keep a figure, and the raw limit measured beside it in the same run, in
    ``benchmarks/results/<benchmark>.json`` (one entry per figure, the last run's);
    ``ratio`` when the benchmark judges another ratio than value / raw (the median of
    per-round ratios)."""
    if not _keep["results"]:
        return
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{benchmark}.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    kept[figure] = {
        "value": round(value, 3),
        "raw": None if raw is None else round(raw, 3),
        "ratio": None if ratio is None else round(ratio, 3),
        "unit": unit,
        "measured": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
    }
    path.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")


@contextmanager
def broker() -> Iterator[NatsServer]:
    """A fresh embedded nats-server in a temporary directory, stopped by pid afterwards."""
    with (
        tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp,
        NatsServer(tmp, port=0, max_payload=2 * 1024 * 1024) as server,
    ):
        yield server


def report(
    name: str,
    figure: float,
    raw: float,
    target: float,
    unit: str = "events/s",
    ratio: float | None = None,
) -> bool:
    """Print the figure beside the raw limit measured in the same run; True if on target.

    ``ratio``: when given (the median of per-round ratios), it is what is judged.
    """
    if ratio is None:
        ratio = figure / raw if raw else 0.0
        how = "x raw"
    else:
        how = "x raw (median of per-round ratios)"
    ok = ratio >= target
    record(name.split()[0], "throughput", figure, raw, unit, ratio)
    print(
        f"{name}: {figure:,.0f} {unit} vs raw {raw:,.0f} {unit}; {ratio:.2f}{how} "
        f"(target >= {target:.2f}x) {'OK' if ok else 'BELOW TARGET'}"
    )
    return ok


def median(values: list[float]) -> float:
    return statistics.median(values)


RoundFn = Callable[[nats.NATS, Path], Awaitable[float]]


async def compare_on_filled_stream(
    name: str, n: int, rounds: int, target: float, raw: RoundFn, ours: RoundFn
) -> bool:
    """Fill a fresh stream with ``n`` events, run both loops ``rounds`` times, compare.

    Both run in this process with the same runtime settings, back to back in each round,
    so a round's ratio is measured under one set of machine conditions; on a shared
    machine whose speed drifts between rounds, the median of those ratios is the steadier
    figure. Each round gets a fresh scratch path for whatever ``ours`` writes.
    """
    configure_logging("console", "warning")
    tune_for_throughput()
    raws: list[float] = []
    mine: list[float] = []
    with broker() as server, tempfile.TemporaryDirectory() as tmp:
        nc = await nats.connect(server.url)
        await ensure_streams(nc.jetstream())
        await fill(MemoryClient(nc, tenant="bench", agent="agent"), n)
        for r in range(rounds):
            raws.append(await raw(nc, Path(tmp) / f"raw-{r}"))
            mine.append(await ours(nc, Path(tmp) / f"ours-{r}"))
            print(
                f"  round {r + 1}: raw {raws[-1]:,.0f}/s  {name} {mine[-1]:,.0f}/s", file=sys.stderr
            )
        await nc.close()
    print(f"{name}: {n} events, {rounds} rounds (medians)")
    ratios = [m / r for m, r in zip(mine, raws, strict=True)]
    return report(name, median(mine), median(raws), target, ratio=median(ratios))


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # after the name, which may hold spaces


def cpu_seconds(pid: int, *, descendants: bool = True) -> float:
    """CPU time used so far by a process and (unless told) its live descendants (Linux
    ``/proc``)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    family, grew = {pid}, descendants
    while grew:
        more = {child for child, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    ticks = 0
    for member in family:
        if (fields := _stat(member)) is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_searches(store: Any, searches: list[Any], rounds: int) -> list[list[float]]:
    """Each search on ``store`` once to warm up, then ``rounds`` times: the ms of each,
    one list a round."""
    for search in searches:
        store.search(search)
    timings: list[list[float]] = []
    for _ in range(rounds):
        timings.append([])
        for search in searches:
            start = time.perf_counter()
            store.search(search)
            timings[-1].append((time.perf_counter() - start) * 1000)
    return timings


def median_round(rounds: list[list[float]]) -> tuple[float, float]:
    """p50 and p99 of the median round (by p99): a shared machine has slow moments."""
    figures = sorted((percentile(r, 0.99), statistics.median(r)) for r in rounds)
    p99, p50 = figures[len(figures) // 2]
    return p50, p99


@contextmanager
def memstream_process(*args: str, env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """``memstream ARGS --json`` in a process of its own (as it runs in production), until
    its ready line; stopped with SIGTERM by its pid afterwards."""
    full_env = {"MEMSTREAM_LOG_LEVEL": "warning", **os.environ, **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "memstream", *args, "--json"],
        stdout=subprocess.PIPE,
        text=True,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"memstream {args[0]} exited with {process.wait()}")
        yield {**json.loads(line), "pid": process.pid}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def acked(nc: nats.NATS, projection: str) -> int:
    """The stream sequence every consumer of the projection (``<projection>-<instance>``,
    one for each instance running) has acked."""
    floors = [
        info.ack_floor.stream_seq if info.ack_floor else 0
        for info in await nc.jetstream().consumers_info("MEMORY")
        if info.name.startswith(f"{projection}-")
    ]
    return min(floors) if floors else 0


async def wait_acked(nc: nats.NATS, projection: str, seq: int, what: str) -> float:
    """Wait until the projection's consumers have all acked stream sequence ``seq``;
    returns the seconds."""
    start = told = time.perf_counter()
    while True:
        done = await acked(nc, projection)
        if done >= seq:
            return time.perf_counter() - start
        # Asked every 50 ms, so that a rate over seconds is not rounded to the second;
        # the progress is shown once a second.
        if time.perf_counter() - told >= 1:
            told = time.perf_counter()
            print(f"  {what}: {done:,}/{seq:,}", file=sys.stderr, end="\r")
        await asyncio.sleep(0.05)


def arguments(parser: argparse.ArgumentParser, smoke: dict[str, Any]) -> argparse.Namespace:
    """The command line, with ``--smoke``: the sizes in ``smoke`` (where not given on the
    command line) and one round, so a benchmark proves in seconds that it still runs.
    A smoke run measures nothing worth reporting."""
    parser.add_argument(
        "--smoke", action="store_true",
        help="tiny sizes and one round, to check that the benchmark runs (no figures)",
    )  # fmt: skip
    args = parser.parse_args()
    _keep["results"] = not args.smoke
    if args.smoke:
        for name, value in smoke.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    return args


def exit_code(on_target: bool, args: argparse.Namespace) -> int:
    """0 when the figures are on target; a smoke run's tiny sizes judge nothing."""
    return 0 if on_target or args.smoke else 1
