"""Rate limits of queries, per tenant and per user: token buckets in each query worker,
kept as one across the workers.

A tenant's limits live in the KV bucket ``MEMTENANT`` (``memstream tenant limits``); the
server's settings give the defaults. Each worker process reads them at start and follows
every change (a subscription to the bucket's subjects), so a change holds at once,
without a restart.

Which worker answers a query depends on its op (searches in the searcher, the rest in
the main process) and on the queue group, so a tenant's queries are spread over
processes. Each process takes from its own buckets, and every ``SHARE_EVERY_S`` tells the
others what it took (``memsys.limits``, a subject no tenant may publish on), which they
take from theirs: the buckets agree within that time. A shared bucket in NATS KV would
agree exactly, but costs two round trips to the broker on every query (a read and a
compare-and-set, more under contention), where this costs none.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import defaultdict
from typing import Final

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import KeyValueConfig, StorageType

from memstream.consumers.log import get_logger
from memstream.producers.connection import subscriptions_held
from memstream.schemas.ids import new_id
from memstream.schemas.tenancy import LIMITS_BUCKET, TenantLimits

__all__ = ["SHARE_EVERY_S", "SHARE_SUBJECT", "Bucket", "QueryLimits", "set_limits"]

log = get_logger("memstream.limits")

SHARE_SUBJECT: Final = "memsys.limits"
SHARE_EVERY_S: Final = 0.1
_HOUR_S: Final = 3600.0
# Buckets of tenants and users not heard from for this long are forgotten (full again).
_IDLE_S: Final = 3 * _HOUR_S


class _Shared(msgspec.Struct, frozen=True):
    sender: str
    taken: dict[str, int]


_share_encoder = msgspec.json.Encoder()
_share_decoder = msgspec.json.Decoder(_Shared)
_limits_decoder = msgspec.json.Decoder(TenantLimits)


class Bucket:
    """A token bucket: ``capacity`` tokens, refilled at ``rate`` a second."""

    __slots__ = ("at", "capacity", "rate", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.at = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def wait_ms(self, now: float) -> int:
        """0 when a token is there; else how long until one is."""
        self._refill(now)
        if self.tokens >= 1:
            return 0
        return max(1, math.ceil((1 - self.tokens) / self.rate * 1000))

    def take(self, n: float, now: float) -> None:
        """Take ``n`` tokens; what others took may leave it below zero, down to one
        bucket's worth owed."""
        self._refill(now)
        self.tokens = max(-self.capacity, self.tokens - n)


