"""SDK batch publish vs a bare nats-py publish_async loop, same payloads and headers.

Target (README, "Benchmarks"): MemoryClient.publish_many >= 0.85 x the raw loop. Both sides publish
to the same stream with the same window of in-flight messages and a Nats-Msg-Id header;
the SDK side also builds, validates and encodes each event, as an agent's code would.

    python benchmarks/publish.py [--events 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import nats

from benchmarks._common import arguments, broker, exit_code, median, report
from memstream.consumers.streams import ensure_streams
from memstream.producers import MemoryClient
from memstream.schemas import events as ev
from memstream.schemas.events import encode_event
from memstream.schemas.subjects import event_subject

WINDOW = 512


def make_events(client: MemoryClient, n: int, round_: int, side: str) -> list[ev.Event]:
    return [
        client.new_event(
            ev.ConversationTurn,
            id=f"{side}-{round_}-{i}",
            session_id="bench-session",
            role="assistant",
            content=f"turn {i}: " + "the agent explains its plan in a sentence or two. " * 3,
        )
        for i in range(n)
    ]


async def raw_loop(nc: nats.NATS, payloads: list[tuple[str, bytes, str]]) -> float:
    js = nc.jetstream(publish_async_max_pending=WINDOW)
    start = time.perf_counter()
    futures = [
        await js.publish_async(subject, body, headers={"Nats-Msg-Id": msg_id})
        for subject, body, msg_id in payloads
    ]
    await asyncio.gather(*futures)
    return len(payloads) / (time.perf_counter() - start)


async def sdk_batch(client: MemoryClient, events: list[ev.Event]) -> float:
    start = time.perf_counter()
    acks = await client.publish_many(events)
    elapsed = time.perf_counter() - start
    assert len(acks) == len(events) and not any(a.duplicate for a in acks)
    return len(events) / elapsed


async def main(n: int, rounds: int) -> bool:
    with broker() as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await ensure_streams(js)
        client = MemoryClient(nc, tenant="bench", agent="publisher", window=WINDOW)
        raw_rates: list[float] = []
        sdk_rates: list[float] = []
        for r in range(rounds):
            # Raw gets ready-made bytes; the SDK side starts from event objects.
            raw_events = make_events(client, n, r, "raw")
            payloads = [
                (event_subject(e.tenant, e.type), encode_event(e), e.id) for e in raw_events
            ]
            sdk_events = make_events(client, n, r, "sdk")
            await js.purge_stream("MEMORY")
            raw_rates.append(await raw_loop(nc, payloads))
            await js.purge_stream("MEMORY")
            sdk_rates.append(await sdk_batch(client, sdk_events))
            print(
                f"  round {r + 1}: raw {raw_rates[-1]:,.0f}/s  sdk {sdk_rates[-1]:,.0f}/s",
                file=sys.stderr,
            )
        await nc.close()
    print(
        f"publish: {n} events x {rounds} rounds, window {WINDOW}, {len(payloads[0][1])} bytes each"
    )
    return report("publish (median)", median(sdk_rates), median(raw_rates), 0.85)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = arguments(parser, smoke=dict(events=2000, rounds=1))
    sys.exit(exit_code(asyncio.run(main(args.events, args.rounds)), args))
