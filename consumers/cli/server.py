"""``memstream up`` and ``memstream serve``: run memstream."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from memstream.consumers.cli._common import (
    data_dir_option,
    json_option,
    load,
    nats_url_option,
    out,
    print_json,
    run,
)
from memstream.consumers.roles import ROLES, role_help
from memstream.schemas.errors import UsageError

if TYPE_CHECKING:
    from memstream.consumers.app import EmbedderStatus

__all__ = ["serve", "up"]

# Seconds from Ctrl-C (or SIGTERM) to the end of the process, forced if need be.
STOP_WITHIN_S = 10.0


def _embedder_json(status: EmbedderStatus | None) -> dict[str, Any] | None:
    if status is None:
        return None
    return {
        "kind": status.kind,
        "model": status.model,
        "dimensions": status.dimensions,
        "answering": status.problem is None,
        "problem": status.problem,
    }


def _print_embedder(status: EmbedderStatus | None) -> None:
    if status is None:
        return
    dims = f"{status.dimensions} dimensions" if status.dimensions else "size not known yet"
    out.print(f"  embedder  {status.kind}, {status.model} ({dims})")
    if status.problem is not None:
        out.print(
            f"            NOT ANSWERING: {status.problem}. The vectors wait for it and "
            "search answers 'unavailable'; the history is unaffected.",
        )


def metrics_option(f: Any) -> Any:
    return click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        default=None,
        help="Serve /metrics, /healthz and /readyz on this port (0: any free one) "
        "[default: $MEMSTREAM_METRICS_PORT, else not served].",
    )(f)


def partition_options(f: Any) -> Any:
    f = click.option(
        "--partitions",
        type=click.IntRange(1, 64),
        default=None,
        help="How many partitions the tenants are spread over [default: "
        "$MEMSTREAM_PARTITIONS, else 1]. Every process of a deployment must agree.",
    )(f)
    return click.option(
        "--partition",
        type=click.IntRange(0, 63),
        default=None,
        help="The partition this process serves (0 to partitions-1), from a data dir of "
        "its own; needs --nats-url.",
    )(f)


@click.command()
@click.option(
    "--data-dir",
    default=None,
    help="Where NATS and the projections keep their data "
    "[default: $MEMSTREAM_DATA_DIR, else ./.memstream].",
)
@click.option(
    "--nats-port",
    type=click.IntRange(0, 65535),
    default=4222,
    show_default=True,
    help="Port of the embedded NATS (0: any free port).",
)
@click.option("--nats-url", default=None, help="Use this NATS instead of starting one.")
@click.option(
    "--auth",
    is_flag=True,
    help="Admit only memstream's service user and the tenants' users "
    "(memstream tenant add), each confined to its own subjects.",
)
@click.option(
    "--nats-monitor-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Turn on the embedded nats-server's monitoring endpoints (/varz, /jsz, ...) on "
    "this port of 127.0.0.1.",
)
@partition_options
@metrics_option
@json_option
def up(
    data_dir: str | None,
    nats_port: int,
    nats_url: str | None,
    auth: bool,
    nats_monitor_port: int | None,
    partition: int | None,
    partitions: int | None,
    metrics_port: int | None,
    as_json: bool,
) -> None:
    """Run memstream on this machine: embedded NATS with JetStream, both projections
    (history in DuckDB, vectors in Qdrant) and the query worker, in one process."""
    from memstream.consumers.app import UpInfo, run_up

    if nats_monitor_port is not None and nats_url is not None:
        raise UsageError(
            "--nats-monitor-port turns on the embedded NATS's monitoring; with --nats-url, "
            "turn it on in that server's configuration (http_port)"
        )
    settings = load(
        service=True,
        data_dir=data_dir,
        nats_url=nats_url,
        partitions=partitions,
        metrics_port=metrics_port,
    )

    def ready(info: UpInfo) -> None:
        if as_json:
            print_json(
                {
                    "partition": info.partition,
                    "partitions": info.partitions,
                    "metrics_url": info.metrics_url,
                    "nats_monitor_url": info.nats_monitor_url,
                    "nats_url": info.nats_url,
                    "data_dir": str(info.data_dir),
                    "embedded": info.embedded,
                    "nats_pid": info.nats_pid,
                    "auth": info.auth,
                    "streams": info.provisioned.streams,
                    "consumers": info.provisioned.consumers,
                    "projections": info.projections,
                    "embedder": _embedder_json(info.embedder),
                }
            )
            return
        out.print("memstream is up")
        out.print(f"  NATS      {info.nats_url}" + ("" if info.embedded else " (external)"))
        out.print(f"  data dir  {info.data_dir}")
        if info.metrics_url:
            out.print(f"  metrics   {info.metrics_url}/metrics, /healthz, /readyz")
        if info.nats_monitor_url:
            out.print(f"  NATS monitoring {info.nats_monitor_url}/varz, /jsz, /connz")
        if info.partitions > 1:
            out.print(f"  partition {info.partition} of {info.partitions}")
        for name, checkpoint in info.projections.items():
            out.print(f"  {name:<9} projecting (applied up to seq {checkpoint})")
        _print_embedder(info.embedder)
        streams = ", ".join(f"{k} ({v})" for k, v in info.provisioned.streams.items())
        out.print(f"  streams   {streams}")
        if info.auth:
            out.print("  auth      on: only memstream and the tenants' users may connect")
            out.print(
                "Give each tenant its credentials with 'memstream tenant add TENANT'; agents "
                f"connect with MEMSTREAM_NATS_URL={info.nats_url} MEMSTREAM_NATS_USER=TENANT "
                "MEMSTREAM_NATS_PASSWORD=... Ctrl-C stops (twice: at once)."
            )
        else:
            out.print(
                f"Connect agents with MEMSTREAM_NATS_URL={info.nats_url}. "
                "Ctrl-C stops (twice: at once)."
            )

    run(
        run_up(
            settings,
            nats_port=nats_port,
            external_nats=nats_url is not None,
            on_ready=ready,
            auth=auth,
            stop_within=STOP_WITHIN_S,
            partition=partition,
            nats_monitor_port=nats_monitor_port,
        )
    )


@click.command()
@click.option(
    "--role",
    type=click.Choice(ROLES),
    required=True,
    help=f"What this process runs. {role_help()}",
)
@data_dir_option
@nats_url_option
@partition_options
@metrics_option
@json_option
def serve(
    role: str,
    data_dir: str | None,
    nats_url: str | None,
    partition: int | None,
    partitions: int | None,
    metrics_port: int | None,
    as_json: bool,
) -> None:
    """Run one role against an external NATS, for scale-out. Each role can run in several
    processes; a role's processes share its queries in a queue group."""
    from memstream.consumers.app import UpInfo, run_up

    settings = load(
        service=True,
        data_dir=data_dir,
        nats_url=nats_url,
        partitions=partitions,
        metrics_port=metrics_port,
    )

    def ready(info: UpInfo) -> None:
        if as_json:
            print_json(
                {
                    "role": role,
                    "metrics_url": info.metrics_url,
                    "partition": info.partition,
                    "partitions": info.partitions,
                    "nats_url": info.nats_url,
                    "data_dir": str(info.data_dir),
                    "projections": info.projections,
                    "embedder": _embedder_json(info.embedder),
                }
            )
            return
        where = f", partition {info.partition} of {info.partitions}" if info.partitions > 1 else ""
        out.print(f"memstream serve: {role} role up on {info.nats_url}{where}")
        if info.metrics_url:
            out.print(f"  metrics   {info.metrics_url}/metrics, /healthz, /readyz")
        for name, checkpoint in info.projections.items():
            out.print(f"  {name:<9} projecting (applied up to seq {checkpoint})")
        _print_embedder(info.embedder)
        out.print("Ctrl-C stops.")

    run(
        run_up(
            settings,
            external_nats=True,
            roles=frozenset({role}),
            on_ready=ready,
            stop_within=STOP_WITHIN_S,
            partition=partition,
        )
    )
