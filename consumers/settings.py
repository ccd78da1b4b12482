"""Settings from ``MEMSTREAM_*`` environment variables, validated once at start."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from memstream.producers.connection import (
    CREDS_VAR,
    DEFAULT_URL,
    PASSWORD_VAR,
    URL_VAR,
    USER_VAR,
    NatsAuth,
)
from memstream.projections.priority import (
    PRIORITY_VAR,
    SEARCH_PRIORITY_VAR,
    IngestPriority,
    SearchPriority,
)
from memstream.projections.quotas import MB, Limits
from memstream.schemas.errors import ConfigError
from memstream.schemas.events import DEFAULT_MAX_EVENT_BYTES
from memstream.schemas.tenancy import TenantLimits

__all__ = ["ENV_VARS", "Settings", "load_settings"]

_ONE_URL = r"[a-z][a-z0-9+.-]*://[^\s,]+"
Url = Annotated[str, msgspec.Meta(pattern=rf"\A{_ONE_URL}(\s*,\s*{_ONE_URL})*\Z")]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything configurable; each field's variable is in ``ENV_VARS``."""

    # One URL, or a comma-separated list of seeds (the servers of a cluster).
    nats_url: Url = DEFAULT_URL
    data_dir: str = "./.memstream"
    qdrant_url: str = ""
    qdrant_api_key: str | None = None
    # Where the embedded engine (Qdrant Edge) runs: a process of its own, so searches do
    # not wait behind the events being applied; or inline, in the projection's process.
    vector_engine: Literal["process", "inline"] = "process"
    # The CPU priority of the threads that apply, embed and index events, below the
    # searches' (projections.priority): nice 10, or the idle class.
    ingest_priority: IngestPriority = "low"
    # The searcher's and the engine's processes at nice 10 below memstream's (where
    # allowed), above the other programs of the machine too.
    search_priority: SearchPriority = "usual"
    embedder: Literal["minilm", "hash", "openai", "sentence-transformers"] | None = None
    embedding_model: str | None = None
    embedding_dim: Annotated[int, msgspec.Meta(ge=8, le=65536)] | None = None
    embedding_threads: Annotated[int, msgspec.Meta(ge=1, le=256)] | None = None
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    log_format: Literal["console", "json"] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    nats_creds: str | None = None
    nats_user: str | None = None
    nats_password: str | None = None
    max_event_bytes: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = (
        DEFAULT_MAX_EVENT_BYTES
    )
    stream_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    # How many partitions the tenants are spread over (schemas.partitions).
    partitions: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # /metrics, /healthz and /readyz on this port (0: any free one); None: not served.
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 2000
    batch_wait_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 200
    # The least time between two batches of a steady flow of events (see BatchPuller):
    # each batch has a fixed cost (its transactions, the checkpoint), which at 1,000
    # events/s in 20 publishes a second took 0.88 of a core for both projections; 0.54
    # at 100 ms. A lone event after a quiet spell is not held back.
    batch_spacing_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 100
    # A tenant's query limits unless it has its own (memstream tenant limits); 0: none.
    queries_per_second: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    user_queries_per_second: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    queries_per_hour: Annotated[int, msgspec.Meta(ge=0)] = 0
    # A tenant's hard quotas unless it has its own (memstream tenant quota); 0: none.
    quota_memories: Annotated[int, msgspec.Meta(ge=0)] = 0
    quota_storage_mb: Annotated[float, msgspec.Meta(ge=0)] = 0.0

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def nats_auth(self) -> NatsAuth:
        """Credentials as keyword arguments for ``connect_nats`` and ``MemoryClient``."""
        return {"user": self.nats_user, "password": self.nats_password, "creds": self.nats_creds}

    @property
    def tenant_limits(self) -> TenantLimits:
        """The query limits of a tenant that has none of its own."""
        return TenantLimits(
            queries_per_second=self.queries_per_second,
            user_queries_per_second=self.user_queries_per_second,
            queries_per_hour=self.queries_per_hour,
        )

    @property
    def quota_defaults(self) -> Limits:
        """The hard quotas of a tenant that has set none of its own."""
        return Limits(self.quota_memories, round(self.quota_storage_mb * MB))

    @property
    def effective_embedder(self) -> str:
        """What MEMSTREAM_EMBEDDER chose, else ``minilm`` (all-MiniLM-L6-v2 in this
        process, offline). An OpenAI key alone does not choose ``openai``: the hosts of
        agents hold one for their models, and embedding is no reason to pay for calls."""
        return self.embedder or "minilm"


