"""Resident memory of ``memstream up``: idle, and after ingesting ``--events`` events.

``memstream up`` runs in its own process (hash embedder, Qdrant Edge) against a fresh
broker, with its children: the vector engine's process and the searcher. Each one's
memory is read from /proc when memstream is ready and idle, and again once both
projections have applied ``--events`` events of the benchmark mix (one in eight a memory;
with the conversation turns and tasks, about three in eight become points of the engine,
whose files are mapped into the engine's process). Memory is counted once: the figure is
the sum of the processes' PSS (each page shared between them, such as a library's, is
split among them), beside each process's RSS. Raw limit: the RSS of a bare Python
process that imported memstream's dependencies, measured the same way. Targets
(README, "Benchmarks"): idle <= 300 MB, after 1,000,000 events <= 1.5 GB.

    python -m benchmarks.memory [--events 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

from benchmarks._common import arguments, broker, exit_code, wait_acked
from benchmarks._workload import fill
from memstream.consumers.log import configure_logging
from memstream.consumers.streams import ensure_streams
from memstream.producers import MemoryClient


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """``field``: VmRSS (all resident pages), RssAnon (the heap: what the process holds
    alone) or RssFile (pages of mapped files, which the kernel may drop and read again)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def pss_mb(pid: int) -> float:
    """The process's proportional share of its resident pages (a page shared by n
    processes counts 1/n in each)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss for pid {pid}")


_CHILDREN = {b"memstream.consumers.engine": "engine", b"memstream.consumers.searcher": "searcher"}


def processes(pid: int) -> dict[str, int]:
    """memstream's process and the children it runs beside it, by name."""
    found = {"memstream": pid}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            args = (entry / "cmdline").read_bytes().split(b"\x00")
        except (OSError, IndexError, ValueError):
            continue
        for module, name in _CHILDREN.items():
            if ppid == pid and module in args:
                found[name] = int(entry.name)
    return found


def measure(pid: int) -> tuple[float, dict[str, float]]:
    """The memory of memstream and its children counted once (the sum of their PSS),
    and each one's RSS."""
    family = processes(pid)
    return sum(pss_mb(p) for p in family.values()), {n: rss_mb(p) for n, p in family.items()}


def bare_python_mb() -> float:
    code = (
        "import duckdb, qdrant_client, qdrant_edge, nats, msgspec, pyarrow, numpy, structlog, time;"
        "print('ready', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        process.stdout.readline()
        return rss_mb(process.pid)
    finally:
        process.kill()
        process.wait()


async def _fill_and_wait(url: str, n: int) -> None:
    nc = await nats.connect(url)
    try:
        await ensure_streams(nc.jetstream())
        await fill(MemoryClient(nc, tenant="bench", agent="agent"), n)
        last = (await nc.jetstream().stream_info("MEMORY")).state.last_seq
        took = max(
            await wait_acked(nc, "history", last, "history"),
            await wait_acked(nc, "vectors", last, "vectors"),
        )
        print(f"  both projections applied {last:,} events ({took:.0f} s)", file=sys.stderr)
    finally:
        await nc.close()


def main(events: int) -> bool:
    configure_logging("console", "warning")
    raw = bare_python_mb()
    with broker() as server, tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp:
        process = subprocess.Popen(
            [sys.executable, "-m", "memstream", "up", "--nats-url", server.url,
             "--data-dir", tmp, "--json"],
            stdout=subprocess.PIPE, text=True,
            env={**os.environ, "MEMSTREAM_EMBEDDER": "hash", "MEMSTREAM_LOG_LEVEL": "warning"},
        )  # fmt: skip
        try:
            assert process.stdout is not None
            process.stdout.readline()
            time.sleep(2)
            idle, idle_each = measure(process.pid)
            asyncio.run(_fill_and_wait(server.url, events))
            loaded, loaded_each = measure(process.pid)
            engine = processes(process.pid).get("engine", process.pid)
            anon, mapped = rss_mb(engine, "RssAnon"), rss_mb(engine, "RssFile")
        finally:
            process.terminate()
            process.wait(120)
    ok = idle <= 300 and loaded <= 1536
    print(f"memory: memstream up, hash embedder, Qdrant Edge; a bare Python with the "
          f"same libraries imported: {raw:.0f} MB")  # fmt: skip
    print(
        f"memory: idle {idle:.0f} MB (target <= 300 MB); after {events:,} events "
        f"{loaded:.0f} MB (target <= 1,536 MB) {'OK' if ok else 'BELOW TARGET'}"
    )

    def each(found: dict[str, float]) -> str:
        return ", ".join(f"{name} {mb:.0f}" for name, mb in found.items())

    print(f"memory: counted once (the sum of the processes' PSS); each process's RSS, idle: "
          f"{each(idle_each)} MB; after {events:,} events: {each(loaded_each)} MB")  # fmt: skip
    print(f"memory: after {events:,} events, the engine's process holds {anon:.0f} MB of "
          f"its own (RssAnon) and {mapped:.0f} MB pages of the shards' mapped files "
          "(RssFile)")  # fmt: skip
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = arguments(parser, smoke=dict(events=5000))
    sys.exit(exit_code(main(args.events), args))
