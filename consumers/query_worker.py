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
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from memstream.consumers.log import get_logger
from memstream.consumers.sources import HistoryReads, LocalHistory, Source, read_history
from memstream.projections import memories, reads
from memstream.projections.recall import Part, compose, memory_part, task_part, turn_part
from memstream.projections.vector_search import Hit, SearchSpec, embed_queries
from memstream.schemas.errors import ConfigError, MemstreamError, QueryError
from memstream.schemas.events import EVENT_TYPES
from memstream.schemas.filters import Node, kinds_of, parse_filter
from memstream.schemas.ids import new_id
from memstream.schemas.partitions import QUERY_SLOT_MAPPING
from memstream.schemas.queries import (
    OPS,
    PROJECTIONS,
    SERVED_BY,
    AnalyticsRequest,
    AnalyticsResult,
    ContextRequest,
    ContextResult,
    ConversationRequest,
    ConversationResult,
    GetRequest,
    HistoryRequest,
    HistoryResult,
    Link,
    LinksRequest,
    LinksResult,
    ListRequest,
    ListResult,
    Memory,
    RecallRequest,
    RecallResult,
    RecallSource,
    Request,
    RevisionsRequest,
    RevisionsResult,
    SearchBatchResult,
    SearchHit,
    SearchRequest,
    SearchResult,
    StatsRequest,
    StatsResult,
    TaskRequest,
    TaskResult,
    WatchRequest,
    WatchResult,
    decode_request,
    ops_served,
)
from memstream.schemas.replies import error_reply, ok_reply
from memstream.schemas.subjects import (
    DLQ_PREFIX,
    DLQ_STREAM,
    EVENT_STREAM,
    QUERY_PREFIX,
    event_subject,
    parse_query_subject,
    query_subject,
    reply_inbox_prefix,
    tenant_event_filter,
)

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


def _hit(h: Hit) -> SearchHit:
    p = h.payload
    return SearchHit(
        kind=cast(Any, h.kind),
        memory_id=h.ref,
        score=h.score,
        # A hit is a pointer with a preview: five near-1 MB memories would not fit in a
        # reply. The history holds the whole text.
        text=h.text[:HIT_TEXT_CHARS],
        text_truncated=len(h.text) > HIT_TEXT_CHARS,
        agent=p.get("agent", ""),
        ts=dt.datetime.fromisoformat(p["ts"]),
        tags=tuple(p.get("tags") or ()),
        metadata=p.get("metadata") or {},
        seq=p.get("seq", 0),
        user_id=p.get("user_id"),
        run_id=p.get("run_id"),
        project=p.get("project"),
        task_id=p.get("task_id"),
        expires_at=(
            dt.datetime.fromtimestamp(p["expires_epoch"], dt.UTC) if "expires_epoch" in p else None
        ),
    )


def _known_types(types: tuple[str, ...]) -> None:
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise QueryError(
            "bad_request",
            f"unknown event type {', '.join(map(repr, unknown))} in types: use "
            f"{', '.join(sorted(EVENT_TYPES))}",
        )