ENV_VARS: dict[str, str] = {
    "nats_url": URL_VAR,
    "data_dir": "MEMSTREAM_DATA_DIR",
    "qdrant_url": "MEMSTREAM_QDRANT_URL",
    "qdrant_api_key": "MEMSTREAM_QDRANT_API_KEY",
    "vector_engine": "MEMSTREAM_VECTOR_ENGINE",
    "embedder": "MEMSTREAM_EMBEDDER",
    "embedding_model": "MEMSTREAM_EMBEDDING_MODEL",
    "embedding_dim": "MEMSTREAM_EMBEDDING_DIM",
    "embedding_threads": "MEMSTREAM_EMBEDDING_THREADS",
    "openai_api_key": "OPENAI_API_KEY",
    "openai_base_url": "OPENAI_BASE_URL",
    "log_format": "MEMSTREAM_LOG_FORMAT",
    "log_level": "MEMSTREAM_LOG_LEVEL",
    "nats_creds": CREDS_VAR,
    "nats_user": USER_VAR,
    "nats_password": PASSWORD_VAR,
    "max_event_bytes": "MEMSTREAM_MAX_EVENT_BYTES",
    "stream_replicas": "MEMSTREAM_STREAM_REPLICAS",
    "partitions": "MEMSTREAM_PARTITIONS",
    "metrics_port": "MEMSTREAM_METRICS_PORT",
    "batch_size": "MEMSTREAM_BATCH_SIZE",
    "batch_wait_ms": "MEMSTREAM_BATCH_WAIT_MS",
    "batch_spacing_ms": "MEMSTREAM_BATCH_SPACING_MS",
    "queries_per_second": "MEMSTREAM_QUERIES_PER_SECOND",
    "user_queries_per_second": "MEMSTREAM_USER_QUERIES_PER_SECOND",
    "queries_per_hour": "MEMSTREAM_QUERIES_PER_HOUR",
    "quota_memories": "MEMSTREAM_QUOTA_MEMORIES",
    "quota_storage_mb": "MEMSTREAM_QUOTA_STORAGE_MB",
    "ingest_priority": PRIORITY_VAR,
    "search_priority": SEARCH_PRIORITY_VAR,
}


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the environment, apply overrides (CLI flags; None means not given), validate.

    A bad value raises ConfigError naming the variable (or the flag's field) and the rule.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source: dict[str, str] = {}
    for field, var in ENV_VARS.items():
        value = env.get(var, "")
        if value != "":
            # Names of choices are taken in any case (MEMSTREAM_LOG_LEVEL=INFO).
            raw[field] = value.lower() if field in _CHOICES else value
            source[field] = var
    for field, value in overrides.items():
        if field not in ENV_VARS:
            raise TypeError(f"unknown setting {field!r}")
        if value is not None:
            raw[field] = value
            source[field] = "--" + field.replace("_", "-")
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as err:
        raise ConfigError(_explain(err, raw, source)) from None


_CHOICES = frozenset(
    {"embedder", "log_format", "log_level", "vector_engine", "ingest_priority", "search_priority"}
)

# What a person should write instead, where msgspec's own words are too terse.
_HINTS = {
    "nats_url": f"expected a URL such as {DEFAULT_URL}, or a comma-separated list of them",
    "embedder": "use one of minilm, hash, openai, sentence-transformers",
    "log_format": "use console or json",
    "vector_engine": "use process or inline",
    "ingest_priority": "use low or idle",
    "search_priority": "use usual or high",
    "log_level": "use one of debug, info, warning, error",
    "embedding_dim": "expected a whole number from 8 to 65536",
    "embedding_threads": "expected a whole number of threads from 1 to 256",
    "max_event_bytes": "expected a whole number of bytes from 1024 to 67108864",
    "stream_replicas": "expected 1 to 5",
    "partitions": "expected a whole number of partitions from 1 to 64",
    "metrics_port": "expected a port number from 0 to 65535 (0: any free port)",
    "batch_size": "expected a whole number of events from 1 to 100000",
    "batch_wait_ms": "expected a whole number of milliseconds from 1 to 60000",
    "batch_spacing_ms": "expected a whole number of milliseconds from 0 to 10000",
    "queries_per_second": "expected a number of queries a second, 0 or more (0: no limit)",
    "user_queries_per_second": "expected a number of queries a second, 0 or more (0: no limit)",
    "queries_per_hour": "expected a whole number of queries an hour, 0 or more (0: no limit)",
    "quota_memories": "expected a whole number of memories, 0 or more (0: no limit)",
    "quota_storage_mb": "expected a number of megabytes, 0 or more (0: no limit)",
}


def _explain(err: msgspec.ValidationError, raw: dict[str, Any], source: dict[str, str]) -> str:
    text = str(err)
    match = re.search(r"at `\$\.(\w+)`", text)
    if not match:
        return f"invalid settings: {text}"
    field = match.group(1)
    where = source.get(field, ENV_VARS.get(field, field))
    rule = _HINTS.get(field) or text[: match.start()].rstrip(" -")
    shown = raw.get(field)
    if field in ("openai_api_key", "nats_password", "qdrant_api_key"):
        shown = "***"
    return f"{where}={shown!r} is not valid: {rule}"
