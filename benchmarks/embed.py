"""The default embedder (all-MiniLM-L6-v2 with onnxruntime) on this machine.

1. *The model alone* (the raw limit): fresh texts embedded a second in ingest batches,
   and one query's embedding, p50 and p99.
2. *Made searchable*: fresh memories a second through the vectors projection
   (``VectorProjection.apply``: the cache, the model, BM25, Qdrant Edge, the checkpoint),
   beside 1. Target: >= 300/s.
3. *Searches while a backlog is embedded*: ``memstream up`` with the default embedder;
   ``--clients`` clients ask ``--search-rate`` searches a second (texts asked before, so
   their embeddings are cached, as in benchmarks.search_load) and one client beside them
   asks 10 a second, each a new text (so it is embedded): first idle, then while the
   vectors projection embeds a backlog of ``--backlog`` fresh memories; then how far
   behind the history and the vectors were when the searching stopped. Target: p99 <=
   25 ms.

Texts are sentences of 10 to 20 words (benchmarks.retrieval's look-alikes).
``--rounds`` rounds; medians are reported.

    python -m benchmarks.embed [--memories 2000] [--backlog 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats

from benchmarks._common import (
    acked,
    arguments,
    broker,
    exit_code,
    memstream_process,
    percentile,
    wait_acked,
)
from benchmarks.retrieval import distractors
from benchmarks.search_load import _clients
from memstream.consumers.log import configure_logging
from memstream.producers import MemoryClient
from memstream.projections.embedding_cache import CachedEmbedder, EmbeddingCache
from memstream.projections.minilm import MiniLMEmbedder
from memstream.projections.point_store import EdgeStores
from memstream.projections.vectors import VectorProjection
from memstream.schemas import events as ev


def _texts(n: int, salt: str) -> list[str]:
    """``n`` distinct sentences; ``salt`` makes them new to every cache."""
    return [f"{text} ({salt}{i})" for i, text in enumerate(distractors(n))]


def raw_model(
    model: MiniLMEmbedder, texts: list[str], queries: list[str]
) -> tuple[float, list[float]]:
    """Texts a second in ingest batches; each query's embedding in ms."""
    start = time.perf_counter()
    model.embed(texts)
    rate = len(texts) / (time.perf_counter() - start)
    timings = []
    for query in queries:
        began = time.perf_counter()
        model.embed([query], within=5.0)
        timings.append((time.perf_counter() - began) * 1000)
    return rate, timings


def searchable(model: MiniLMEmbedder, texts: list[str], tmp: Path) -> float:
    """Fresh memories a second through the vectors projection, 500 events a batch."""
    ts = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    events = [
        (seq, ev.KnowledgeStored(id=f"e{seq}", tenant="t0", agent="bench", ts=ts,
                                 memory_id=f"m{seq}", domain="bench", content=text))
        for seq, text in enumerate(texts, start=1)
    ]  # fmt: skip
    cached = CachedEmbedder(model, EmbeddingCache(tmp / "cache.db"))
    projection = VectorProjection(EdgeStores(tmp / "vectors"), cached)
    try:
        start = time.perf_counter()
        for at in range(0, len(events), 500):
            projection.apply(events[at : at + 500])
        return len(events) / (time.perf_counter() - start)
    finally:
        projection.stores.close()
        cached.cache.close()


async def _publish(url: str, tenants: int, texts: list[str]) -> int:
    nc = await nats.connect(url)
    try:
        last = 0
        for t in range(tenants):
            mem = MemoryClient(nc, tenant=f"t{t}", agent="bench")
            events = [mem.new_event(ev.KnowledgeStored, memory_id=f"m{t}-{i}", domain="bench",
                                    content=text)
                      for i, text in enumerate(texts[t::tenants])]  # fmt: skip
            last = (await mem.publish_many(events))[-1].seq
        return last
    finally:
        await nc.close()


async def _warm(url: str, args: argparse.Namespace, texts: list[str]) -> None:
    """Each text asked once by the tenant that will ask it (client c asks every
    ``clients``-th text for tenant c % tenants): its embedding is then cached."""
    nc = await nats.connect(url)
    try:
        for j, text in enumerate(texts):
            tenant = f"t{(j % args.clients) % args.tenants}"
            await MemoryClient(nc, tenant=tenant, agent="bench").search(text)
    finally:
        await nc.close()


async def _phase(
    url: str, args: argparse.Namespace, asked: list[str], fresh: list[str]
) -> tuple[list[float], list[float]]:
    """``--clients`` clients asking ``--search-rate`` a second from ``asked`` (embedded
    before), and beside them one client asking 10 a second, each a text never asked."""
    (warm, _), (new, _) = await asyncio.gather(
        _clients(url, args.tenants, asked, args.clients, args.seconds, args.search_rate),
        _clients(url, args.tenants, fresh, 1, args.seconds, 10),
    )
    return warm, new


