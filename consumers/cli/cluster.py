"""``memstream cluster up | status``: a cluster on this machine, to see scale-out and
failover before running the same roles on real machines."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

import click

from memstream.consumers.cli._common import json_option, load, out, print_json, run
from memstream.schemas.errors import UsageError

__all__ = ["cluster"]

DEFAULT_DIR = "./.memstream-cluster"
# After a node or a worker dies, it is started again this much later: long enough to
# watch the cluster carry on without it.
NODE_BACK_S, WORKER_BACK_S = 5.0, 2.0


def dir_option(f: Any) -> Any:
    return click.option(
        "--dir",
        "root",
        default=DEFAULT_DIR,
        show_default=True,
        help="Where the cluster keeps its nodes' and workers' data.",
    )(f)


@click.group()
def cluster() -> None:
    """A memstream cluster on this machine: NATS nodes and partitioned workers."""


@cluster.command(name="up")
@dir_option
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--partitions", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option(
    "--replicas",
    type=click.IntRange(1, 9),
    default=2,
    show_default=True,
    help="Workers per partition, each a full copy of it.",
)
@click.option(
    "--base-port",
    type=click.IntRange(1024, 65000),
    default=4250,
    show_default=True,
    help="Clients connect to base-port and up; the nodes route on base-port+100 and up.",
)
def cluster_up(root: str, nodes: int, partitions: int, replicas: int, base_port: int) -> None:
    """Run NODES nats-server processes as one JetStream cluster on loopback, and
    REPLICAS workers for each of PARTITIONS partitions. A node or worker that dies is
    started again after a few seconds. Ctrl-C stops everything."""
    from memstream.consumers.cluster import LocalCluster, pid_alive, read_layout
    from memstream.consumers.nats_server import port_is_taken
    from memstream.schemas.errors import ConfigError

    load(service=True)  # a bad MEMSTREAM_* setting is said now, not by every worker
    where = Path(root)
    try:
        before = read_layout(where)
    except ConfigError:
        before = None
    if before is not None and pid_alive(before.supervisor_pid):
        raise UsageError(
            f"a memstream cluster already runs under {where} (pid {before.supervisor_pid}): "
            "stop it first, or give this one another --dir"
        )
    taken = [
        p
        for p in (
            *range(base_port, base_port + nodes),
            *range(base_port + 100, base_port + 100 + nodes),
        )
        if port_is_taken("127.0.0.1", p)
    ]
    if taken:
        raise UsageError(f"port {taken[0]} on 127.0.0.1 is in use: choose another --base-port")
    local = LocalCluster(
        where, nodes=nodes, partitions=partitions, replicas=replicas, base_port=base_port
    )
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    out.print(f"starting {nodes} NATS nodes and {partitions * replicas} workers under {where} ...")
    local.layout.supervisor_pid = os.getpid()
    try:
        local.start()
        _print_up(local)
        down_since: dict[str, float] = {}
        while not stopping:
            time.sleep(0.5)
            now = time.monotonic()
            for node in local.layout.nodes:
                if local.node_alive(node.name):
                    continue
                if node.name not in down_since:
                    down_since[node.name] = now
                    out.print(f"node {node.name} is down; starting it again in {NODE_BACK_S:.0f} s")
                elif now - down_since[node.name] >= NODE_BACK_S and not stopping:
                    local.servers[node.name].process = None
                    local.start_node(node.name)
                    del down_since[node.name]
                    out.print(
                        f"node {node.name} is back (pid {node.pid}); it catches up from its peers"
                    )
            for w in local.layout.workers:
                key = (w.partition, w.replica)
                proc = local.processes.get(key)
                if proc is not None and proc.poll() is None:
                    continue
                name = f"worker p{w.partition}r{w.replica}"
                if name not in down_since:
                    down_since[name] = now
                    out.print(f"{name} is down; starting it again in {WORKER_BACK_S:.0f} s")
                elif now - down_since[name] >= WORKER_BACK_S and not stopping:
                    local.start_worker(*key)
                    del down_since[name]
                    out.print(f"{name} is back (pid {w.pid}); it catches up from its checkpoint")
    finally:
        out.print("stopping the workers, then the nodes ...")
        local.stop()
        out.print("stopped")


def _print_up(local: Any) -> None:
    layout = local.layout
    out.print(
        f"memstream cluster is up: {len(layout.nodes)} nodes, {layout.partitions} partitions "
        f"x {layout.replicas} replicas"
    )
    for n in layout.nodes:
        out.print(f"  node {n.name}   nats://127.0.0.1:{n.port}   pid {n.pid}")
    for w in layout.workers:
        out.print(f"  partition {w.partition} replica {w.replica}   pid {w.pid}   {w.data_dir}")
    out.print(f"Agents connect with MEMSTREAM_NATS_URL={layout.seeds}")
    out.print("Watch a failover, in another terminal:")
    out.print(f"  memstream cluster status --dir {layout.root}     # which node leads the stream")
    out.print("  kill -9 <pid of that node>                       # a machine dies")
    out.print(
        f"  memstream cluster status --dir {layout.root}     # a new leader; queries go on; "
        f"the node is back in {NODE_BACK_S:.0f} s"
    )
    out.print("Ctrl-C stops everything.")


@cluster.command(name="status")
@dir_option
@json_option
def cluster_status_command(root: str, as_json: bool) -> None:
    """The nodes, the stream's leader and replicas, and every partition's workers with
    what they have applied and what they have not yet."""
    from memstream.consumers.cluster import cluster_status, read_layout

    settings = load()
    layout = read_layout(Path(root))
    status = run(cluster_status(layout, dict(settings.nats_auth)))
    if as_json:
        print_json(asdict(status))
        return
    out.print(f"nodes ({status.stream_leader or 'no leader'} leads the stream MEMORY):")
    for n in status.nodes:
        state = "up" if n.alive else "DOWN"
        role = ""
        if n.name == status.stream_leader:
            role = "stream leader"
        elif n.name in status.stream_replicas:
            role = "replica, " + ("current" if status.stream_replicas[n.name] else "catching up")
        leads = sorted(c for c, node in status.consumer_leaders.items() if node == n.name)
        extra = f"; leads {len(leads)} consumers" if leads else ""
        out.print(f"  {n.name}  {n.url}  pid {n.pid}  {state}  {role}{extra}")
    out.print(
        f"stream MEMORY: last seq {status.last_seq}; "
        f"{status.partitions} partitions x {status.replicas} replicas:"
    )
    for w in status.workers:
        if not w.answering:
            state = "not answering" + ("" if w.alive else " (process down)")
            out.print(f"  partition {w.partition} replica {w.replica}  pid {w.pid}  {state}")
            continue
        lag = ", ".join(f"{k} {w.pending.get(k, '?')} behind" for k in sorted(w.applied))
        out.print(f"  partition {w.partition} replica {w.replica}  pid {w.pid}  answering; {lag}")
