"""``memstream mcp``: memstream's memory as MCP tools, over stdio or streamable HTTP."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from memstream.consumers.cli._common import nats_url_option, run
from memstream.schemas.errors import UsageError
from memstream.schemas.ids import validate_tenant

if TYPE_CHECKING:
    from memstream.consumers.settings import Settings

__all__ = ["mcp"]


@click.command()
@click.option(
    "-t",
    "--tenant",
    default=None,
    help="The tenant whose memory the tools read and write [default: $MEMSTREAM_TENANT].",
)
@click.option(
    "-a",
    "--agent",
    default=None,
    help="The agent the tools act as [default: $MEMSTREAM_AGENT, else mcp].",
)
@nats_url_option
@click.option(
    "--http",
    "http_port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve streamable HTTP on this port (at /mcp) instead of stdio.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address --http listens on.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="With --http: serve /metrics, /healthz and /readyz on this port.",
)
def mcp(
    tenant: str | None,
    agent: str | None,
    nats_url: str | None,
    http_port: int | None,
    host: str,
    metrics_port: int | None,
) -> None:
    """Run an MCP server (Model Context Protocol) whose tools remember, search, recall,
    get, list, revise, forget and link one tenant's memories, and set and get its
    context. Over stdio by default, for desktop agents; nothing but the protocol is
    written to stdout. Credentials: MEMSTREAM_NATS_USER/MEMSTREAM_NATS_PASSWORD (the
    tenant's, with up --auth) or MEMSTREAM_NATS_CREDS."""
    from memstream.consumers.log import configure_logging
    from memstream.consumers.settings import load_settings

    tenant = tenant or os.environ.get("MEMSTREAM_TENANT")
    if not tenant:
        raise UsageError("say whose memory this is: --tenant, or MEMSTREAM_TENANT")
    validate_tenant(tenant)
    agent = agent or os.environ.get("MEMSTREAM_AGENT") or "mcp"
    if metrics_port is not None and http_port is None:
        raise UsageError("--metrics-port goes with --http (over stdio the client owns the process)")
    settings = load_settings(nats_url=nats_url, metrics_port=metrics_port)
    configure_logging(
        settings.log_format,
        settings.log_level if "MEMSTREAM_LOG_LEVEL" in os.environ else "warning",
    )
    run(_serve(settings, tenant, agent, http_port, host))


async def _serve(
    settings: Settings, tenant: str, agent: str, http_port: int | None, host: str
) -> None:
    from memstream.consumers.mcp_server import build_server
    from memstream.consumers.metrics import Health, MetricsServer, ProcessMetrics
    from memstream.producers.client import MemoryClient

    client = await MemoryClient.connect(
        settings.nats_url, tenant=tenant, agent=agent, **settings.nats_auth
    )
    metrics_server = None
    try:
        metrics = ProcessMetrics()
        server = build_server(client, metrics=metrics)
        if http_port is None:
            await server.run_stdio_async()
            return
        if settings.metrics_port is not None:
            health = Health(nats_connected=lambda: bool(client.nc.is_connected))
            metrics_server = MetricsServer(metrics, health, settings.metrics_port)
            metrics_server.start()
        import uvicorn

        app = server.streamable_http_app(host=host)
        # Uvicorn's own logging setup writes to stdout: leave logging to memstream's
        # (stderr), and leave out a line per request.
        config = uvicorn.Config(app, host=host, port=http_port, log_config=None, access_log=False)
        await uvicorn.Server(config).serve()
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        await client.close()