async def under_backlog(url: str, args: argparse.Namespace, r: int) -> dict[str, float]:
    """Search idle, then while a backlog is embedded; how far behind each projection was."""
    seed = await _publish(url, args.tenants, _texts(20 * args.tenants, f"seed{r}-"))
    nc = await nats.connect(url)
    try:
        await wait_acked(nc, "vectors", seed, "seeding")
        asked = _texts(25 * args.clients, f"q{r}-")
        await _warm(url, args, asked)
        fresh = _texts(round(40 * args.seconds), f"new{r}-")
        idle, idle_new = await _phase(url, args, asked, fresh[::2])
        began = time.perf_counter()
        last = await _publish(url, args.tenants, _texts(args.backlog, f"b{r}-"))
        loaded, loaded_new = await _phase(url, args, asked, fresh[1::2])
        lag = {p: last - await acked(nc, p) for p in ("history", "vectors")}
        await wait_acked(nc, "vectors", last, "embedding the backlog")
        vectors_s = time.perf_counter() - began
    finally:
        await nc.close()
    return {
        "idle_p50": statistics.median(idle), "idle_p99": percentile(idle, 0.99),
        "load_p50": statistics.median(loaded), "load_p99": percentile(loaded, 0.99),
        "new_idle_p50": statistics.median(idle_new),
        "new_load_p50": statistics.median(loaded_new),
        "new_load_p99": percentile(loaded_new, 0.99),
        "vectors_lag": float(lag["vectors"]), "history_lag": float(lag["history"]),
        "vectors_rate": args.backlog / vectors_s,
    }  # fmt: skip


def main(args: argparse.Namespace) -> bool:
    configure_logging("console", "warning")
    model = MiniLMEmbedder()
    raws, p50s, p99s, rates, loads = [], [], [], [], []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp:
            rate, timings = raw_model(model, _texts(args.memories, f"raw{r}-"),
                                      _texts(min(200, args.memories), f"query{r}-"))  # fmt: skip
            made = searchable(model, _texts(args.memories, f"made{r}-"), Path(tmp))
        raws.append(rate)
        p50s.append(statistics.median(timings))
        p99s.append(percentile(timings, 0.99))
        rates.append(made)
        print(f"  round {r + 1}: model {rate:,.0f} texts/s, query p50 {p50s[-1]:.1f} ms "
              f"p99 {p99s[-1]:.1f} ms; searchable {made:,.0f}/s", file=sys.stderr)  # fmt: skip
    env = {"MEMSTREAM_EMBEDDER": "minilm"}
    with (
        broker() as server,
        tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp,
        memstream_process("up", "--nats-url", server.url, "--data-dir", tmp, env=env),
    ):
        for r in range(args.rounds):
            one = asyncio.run(under_backlog(server.url, args, r))
            loads.append(one)
            print(f"  round {r + 1}: search idle p50 {one['idle_p50']:.1f} ms p99 "
                      f"{one['idle_p99']:.1f} ms; while embedding a backlog p50 "
                      f"{one['load_p50']:.1f} ms p99 {one['load_p99']:.1f} ms; vectors "
                      f"{one['vectors_rate']:,.0f}/s; behind after {args.seconds:.0f} s: vectors "
                      f"{one['vectors_lag']:,.0f}, history {one['history_lag']:,.0f}",
                      file=sys.stderr)  # fmt: skip

    def med(values: list[float]) -> float:
        return statistics.median(values)

    made, p50 = med(rates), med(p50s)
    load = {k: med([one[k] for one in loads]) for k in loads[0]}
    ok = made >= 300 and p50 <= 5 and load["load_p99"] <= 25
    print(f"embed: {model.model} (float32, onnxruntime, {os.cpu_count()} cores), "
          f"{args.rounds} rounds (medians)")  # fmt: skip
    print(f"embed: the model alone {med(raws):,.0f} texts/s; a query's embedding p50 "
          f"{p50:.1f} ms, p99 {med(p99s):.1f} ms (target p50 <= 5 ms)")  # fmt: skip
    print(f"embed: fresh memories made searchable {made:,.0f}/s = {made / med(raws):.2f} x "
          f"the model alone (target >= 300/s)")  # fmt: skip
    print(f"embed: search ({args.clients} clients, {args.search_rate:,.0f}/s, texts asked before) "
          f"idle p50 {load['idle_p50']:.1f} ms p99 {load['idle_p99']:.1f} ms; while the "
          f"vectors embed a backlog of {args.backlog:,} p50 {load['load_p50']:.1f} ms p99 "
          f"{load['load_p99']:.1f} ms (target p99 <= 25 ms)")  # fmt: skip
    print(f"embed: a new text's search (one client, 10/s, beside them) p50 idle "
          f"{load['new_idle_p50']:.1f} ms; while the backlog is embedded p50 "
          f"{load['new_load_p50']:.1f} ms, p99 {load['new_load_p99']:.1f} ms")  # fmt: skip
    print(f"embed: the vectors embedded the backlog at {load['vectors_rate']:,.0f}/s; when "
          f"the searching stopped they were {load['vectors_lag']:,.0f} events behind, the "
          f"history {load['history_lag']:,.0f}")  # fmt: skip
    print(f"embed: {'OK' if ok else 'BELOW TARGET'}")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=2000)
    parser.add_argument("--backlog", type=int, default=3000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--search-rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = arguments(parser, smoke=dict(memories=40, backlog=40, tenants=2, clients=4,
                                        search_rate=20, seconds=1.0, rounds=1))  # fmt: skip
    sys.exit(exit_code(main(args), args))