class QueryLimits:
    """The query worker's side: :meth:`admit` each query; see the module docstring."""

    def __init__(self, defaults: TenantLimits | None = None) -> None:
        self.defaults = defaults or TenantLimits()
        # The tenants with limits of their own: those over the defaults, as they apply.
        self._limits: dict[str, TenantLimits] = {}
        self._buckets: dict[str, Bucket] = {}
        self._taken: dict[str, int] = defaultdict(int)
        self._id = new_id()
        self._nc: NatsClient | None = None
        self._subs: list[Subscription] = []
        self._sharing: asyncio.Task[None] | None = None
        self._swept = time.monotonic()

    # --- what the limits are ------------------------------------------------------

    def of(self, tenant: str) -> TenantLimits:
        """The tenant's limits, its own over the defaults."""
        return self._limits.get(tenant, self.defaults)

    def set(self, tenant: str, limits: TenantLimits | None) -> None:
        """Take the tenant's limits as given (None: the defaults); its buckets start
        full under them."""
        if limits is None:
            self._limits.pop(tenant, None)
        else:
            self._limits[tenant] = limits.over(self.defaults)
        for key in [k for k in self._buckets if k.split(":")[1] == tenant]:
            del self._buckets[key]

    # --- deciding -----------------------------------------------------------------

    def _bucket(self, key: str, rate: float, capacity: float, now: float) -> Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(rate, capacity, now)
        return bucket

    def _applying(self, tenant: str, user: str, now: float) -> list[tuple[str, Bucket]]:
        """The buckets a query of ``user`` of ``tenant`` takes from, by key: ``t:<tenant>``
        (a second's), ``u:<tenant>:<user>`` (the user's), ``h:<tenant>`` (the hour's)."""
        limits = self.of(tenant)
        wanted = []
        if limits.queries_per_second:
            rate = limits.queries_per_second
            wanted.append((f"t:{tenant}", rate, limits.burst or max(1.0, rate)))
        if limits.user_queries_per_second:
            rate = limits.user_queries_per_second
            wanted.append((f"u:{tenant}:{user}", rate, limits.burst or max(1.0, rate)))
        if limits.queries_per_hour:
            n = limits.queries_per_hour
            wanted.append((f"h:{tenant}", n / _HOUR_S, float(n)))
        return [(key, self._bucket(key, rate, cap, now)) for key, rate, cap in wanted]

    def admit(self, tenant: str, user: str) -> int:
        """Take one query of ``user`` of ``tenant``: 0 when admitted, else how many
        milliseconds until it would be (nothing is taken then)."""
        now = time.monotonic()
        buckets = self._applying(tenant, user, now)
        if not buckets:
            return 0
        wait = max(bucket.wait_ms(now) for _, bucket in buckets)
        if wait:
            return wait
        for key, bucket in buckets:
            bucket.take(1, now)
            self._taken[key] += 1
        return 0

    def peek(self, tenant: str, user: str) -> int:
        """What :meth:`admit` would answer now, taking nothing."""
        now = time.monotonic()
        return max((b.wait_ms(now) for _, b in self._applying(tenant, user, now)), default=0)

    def refusal(self, tenant: str, user: str, wait_ms: int) -> str:
        """What to tell a query :meth:`admit` kept waiting ``wait_ms``: which limit, and
        when to ask again."""
        now = time.monotonic()
        limits = self.of(tenant)
        key = max(self._applying(tenant, user, now), key=lambda kb: kb[1].wait_ms(now))[0]
        if key.startswith("h:"):
            which = f"tenant {tenant} is over its {_queries(limits.queries_per_hour)} an hour"
        elif key.startswith("u:"):
            rate = _queries(limits.user_queries_per_second)
            which = f"user {user or '(none)'} of tenant {tenant} is over its {rate} a second"
        else:
            which = f"tenant {tenant} is over its {_queries(limits.queries_per_second)} a second"
        return f"{which}: ask again in {_duration(wait_ms)}"

    def taken_elsewhere(self, taken: dict[str, int]) -> None:
        """What another worker admitted: take it from the same buckets here."""
        now = time.monotonic()
        for key, n in taken.items():
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.take(n, now)
            else:
                # Not asked here yet: start it full, less what was taken there.
                _, tenant, *user = key.split(":", 2)
                for k, b in self._applying(tenant, user[0] if user else "", now):
                    if k == key:
                        b.take(n, now)

    # --- the running worker -------------------------------------------------------

    async def start(self, nc: NatsClient) -> None:
        """Follow the tenants' limits in ``MEMTENANT`` and share what this worker takes."""
        self._nc = nc
        self._subs.append(await nc.subscribe(f"$KV.{LIMITS_BUCKET}.>", cb=self._on_limits))
        self._subs.append(await nc.subscribe(SHARE_SUBJECT, cb=self._on_shared))
        await subscriptions_held(nc)
        await self._load(nc)
        self._sharing = asyncio.create_task(self._share_loop())

    async def stop(self) -> None:
        if self._sharing is not None:
            self._sharing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sharing
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()
        self._subs = []

    async def _load(self, nc: NatsClient) -> None:
        try:
            kv = await nc.jetstream().key_value(LIMITS_BUCKET)
            keys = await kv.keys()
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.NoKeysError):
            return  # no tenant has limits of its own
        except nats.errors.Error as err:
            log.warning("tenant_limits_unreadable", error=str(err))
            return
        for key in keys:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                entry = await kv.get(key)
                self._apply(key, entry.value)

    def _apply(self, tenant: str, value: bytes | None) -> None:
        if not value:
            self.set(tenant, None)
            return
        try:
            self.set(tenant, _limits_decoder.decode(value))
        except msgspec.DecodeError as err:
            log.warning("tenant_limits_invalid", tenant=tenant, error=str(err))

    async def _on_limits(self, msg: Msg) -> None:
        tenant = msg.subject.rsplit(".", 1)[-1]
        op = (msg.headers or {}).get("KV-Operation")
        self._apply(tenant, None if op in ("DEL", "PURGE") else msg.data)

    async def _on_shared(self, msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            shared = _share_decoder.decode(msg.data)
            if shared.sender != self._id:
                self.taken_elsewhere(shared.taken)

    async def _share_loop(self) -> None:
        while True:
            await asyncio.sleep(SHARE_EVERY_S)
            if self._taken and self._nc is not None:
                taken, self._taken = dict(self._taken), defaultdict(int)
                with contextlib.suppress(nats.errors.Error):
                    await self._nc.publish(
                        SHARE_SUBJECT, _share_encoder.encode(_Shared(self._id, taken))
                    )
            now = time.monotonic()
            if now - self._swept > _IDLE_S:
                self._swept = now
                idle = [k for k, b in self._buckets.items() if now - b.at > _IDLE_S]
                for key in idle:
                    del self._buckets[key]


def _queries(n: float | None) -> str:
    return f"{n or 0:,g} {'query' if n == 1 else 'queries'}"


def _duration(ms: int) -> str:
    """``ms`` for a person: 120 ms, 3.5 s, 42 min, 2.5 h."""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    if ms < 3_600_000:
        return f"{ms / 60_000:.0f} min"
    return f"{ms / 3_600_000:.1f} h"


async def set_limits(
    nc: NatsClient, tenant: str, given: TenantLimits, *, reset: bool = False, replicas: int = 1
) -> TenantLimits:
    """Merge ``given`` into the tenant's own limits in ``MEMTENANT`` (``reset``: drop
    them first) and return them; the bucket is made on first use, with ``replicas``
    (the deployment's stream replicas, so it survives what the event log survives)."""
    js = nc.jetstream()
    try:
        kv = await js.key_value(LIMITS_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        kv = await js.create_key_value(
            KeyValueConfig(
                bucket=LIMITS_BUCKET,
                description="memstream tenants' query limits: <tenant> -> TenantLimits",
                history=5,
                storage=StorageType.FILE,
                replicas=replicas,
            )
        )
    own = TenantLimits()
    if not reset:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            entry = await kv.get(tenant)
            if entry.value:
                own = _limits_decoder.decode(entry.value)
    if given == TenantLimits() and not reset:
        return own  # only asked what they are: nothing to write, nothing for workers to take
    merged = given.over(own)
    if merged == TenantLimits():
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            await kv.delete(tenant)
    else:
        await kv.put(tenant, msgspec.json.encode(merged))
    return merged
