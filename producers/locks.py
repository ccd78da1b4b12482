"""Distributed locks on the broker memstream already runs: JetStream's key-value bucket
``MEMLOCK``, one key per lock, ``<tenant>.<name>``.

Acquiring creates the key (compare-and-set: it fails while the key exists) with a
per-message time to live, so a holder that dies frees the lock when its ``ttl_s``
runs out, by the server's clock. The holder gets the key's revision as a fencing
token: it grows with every acquisition, so a resource that remembers the highest
token it has seen can refuse a stale holder. Renewal rewrites the key only if it is
still the holder's revision; release deletes it only then. A holder whose lock
expired, and maybe went to another, learns so at its next renewal (``LockLost``), and
its release does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Final

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from memstream.producers.connection import or_denied
from memstream.schemas.errors import Forbidden, LockHeld, LockLost
from memstream.schemas.subjects import LOCK_BUCKET, lock_key

__all__ = ["Lock", "LockHolder"]

# JetStream's error code for "wrong last sequence": the key is not at the revision named.
_WRONG_LAST_SEQUENCE: Final = 10071
_POLL_S: Final = 0.05


class _Holder(msgspec.Struct, frozen=True):
    """The value of a held key: who holds it, for whoever finds it held."""

    agent: str
    ttl_s: float


class LockHolder(msgspec.Struct, frozen=True, kw_only=True):
    """Who holds a lock, as :meth:`Lock.holder` finds it: the agent, the ``ttl_s`` it
    holds it for at a time, and the key's revision (its fencing token, or a later
    renewal's revision)."""

    agent: str
    ttl_s: float
    revision: int


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Holder).decode


class Lock:
    """One lock of one tenant; use it as ``async with client.lock(name) as lock``.

    ``token`` is the fencing token (the KV revision at acquisition); ``revision`` the
    key's revision now (renewals move it).
    """

    def __init__(
        self, js: JetStreamContext, tenant: str, name: str, agent: str, ttl_s: float,
        wait_s: float,
    ) -> None:  # fmt: skip
        if ttl_s < 1:
            raise ValueError("ttl_s must be at least 1 second")
        self.key = lock_key(tenant, name)
        self.tenant = tenant
        self.name = name
        self.agent = agent
        self.ttl_s = float(ttl_s)
        self.wait_s = wait_s
        self._js = js
        self._kv: KeyValue | None = None
        self.token = 0
        self.revision = 0

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(LOCK_BUCKET)
        return self._kv

    async def acquire(self) -> Lock:
        """Take the lock, waiting up to ``wait_s`` for its holder to release it or for it
        to expire; LockHeld when it is still held then."""
        kv = await self._bucket()
        value = _encode(_Holder(self.agent, self.ttl_s))
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                self.revision = await self._create(kv, value)
            except nats.js.errors.KeyWrongLastSequenceError:
                if time.monotonic() >= deadline:
                    raise LockHeld(
                        f"lock {self.name!r} is held{await self._by(kv)}: try again later, "
                        "or wait longer (wait_s)"
                    ) from None
                await asyncio.sleep(_POLL_S)
                continue
            self.token = self.revision
            return self

    async def _create(self, kv: KeyValue, value: bytes) -> int:
        """Create the key; Forbidden at once when the server refuses these credentials
        the lock (a reader's), rather than a timeout."""
        subject = f"$KV.{LOCK_BUCKET}.{self.key}".lower()  # as the server's refusal names it
        try:
            return await or_denied(
                self._js._nc, subject, kv.create(self.key, value, msg_ttl=self.ttl_s)
            )
        except Forbidden:
            raise Forbidden(
                f"these credentials may not take lock {self.name!r} of tenant {self.tenant}: "
                "a reader may only read locks (take it as a writer or admin user)"
            ) from None

    async def holder(self) -> LockHolder | None:
        """Who holds the lock now; None when nobody does (released, or expired). Reading
        takes nothing: a reader user may ask it, though it may not take the lock."""
        return await self._holder(await self._bucket())

    async def _holder(self, kv: KeyValue) -> LockHolder | None:
        try:
            entry = await kv.get(self.key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        try:
            held = _decode(entry.value or b"")
        except msgspec.DecodeError:
            return None
        return LockHolder(agent=held.agent, ttl_s=held.ttl_s, revision=entry.revision or 0)

    async def _by(self, kv: KeyValue) -> str:
        holder = await self._holder(kv)
        if holder is None:
            return ""
        return f" by {holder.agent} (for up to {holder.ttl_s:g} s at a time)"

    async def renew(self) -> None:
        """Hold the lock for another ``ttl_s`` from now; LockLost when it is no longer
        this holder's (it expired, and perhaps another took it)."""
        headers = {"Nats-Expected-Last-Subject-Sequence": str(self.revision)}
        value = _encode(_Holder(self.agent, self.ttl_s))
        try:
            ack = await self._js.publish(
                f"$KV.{LOCK_BUCKET}.{self.key}", value, headers=headers, msg_ttl=self.ttl_s
            )
        except nats.js.errors.APIError as err:
            if err.err_code == _WRONG_LAST_SEQUENCE:
                raise LockLost(
                    f"lock {self.name!r} expired before it was renewed (ttl_s {self.ttl_s:g}): "
                    "renew more often than ttl_s, or give a longer ttl_s"
                ) from None
            raise
        self.revision = ack.seq

    async def release(self) -> bool:
        """Free the lock if it is still this holder's; whether it was."""
        kv = await self._bucket()
        try:
            await kv.delete(self.key, last=self.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except nats.js.errors.APIError as err:
            if err.err_code == _WRONG_LAST_SEQUENCE:
                return False
            raise
        return True

    async def __aenter__(self) -> Lock:
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A lost lock is not this block's error to raise on the way out: the next
        # renewal said so, or the work was done within ttl_s. With the broker away,
        # the lock expires by itself.
        with contextlib.suppress(nats.errors.Error):
            await self.release()
