"""What a FastStream request-reply subscriber costs per request, beside nats-py.

The query worker could answer ``memq.<tenant>.<op>`` through a FastStream subscriber
(its handler's return value is the reply) or through a nats-py subscription that calls
``msg.respond``. Both responders here do the same work as the worker's envelope: decode
the request with msgspec, encode a small reply. A nats-py client (another process's
view: its own connection) sends ``--requests`` requests one after another, then the same
number 32 at a time, to each responder in turn.

    python -m benchmarks.faststream_reply [--requests 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats
from faststream.nats import NatsBroker, NatsMessage

from benchmarks._common import arguments, broker, percentile
from memstream.consumers._runtime import tune_for_throughput

REQUEST = b'{"query": "how do I retry 503s?", "top_k": 5}'
_decode = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


def answer(body: bytes) -> bytes:
    request = _decode(body)
    return _encode({"ok": True, "result": {"hits": [], "top_k": request["top_k"]}})


async def with_nats_py(url: str) -> Callable[[], Awaitable[None]]:
    nc = await nats.connect(url)

    async def respond(msg: Any) -> None:
        await msg.respond(answer(msg.data))

    await nc.subscribe("bench.q", queue="q", cb=respond)
    await nc.flush()
    return nc.close


async def with_faststream(url: str) -> Callable[[], Awaitable[None]]:
    fs = NatsBroker(url, logger=None)

    @fs.subscriber("bench.q", queue="q")
    async def respond(message: NatsMessage) -> bytes:
        return answer(message.body)

    await fs.start()
    return fs.stop


async def measure(url: str, n: int) -> tuple[list[float], float]:
    nc = await nats.connect(url)
    try:
        for _ in range(200):
            await nc.request("bench.q", REQUEST, timeout=5)
        timings = []
        for _ in range(n):
            start = time.perf_counter()
            await nc.request("bench.q", REQUEST, timeout=5)
            timings.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        sem = asyncio.Semaphore(32)

        async def one() -> None:
            async with sem:
                await nc.request("bench.q", REQUEST, timeout=5)

        await asyncio.gather(*(one() for _ in range(n)))
        return timings, n / (time.perf_counter() - start)
    finally:
        await nc.close()


async def main(n: int) -> None:
    tune_for_throughput()
    with broker() as server:
        results = {}
        for name, start in (("nats-py", with_nats_py), ("FastStream", with_faststream)):
            stop = await start(server.url)
            results[name] = await measure(server.url, n)
            await stop()
    for name, (timings, rate) in results.items():
        print(
            f"reply via {name:<10}: p50 {statistics.median(timings):.3f} ms, "
            f"p99 {percentile(timings, 0.99):.3f} ms one at a time; "
            f"{rate:,.0f} requests/s 32 at a time"
        )
    ours, theirs = results["nats-py"], results["FastStream"]
    extra = statistics.median(theirs[0]) - statistics.median(ours[0])
    print(
        f"faststream-reply: FastStream adds {extra * 1000:.0f} us a request at p50 and serves "
        f"{theirs[1] / ours[1]:.2f}x the requests/s of nats-py"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    args = arguments(parser, smoke=dict(requests=200))
    asyncio.run(main(args.requests))