def _filter(req: SearchRequest | RecallRequest | ListRequest) -> Node | None:
    return parse_filter(req.filter) if req.filter is not None else None


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
    ) -> None:
        """``remote_history``: the history another process serves, for recall.
        ``search_inline``: search on the event loop's thread rather than a worker
        thread; right for the embedded engine (see :meth:`_vector_search`).
        ``subjects``: what to answer, by default every tenant's queries
        (``schemas.partitions.Partition.query_subjects``)."""
        self.nc = nc
        self.subjects = subjects or [f"{QUERY_PREFIX}.>"]
        # Told each answered op and its seconds (the metrics' histogram).
        self.observe: Callable[[str, float], None] | None = None
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
        handlers: dict[str, Callable[[str, Any], Awaitable[Any]]] = {
            "search": self._search,
            "recall": self._recall,
            "history": self._history,
            "task": self._task,
            "context": self._context,
            "conversation": self._conversation,
            "stats": self._stats,
            "analytics": self._analytics,
            "get": self._get,
            "list": self._list,
            "revisions": self._revisions,
            "links": self._links,
            "watch": self._watch,
        }
        served = ops_served(set(self.sources))
        if answers_unknown:
            served.append("watch")  # one worker per deployment, or feeds would double
        if vectors is not None and history is None and remote_history is not None:
            served.append("recall")  # with the history another process answers from
        self.ops = {op: handlers[op] for op in served}
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(_MAX_IN_FLIGHT)
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        for subject in self.subjects:
            self._subs.append(await self.nc.subscribe(subject, queue=self.queue, cb=self._on_msg))
        # The server has the subscriptions once this returns: "ready" means answering.
        await self.nc.flush()
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
        try:
            parts = msg.subject.split(".")
            # memq.<tenant>.<op>, with the tenant's slot after it as the server maps it
            op = parts[2] if len(parts) in (3, 4) else None
            if op is not None and op in OPS and op not in self.ops:
                return  # another role's op: its workers answer it
            if not self.answers_unknown and op not in self.ops:
                return
            tenant, op, _ = parse_query_subject(msg.subject)
            req = decode_request(op, msg.data)
            body = ok_reply(await self._serve(tenant, op, req))
        except QueryError as err:
            body = error_reply(err.code, err.message)
        except MemstreamError as err:
            body = error_reply(err.code, str(err))
        except Exception:
            correlation_id = new_id()
            log.exception("query_failed", op=op, tenant=tenant, correlation_id=correlation_id)
            body = error_reply(
                "internal",
                f"the query failed inside the worker; its log has the details under "
                f"correlation id {correlation_id}",
                correlation_id,
            )
        if len(body) > self.nc.max_payload:
            body = error_reply(
                "bad_request",
                f"the reply would be {len(body)} bytes, more than the {self.nc.max_payload} "
                "NATS allows in one message: ask for less (a smaller limit, last_n or top_k)",
            )
        with contextlib.suppress(nats.errors.Error):
            await msg.respond(body)
        if self.observe is not None and op in self.ops:
            self.observe(op, time.perf_counter() - started)
        log.debug(
            "query_answered",
            op=op,
            tenant=tenant,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _serve(self, tenant: str, op: str, req: Request) -> Any:
        if req.consistency == "latest":
            # What the stream holds as the request arrives: answered once applied.
            last = (await self.nc.jetstream().stream_info(EVENT_STREAM)).state.last_seq
            req = msgspec.structs.replace(req, min_seq=max(req.min_seq or 0, last))
        for name in SERVED_BY[op]:
            source = self.sources.get(name)
            if source is not None:
                await self._wait(source, name, req)
        return await self.ops[op](tenant, req)

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

    async def _read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(cursor, *args, **kwargs)`` against the history (an op that reads it is
        only registered where the history is)."""
        return await read_history(self.sources["history"], fn, *args, **kwargs)

    async def _vector_search(
        self, tenant: str, queries: list[str], spec: SearchSpec
    ) -> list[list[Hit]]:
        """Qdrant Edge searches in this process and holds the GIL while it does, so a
        worker thread would buy no parallelism, only a GIL hand-off with the event loop
        (measured with the pure-Python engine before it: p99 14-18 ms in a thread against
        9-10 ms inline). A Qdrant server is asked over the network: a thread."""
        async with self.sources["vectors"].reading() as vectors:
            embedder = vectors.embedder
            # An embedder that answers over the network (or runs a model) is waited for
            # off the loop, and only as long as the asker waits for its answer: past
            # that, the cause goes back as `unavailable` rather than a timeout.
            if embedder.remote:
                matrix = await asyncio.to_thread(
                    embed_queries, embedder, tenant, queries, QUERY_EMBEDDING_WITHIN_S
                )
            else:
                matrix = embed_queries(embedder, tenant, queries)
            if self.search_inline:
                found: list[list[Hit]] = vectors.search_vectors(tenant, queries, matrix, spec)
                return found
            return await asyncio.to_thread(vectors.search_vectors, tenant, queries, matrix, spec)

    # --- ops: each returns the contract's result Struct ------------------------------

    async def _search(self, tenant: str, req: SearchRequest) -> SearchResult | SearchBatchResult:
        if (req.query is None) == (req.queries is None):
            raise QueryError("bad_request", "search takes either query or queries (a list)")
        queries = [req.query] if req.query is not None else list(req.queries or ())
        found = await self._vector_search(tenant, queries, SearchSpec.of(req))
        lists = [[_hit(h) for h in hits] for hits in found]
        if req.with_links:
            lists = await self._with_links(tenant, lists)
        if req.query is not None:
            return SearchResult(hits=lists[0])
        return SearchBatchResult(hits=lists)

    async def _with_links(self, tenant: str, lists: list[list[SearchHit]]) -> list[list[SearchHit]]:
        if self.history_reads is None:
            raise QueryError("unavailable", "with_links needs the history, and none answers here")
        ids = sorted({h.memory_id for hits in lists for h in hits})
        by_id: dict[str, list[Link]] = {i: [] for i in ids}
        for link in await self.history_reads.edges(tenant, ids):
            for end in {link.from_id, link.to_id}:
                if end in by_id:
                    by_id[end].append(link)
        return [
            [msgspec.structs.replace(h, links=by_id[h.memory_id]) for h in hits] for hits in lists
        ]

    async def _history(self, tenant: str, req: HistoryRequest) -> HistoryResult:
        _known_types(req.types)
        page = await self._read(
            reads.history,
            tenant,
            types=req.types,
            agent=req.agent,
            task_id=req.task_id,
            since=req.since,
            until=req.until,
            after_seq=req.after_seq,
            limit=req.limit,
        )
        # msgspec.Raw events: the producer's bytes, encoded into the reply as they are.
        return HistoryResult(events=page.events, next_after_seq=page.next_after_seq)

    async def _task(self, tenant: str, req: TaskRequest) -> TaskResult:
        found: TaskResult | None = await self._read(reads.task, tenant, req.task_id)
        if found is None:
            raise QueryError("not_found", f"tenant {tenant} has no task {req.task_id!r}")
        return found

    async def _context(self, tenant: str, req: ContextRequest) -> ContextResult:
        found: ContextResult | None = await self._read(
            reads.context, tenant, req.key, dt.datetime.now(dt.UTC)
        )
        if found is None:
            raise QueryError(
                "not_found", f"context key {req.key!r} is not set (never set, cleared or expired)"
            )
        return found

    async def _conversation(self, tenant: str, req: ConversationRequest) -> ConversationResult:
        turns = await self._read(reads.conversation, tenant, req.session_id, req.last_n)
        return ConversationResult(session_id=req.session_id, turns=turns)

    async def _get(self, tenant: str, req: GetRequest) -> Memory:
        found: Memory | None = await self._read(
            memories.get_memory, tenant, req.memory_id, dt.datetime.now(dt.UTC)
        )
        if found is None:
            raise QueryError(
                "not_found",
                f"tenant {tenant} has no memory {req.memory_id!r} (never stored, forgotten or "
                "expired)",
            )
        return found

    async def _list(self, tenant: str, req: ListRequest) -> ListResult:
        page, cursor = await self._read(
            memories.list_memories,
            tenant,
            dt.datetime.now(dt.UTC),
            kinds=kinds_of(node := _filter(req), req.kinds),
            filter=node,
            order_by=req.order_by,
            descending=req.descending,
            limit=req.limit,
            cursor=req.cursor,
        )
        return ListResult(memories=page, next_cursor=cursor)

    async def _links(self, tenant: str, req: LinksRequest) -> LinksResult:
        found: LinksResult = await self._read(
            memories.links, tenant, req.memory_id, dt.datetime.now(dt.UTC),
            direction=req.direction, relation=req.relation, depth=req.depth, limit=req.limit,
        )  # fmt: skip
        if found.nodes[0].missing and not found.edges:
            raise QueryError(
                "not_found",
                f"tenant {tenant} has no memory {req.memory_id!r} and no link to or from it",
            )
        return found

    async def _watch(self, tenant: str, req: WatchRequest) -> WatchResult:
        """A push consumer of the tenant's events to the asker's inbox, made with the
        service's rights: a tenant cannot be let create consumers itself, since the
        consumer-create API would let it rewrite memstream's own durable consumers."""
        inbox = reply_inbox_prefix(tenant) + "."
        rest = req.deliver_to[len(inbox) :]
        if not req.deliver_to.startswith(inbox) or not rest or any(c in rest for c in "*> \t"):
            raise QueryError(
                "bad_request",
                f"watch: deliver_to must be a subject under {inbox} (an inbox of this "
                f"tenant's connection), not {req.deliver_to!r}",
            )
        _known_types(req.types)
        name = f"watch-{tenant}-{new_id()[-12:]}"
        heartbeat = req.heartbeat_ms / 1000
        js = self.nc.jetstream()
        # "From now" as a sequence, so a feed that starts again misses nothing.
        start = req.from_seq or (await js.stream_info(EVENT_STREAM)).state.last_seq + 1
        config = ConsumerConfig(
            name=name,
            deliver_subject=req.deliver_to,
            # As published (stored before slots were stamped) and as stored since.
            filter_subjects=[
                s
                for t in req.types
                for s in (event_subject(tenant, t), f"{event_subject(tenant, t)}.*")
            ]
            or None,
            filter_subject=None if req.types else tenant_event_filter(tenant),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            idle_heartbeat=heartbeat,
            # Gone once nobody has listened on deliver_to for this long.
            inactive_threshold=max(30.0, 3 * heartbeat),
            mem_storage=True,
            num_replicas=1,
        )
        await js.add_consumer(EVENT_STREAM, config)
        return WatchResult(consumer=name, from_seq=start)

    async def _revisions(self, tenant: str, req: RevisionsRequest) -> RevisionsResult:
        found = await self._read(memories.revisions, tenant, req.memory_id)
        if not found:
            raise QueryError(
                "not_found", f"tenant {tenant} has no event of a memory {req.memory_id!r}"
            )
        return RevisionsResult(memory_id=req.memory_id, revisions=found)

    async def _analytics(self, tenant: str, req: AnalyticsRequest) -> AnalyticsResult:
        result = await self._read(reads.analytics, tenant, req.name, req.params)
        rows = [list(row) for row in result.rows]
        return AnalyticsResult(name=req.name, columns=result.columns, rows=rows)

    async def _stats(self, tenant: str, req: StatsRequest) -> StatsResult:
        by_type, by_agent = await self._read(reads.counts, tenant)
        live = await self._read(memories.live_counts, tenant, dt.datetime.now(dt.UTC))
        js = self.nc.jetstream()
        last_seq = (await js.stream_info(EVENT_STREAM)).state.last_seq
        applied: dict[str, int] = {name: source.checkpoint for name, source in self.sources.items()}
        remote = [name for name in PROJECTIONS if name not in self.sources]
        if remote:
            # Served by other processes: their durable consumers' ack floors say, the
            # furthest behind of a projection's instances counting.
            for info in await js.consumers_info(EVENT_STREAM):
                for name in remote:
                    if info.name.startswith(f"{name}-"):
                        floor = info.ack_floor.stream_seq if info.ack_floor else 0
                        applied[name] = min(applied.get(name, floor), floor)
        dlq = await js.stream_info(DLQ_STREAM, subjects_filter=f"{DLQ_PREFIX}.*.{tenant}")
        lag = {name: max(0, last_seq - seq) for name, seq in applied.items()}
        for held, source in self.sources.items():
            partition = getattr(source, "partition", None)
            if partition is not None and not partition.whole:
                # A partition's checkpoint stops at its own last event: what it has not
                # applied of its share is what its consumer still holds.
                with contextlib.suppress(nats.errors.Error):
                    lag[held] = await source.pending()  # type: ignore[attr-defined]
        return StatsResult(
            events_by_type=by_type,
            events_by_agent=by_agent,
            last_applied_seq=applied,
            lag=lag,
            dlq_count=sum((dlq.state.subjects or {}).values()),
            memories_by_kind=live,
            health={
                name: getattr(source, "unhealthy", None) or "ok"
                for name, source in self.sources.items()
            },
        )

    async def _recall(self, tenant: str, req: RecallRequest) -> RecallResult:
        if req.query is None and req.session_id is None and req.task_id is None:
            raise QueryError(
                "bad_request", "recall needs at least one of query, session_id and task_id"
            )
        history = self.history_reads
        parts: list[Part] = []
        if req.task_id is not None and history is not None:
            found = await history.task(tenant, req.task_id, req.min_seq, req.wait_ms)
            if found is not None:
                parts.append(task_part(found))
        if req.session_id is not None and history is not None:
            turns = await history.turns(tenant, req.session_id, req.min_seq, req.wait_ms)
            parts += [turn_part(t, req.session_id) for t in turns]
        if req.query is not None:
            spec = SearchSpec.of_recall(req, _RECALL_MEMORIES)
            (hits,) = await self._vector_search(tenant, [req.query], spec)
            # The task and the conversation asked for are in the bundle already.
            hits = [
                h
                for h in hits
                if not (h.kind == "tasks" and h.ref == req.task_id)
                and not (h.kind == "turns" and h.payload.get("session_id") == req.session_id)
            ]
            for h in hits:
                ts = h.payload.get("ts")
                parts.append(
                    memory_part(
                        h.kind,
                        h.ref,
                        h.text,
                        h.score,
                        h.payload.get("seq", 0),
                        dt.datetime.fromisoformat(ts) if ts else None,
                    )
                )
        text, used = compose(parts, req.budget_chars, req.strategy)
        return RecallResult(
            text=text,
            chars=len(text),
            strategy=req.strategy,
            sources=[RecallSource(kind=p.kind, ref=p.ref, seq=p.seq, score=p.score) for p in used],
        )
