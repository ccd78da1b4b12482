"""The query worker: request-reply over ``memq.<tenant>.<op>``.

The tenant is the subject's tenant token and nothing else. Each op reads the projection
that serves it: the history (DuckDB) for ``history``, ``task``, ``context``,
``conversation``, ``stats`` and ``analytics``; the vectors (Qdrant) for ``search``;
both for ``recall``. A request's ``min_seq`` waits (up to ``wait_ms``) until that
projection has applied the sequence: read-your-writes for an agent that just published.

Workers subscribe to ``memq.>`` in a queue group, so several can share the load. Where
roles run in separate processes, each role has its own queue group and stays silent on
the ops another role serves; exactly one role (the one holding the history) answers
malformed subjects and unknown ops. Replies are ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"code", "message"}}``; an internal failure is logged with a
correlation id that its reply carries, and no stack trace leaves the process.

Built on a nats-py subscription: a FastStream subscriber doing the same envelope work
adds about 0.3 ms a request at p50 and serves about a tenth of the requests per second
(``benchmarks/faststream_reply.py``), out of a 1.5 ms budget over the raw search. The
AsyncAPI document of the contract comes from the contract's own types instead
(``schemas/asyncapi.py``, ``memstream asyncapi``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from memstream.consumers.audit import Auditor, count_results
from memstream.consumers.endpoints import ENDPOINTS, Endpoint
from memstream.consumers.limits import QueryLimits
from memstream.consumers.log import get_logger
from memstream.consumers.sources import HistoryReads, LocalHistory, Source, read_history
from memstream.producers.connection import subscriptions_held
from memstream.projections.quotas import NO_LIMITS, Limits
from memstream.schemas.errors import ConfigError, MemstreamError, QueryError
from memstream.schemas.ids import new_id
from memstream.schemas.partitions import QUERY_SLOT_MAPPING
from memstream.schemas.queries import (
    OPS,
    SERVED_BY,
    Request,
    decode_request,
    ops_served,
)
from memstream.schemas.replies import error_reply, ok_reply
from memstream.schemas.subjects import (
    EVENT_PREFIX,
    EVENT_STREAM,
    QUERY_PREFIX,
    asker,
    parse_query_subject,
    query_subject,
)
from memstream.schemas.tenancy import AGENT_HEADER, TenantLimits

__all__ = ["QUEUE", "QueryWorker", "check_query_mapping"]

log = get_logger("memstream.query")

QUEUE: Final = "memstream-query"
# Memories recall considers before the budget picks among them.
_RECALL_MEMORIES = 12
_MAX_IN_FLIGHT = 256
# How long a query's embedding may take, retries included: well inside the 10 s an SDK
# request waits, so that an embedder that is down comes back as `unavailable` with its
# cause, not as a timeout.
QUERY_EMBEDDING_WITHIN_S = 5.0

# The most characters of a memory's text a search hit carries.
HIT_TEXT_CHARS: Final = 65_536


# How long the check of the server's query mapping waits for its own message.
_MAPPING_CHECK_S = 2.0


async def check_query_mapping(nc: NatsClient) -> None:
    """Raise ConfigError unless the server delivers queries with their tenant's slot
    (``schemas.partitions``): without its mapping, a partition's workers would never
    hear a query."""
    probe = f"memstream-check-{new_id()[-12:].lower()}"
    subject = query_subject(probe, "mapping")
    arrived = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Msg) -> None:
        if not arrived.done():
            arrived.set_result(msg.subject)

    sub = await nc.subscribe(f"{subject}.*", cb=on_msg)
    try:
        await nc.flush()
        await nc.publish(subject, b"")
        await asyncio.wait_for(arrived, _MAPPING_CHECK_S)
    except TimeoutError:
        src, dest = QUERY_SLOT_MAPPING
        raise ConfigError(
            f"the NATS server does not deliver queries to partitions: add the mapping "
            f'"{src}": "{dest}" to every server\'s configuration (see the README, '
            "Partitions), then reload it"
        ) from None
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


def _empty(result: Any) -> bool:
    """An answer with nothing in it: no hits, events, memories, turns or sources."""
    for name in ("hits", "events", "memories", "turns", "sources", "events_by_type"):
        found = getattr(result, name, None)
        if found is not None:
            return not found or (
                name == "hits" and all(isinstance(h, list) and not h for h in found)
            )
    return False


class QueryWorker:
    """Answers the query ops it has sources for; see the module docstring."""

    def __init__(
        self,
        nc: NatsClient,
        *,
        history: Source | None = None,
        vectors: Source | None = None,
        remote_history: HistoryReads | None = None,
        answers_unknown: bool = True,
        queue: str = QUEUE,
        search_inline: bool = False,
        subjects: list[str] | None = None,
        leave: frozenset[str] = frozenset(),
        limits: TenantLimits | None = None,
        quota_defaults: Limits = NO_LIMITS,
    ) -> None:
        """``remote_history``: the history another process serves, for recall.
        ``search_inline``: search on the event loop's thread rather than a worker
        thread; right for the embedded engine (see :meth:`_vector_search`).
        ``subjects``: what to answer, by default every tenant's queries
        (``schemas.partitions.Partition.query_subjects``). ``leave``: ops another
        process answers from the same sources (the searcher's search and recall).
        ``limits``: the server's default query limits of a tenant (``consumers.limits``)."""
        self.nc = nc
        self.limits = QueryLimits(limits)
        self.quota_defaults = quota_defaults
        self.auditor = Auditor(nc)
        self.subjects = subjects or [f"{QUERY_PREFIX}.>"]
        # Told each answered op, its seconds and its outcome ("ok" or the error code): the
        # metrics.
        self.observe: Callable[[str, float, str], None] | None = None
        self.sources: dict[str, Source] = {
            name: source
            for name, source in (("history", history), ("vectors", vectors))
            if source is not None
        }
        self.queue = queue
        self.answers_unknown = answers_unknown
        self.search_inline = search_inline
        self.history_reads: HistoryReads | None = (
            LocalHistory(history) if history is not None else remote_history
        )
        # The ops this worker answers, from the contract's table alone: those whose first
        # projection it holds (recall's history may be another process's), and, where it
        # answers unknown ops, those that read none (watch: one worker per deployment).
        self.ops: dict[str, Endpoint] = {
            op: ENDPOINTS[op] for op in ops_served(set(self.sources), answers_unknown)
        }
        if "recall" in self.ops and self.history_reads is None:
            del self.ops["recall"]  # no history to read the task and the turns from
        for op in leave:
            self.ops.pop(op, None)
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(_MAX_IN_FLIGHT)
        self._stopping = asyncio.Event()
        # Tenants the stream was seen to hold events of (see _no_events).
        self._seen: set[str] = set()

    async def start(self) -> None:
        await self.limits.start(self.nc)
        for subject in self.subjects:
            self._subs.append(await self.nc.subscribe(subject, queue=self.queue, cb=self._on_msg))
        # The server has the subscriptions once this returns: "ready" means answering.
        await subscriptions_held(self.nc)
        log.info("query_worker_started", ops=sorted(self.ops), queue=self.queue)

    async def stop(self) -> None:
        """Stop taking requests and finish those in flight (those waiting for min_seq
        are answered ``unavailable`` at once)."""
        self._stopping.set()
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()
        self._subs = []
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.limits.stop()

    async def _on_msg(self, msg: Msg) -> None:
        # The subscription's callbacks run one at a time: hand each request to a task so
        # a slow one (a wait for min_seq, a large analytics query) holds up no other.
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, msg: Msg) -> None:
        if not msg.reply:
            return  # a publish, not a request: there is nobody to answer
        started = time.perf_counter()
        op = tenant = None
        who = ""
        outcome = "ok"
        result: Any = None
        try:
            parts = msg.subject.split(".")
            # memq.<tenant>.<op>, with the tenant's slot after it as the server maps it
            op = parts[2] if len(parts) in (3, 4) else None
            if op is not None and op in OPS and op not in self.ops:
                return  # another role's op: its workers answer it
            if not self.answers_unknown and op not in self.ops:
                return
            tenant, op, _ = parse_query_subject(msg.subject)
            who = asker(tenant, msg.reply)
            wait_ms = self.limits.admit(tenant, who)
            if wait_ms:
                raise QueryError(
                    "rate_limited",
                    self.limits.refusal(tenant, who, wait_ms),
                    retry_after_ms=wait_ms,
                )
            req = decode_request(op, msg.data)
            result = await self._serve(tenant, op, req)
            body = ok_reply(result, _empty(result) and await self._no_events(tenant))
        except QueryError as err:
            outcome = err.code
            unseen = err.code == "not_found" and tenant is not None
            unseen = unseen and await self._no_events(tenant)  # type: ignore[arg-type]
            body = error_reply(
                err.code,
                err.message,
                tenant_has_no_events=unseen,
                retry_after_ms=err.retry_after_ms,
            )
        except MemstreamError as err:
            outcome = err.code
            body = error_reply(err.code, str(err))
        except Exception:
            outcome = "internal"
            correlation_id = new_id()
            log.exception("query_failed", op=op, tenant=tenant, correlation_id=correlation_id)
            body = error_reply(
                "internal",
                f"the query failed inside the worker; its log has the details under "
                f"correlation id {correlation_id}",
                correlation_id,
            )
        if len(body) > self.nc.max_payload:
            outcome = "bad_request"
            body = error_reply(
                "bad_request",
                f"the reply would be {len(body)} bytes, more than the {self.nc.max_payload} "
                "NATS allows in one message: ask for less (a smaller limit, last_n or top_k)",
            )
        with contextlib.suppress(nats.errors.Error):
            await msg.respond(body)
        seconds = time.perf_counter() - started
        if self.observe is not None and op in self.ops:
            self.observe(op, seconds, outcome)
        if tenant is not None and op is not None:
            await self.auditor.record(
                tenant=tenant,
                user=who,
                agent=(msg.headers or {}).get(AGENT_HEADER, ""),
                kind="query",
                op=op,
                body=msg.data,
                results=count_results(result) if outcome == "ok" else None,
                seconds=seconds,
                outcome=outcome,
            )
        log.debug("query_answered", op=op, tenant=tenant, ms=round(seconds * 1000, 2))

    async def _no_events(self, tenant: str) -> bool:
        """Whether the stream holds no event of ``tenant`` (asked only of an empty
        answer; a tenant seen with events is remembered)."""
        if tenant in self._seen:
            return False
        try:
            info = await self.nc.jetstream().stream_info(
                EVENT_STREAM, subjects_filter=f"{EVENT_PREFIX}.{tenant}.>"
            )
        except nats.errors.Error:
            return False  # not known: say nothing
        if info.state.subjects:
            if len(self._seen) > 100_000:
                self._seen.clear()
            self._seen.add(tenant)
            return False
        return True

    async def _serve(self, tenant: str, op: str, req: Request) -> Any:
        if req.consistency == "latest":
            # What the stream holds as the request arrives: answered once applied.
            last = (await self.nc.jetstream().stream_info(EVENT_STREAM)).state.last_seq
            req = msgspec.structs.replace(req, min_seq=max(req.min_seq or 0, last))
        for name in SERVED_BY[op]:
            source = self.sources.get(name)
            if source is not None:
                await self._wait(source, name, req)
        return await self.ops[op](self, tenant, req)

    async def _wait(self, source: Source, name: str, req: Request) -> None:
        if req.min_seq is None or source.checkpoint >= req.min_seq:
            return
        # A worker that is stopping answers its waiting requests at once.
        waiting = asyncio.ensure_future(source.wait_applied(req.min_seq, req.wait_ms / 1000))
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not waiting.done():
            waiting.cancel()
            raise QueryError("unavailable", "the query worker is stopping: retry the request")
        if not waiting.result():
            raise QueryError(
                "not_caught_up",
                f"the {name} projection has applied up to seq {source.checkpoint}, not yet "
                f"min_seq {req.min_seq}, after waiting {req.wait_ms} ms: retry, or wait longer",
            )

    async def read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(cursor, *args, **kwargs)`` against the history (an op that reads it is
        only registered where the history is)."""
        return await read_history(self.sources["history"], fn, *args, **kwargs)
