"""Metrics and health over HTTP (``--metrics-port``): ``/metrics``, ``/healthz``, ``/readyz``.

``/metrics`` is the Prometheus text format, from a registry of this process's own (never
the host program's global one). Counters that memstream keeps anyway (events applied,
dead letters, embedding calls and cache hits) are read when scraped; the query durations
are a histogram the query worker observes; the lag of each projection is asked of NATS
by the event loop every ``refresh_s`` and served from there, since a scrape arrives on
the HTTP server's thread.

``/healthz`` says the process is alive. ``/readyz`` says whether it is ready to be sent
work: connected to NATS, every projection it runs applying (not failing on its storage
or embedder, and not stalled with events pending), each within its lag bound; when not,
the JSON says why, with status 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from memstream.consumers.log import get_logger
from memstream.schemas.admin import EngineInfo

__all__ = ["Health", "MetricsServer", "ProcessMetrics"]

log = get_logger("memstream.metrics")

# A projection with events pending that has applied nothing for this long is stalled.
STALLED_AFTER_S = 30.0


@dataclass
class Health:
    """What ``/readyz`` answers from, kept current by the event loop."""

    nats_connected: Callable[[], bool] = lambda: False
    # projection -> (applied seq, pending events, why it is failing or None)
    projections: dict[str, tuple[int, int, str | None]] = field(default_factory=dict)
    lag_bound: int = 100_000
    started: float = field(default_factory=time.monotonic)
    # The vector engine's process, as last asked (None: this process runs none).
    engine: EngineInfo | None = None
    _advanced: dict[str, float] = field(default_factory=dict)
    _applied: dict[str, int] = field(default_factory=dict)

    def update(self, name: str, applied: int, pending: int, failing: str | None) -> None:
        now = time.monotonic()
        if self._applied.get(name) != applied or not pending:
            self._advanced[name] = now
        self._applied[name] = applied
        self.projections[name] = (applied, pending, failing)

    def reasons(self) -> list[str]:
        """Why this process is not ready; empty when it is."""
        found = []
        if not self.nats_connected():
            found.append("not connected to NATS")
        if self.engine is not None and not self.engine.up:
            found.append(f"the vector engine process is not answering: {self.engine.error}")
        now = time.monotonic()
        for name, (_, pending, failing) in sorted(self.projections.items()):
            if failing:
                found.append(f"the {name} projection is not applying: {failing}")
            elif pending and now - self._advanced.get(name, now) > STALLED_AFTER_S:
                found.append(
                    f"the {name} projection has applied nothing for "
                    f"{now - self._advanced[name]:.0f} s with {pending} events pending"
                )
            elif pending > self.lag_bound:
                found.append(
                    f"the {name} projection is {pending} events behind (bound {self.lag_bound})"
                )
        return found


class ProcessMetrics:
    """The metrics of one memstream process, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.query_duration = Histogram(
            "memstream_query_duration_seconds",
            "Time from a query's arrival to its reply, by op.",
            ["op"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.query_errors = Counter(
            "memstream_query_errors_total",
            "Queries answered with an error, by op and error code (rate_limited: over the "
            "tenant's or the user's query rate).",
            ["op", "code"],
            registry=self.registry,
        )
        self.publish_errors = Counter(
            "memstream_publish_errors_total",
            "Publishes to JetStream that failed (dead letters, an agent's events).",
            registry=self.registry,
        )
        self._sources: list[Callable[[], dict[str, Any]]] = []
        self.registry.register(_Live(self))

    def add_source(self, read: Callable[[], dict[str, Any]]) -> None:
        """A reader of live counters, called at each scrape; returns any of
        ``applied``/``dead_letters``/``lag``/``healthy`` (projection -> number) and
        ``embedding_requests``/``cache_hits``/``cache_misses`` (numbers)."""
        self._sources.append(read)

    def observe_query(self, op: str, seconds: float, outcome: str = "ok") -> None:
        self.query_duration.labels(op=op).observe(seconds)
        if outcome != "ok":
            self.query_errors.labels(op=op, code=outcome).inc()

    def text(self) -> bytes:
        return bytes(generate_latest(self.registry))


class _Live(Collector):
    def __init__(self, metrics: ProcessMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        applied = CounterMetricFamily(
            "memstream_events_applied", "Events a projection applied.", labels=["projection"]
        )
        dead = CounterMetricFamily(
            "memstream_dead_letters", "Events a projection dead-lettered.", labels=["projection"]
        )
        lag = GaugeMetricFamily(
            "memstream_projection_lag",
            "Events of its share of the stream a projection has not applied yet.",
            labels=["projection"],
        )
        healthy = GaugeMetricFamily(
            "memstream_projection_healthy",
            "1 while a projection's storage works; 0 while it fails (the projection retries "
            "its batch and does not advance).",
            labels=["projection"],
        )
        requests = CounterMetricFamily(
            "memstream_embedding_requests", "Calls to the embedder (cache misses batched)."
        )
        hits = CounterMetricFamily(
            "memstream_embedding_cache_hits", "Texts whose vector the cache had."
        )
        misses = CounterMetricFamily(
            "memstream_embedding_cache_misses", "Texts the embedder had to embed."
        )
        refused = CounterMetricFamily(
            "memstream_quota_refused",
            "Stores and revises not applied because they would take the tenant past a hard "
            "quota (outcome quota_exceeded), as the history decided them.",
            labels=["tenant"],
        )
        warned = CounterMetricFamily(
            "memstream_quota_warnings",
            "Stores and revises applied past a tenant's soft quota (80% of a hard one).",
            labels=["tenant"],
        )
        totals = {"embedding_requests": 0, "cache_hits": 0, "cache_misses": 0}
        found_engine: EngineInfo | None = None
        for read in self.metrics._sources:
            with contextlib.suppress(Exception):  # a source going away mid-scrape
                found = read()
                found_engine = found.get("engine", found_engine)
                for name, value in found.get("applied", {}).items():
                    applied.add_metric([name], value)
                for name, value in found.get("dead_letters", {}).items():
                    dead.add_metric([name], value)
                for name, value in found.get("lag", {}).items():
                    lag.add_metric([name], value)
                for name, value in found.get("healthy", {}).items():
                    healthy.add_metric([name], value)
                for tenant, value in found.get("quota_refused", {}).items():
                    refused.add_metric([tenant], value)
                for tenant, value in found.get("quota_warned", {}).items():
                    warned.add_metric([tenant], value)
                for key in totals:
                    totals[key] += found.get(key, 0)
        requests.add_metric([], totals["embedding_requests"])
        hits.add_metric([], totals["cache_hits"])
        misses.add_metric([], totals["cache_misses"])
        yield from (applied, dead, lag, healthy, requests, hits, misses, refused, warned)
        yield from _engine(found_engine)


def _engine(info: EngineInfo | None) -> Iterator[Any]:
    """The vector engine's process, where this process runs one."""
    if info is None:
        return
    families = (
        (GaugeMetricFamily, "memstream_engine_up",
         "1 while the vector engine's process answers, 0 while it does not.", int(info.up)),
        (CounterMetricFamily, "memstream_engine_restarts",
         "Times the vector engine's process died and was started again.", info.restarts),
        (GaugeMetricFamily, "memstream_engine_resident_bytes",
         "The vector engine process's resident memory (its shards' mapped pages).",
         info.rss_bytes),
        (CounterMetricFamily, "memstream_engine_searches",
         "Searches the vector engine's process answered.", info.searches),
        (CounterMetricFamily, "memstream_engine_write_calls",
         "Engine calls that wrote (a write of many points is several).", info.write_calls),
        (GaugeMetricFamily, "memstream_engine_search_wait_max_seconds",
         "The longest a search waited for the engine (at most one write call).",
         info.search_wait_max_ms / 1000),
    )  # fmt: skip
    for family, name, doc, value in families:
        metric = family(name, doc)
        metric.add_metric([], value)
        yield metric


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on a port, from a thread of its own."""

    def __init__(self, metrics: ProcessMetrics, health: Health, port: int, host: str = "0.0.0.0"):
        self.metrics, self.health = metrics, health
        self.host, self.requested_port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, owner.metrics.text(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._json(200, {"status": "alive", "pid": os.getpid()})
                elif path == "/readyz":
                    reasons = owner.health.reasons()
                    body: dict[str, Any] = {"ready": not reasons, "reasons": reasons}
                    body["projections"] = {
                        name: {"applied_seq": a, "lag": p, "failing": f}
                        for name, (a, p, f) in owner.health.projections.items()
                    }
                    if owner.health.engine is not None:
                        body["engine"] = msgspec.to_builtins(owner.health.engine)
                    self._json(200 if not reasons else 503, body)
                else:
                    self._json(404, {"error": f"no {path} here: try /metrics, /healthz, /readyz"})

            def _json(self, status: int, body: dict[str, Any]) -> None:
                self._send(status, json.dumps(body).encode() + b"\n", "application/json")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds are not news

        self._server = ThreadingHTTPServer((self.host, self.requested_port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="memstream-metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics_serving", port=self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


async def refresh_health(
    health: Health,
    services: dict[str, Any],
    stop: asyncio.Event,
    refresh_s: float = 1.0,
    engine: Callable[[], EngineInfo | None] | None = None,
) -> None:
    """Keep ``health`` (and the lag gauges read from it) current until ``stop``;
    ``engine`` reads the vector engine's process (on a thread)."""
    while not stop.is_set():
        if engine is not None:
            health.engine = await asyncio.to_thread(engine)
        for name, service in services.items():
            pending = -1
            with contextlib.suppress(Exception):
                pending = await service.pending()
            if pending < 0:
                continue  # NATS did not answer: the connection check says so
            health.update(name, service.checkpoint, pending, service.unhealthy)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), refresh_s)
