"""`memstream cluster up` and `status` as a user runs them: a failover watched."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from memstream.consumers.cluster import pid_alive
from tests.e2e.conftest import MEMSTREAM, run_cli
from tests.waiting import wait_for_sync


def free_base_port() -> int:
    """A base port whose 3 client and 3 route ports are all free."""
    for base in range(21_000 + os.getpid() % 500 * 10, 40_000, 7):
        ports = [*range(base, base + 3), *range(base + 100, base + 103)]
        try:
            socks = []
            for p in ports:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise AssertionError("no free ports")


def status(root: Path) -> dict[str, Any]:
    done = run_cli("cluster", "status", "--dir", str(root), "--json")
    assert 0 == done.returncode, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def test_cluster_up_heals_a_killed_stream_leader(tmp_path: Path) -> None:
    root = tmp_path / "cluster"
    env = {**os.environ, "MEMSTREAM_EMBEDDER": "hash"}
    env.pop("MEMSTREAM_NATS_URL", None)
    base = free_base_port()
    process = subprocess.Popen(
        [*MEMSTREAM, "cluster", "up", "--dir", str(root), "--base-port", str(base)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    pids: set[int] = set()
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        shown = "".join(lines)
        assert "memstream cluster is up: 3 nodes, 2 partitions x 2 replicas" in shown, shown
        assert f"MEMSTREAM_NATS_URL=nats://127.0.0.1:{base}," in shown

        first = status(root)
        pids |= {n["pid"] for n in first["nodes"]} | {w["pid"] for w in first["workers"]}
        assert all(n["alive"] for n in first["nodes"])
        assert all(w["answering"] for w in first["workers"])
        leader = first["stream_leader"]
        (node,) = [n for n in first["nodes"] if n["name"] == leader]

        os.kill(node["pid"], signal.SIGKILL)
        wait_for_sync(
            lambda: status(root)["stream_leader"] not in (None, leader), 60, "a new leader"
        )
        # the workers that were connected to it answer again from another node
        wait_for_sync(
            lambda: all(w["answering"] for w in status(root)["workers"]), 60, "every worker"
        )

        def back() -> bool:
            again = {n["name"]: n for n in status(root)["nodes"]}[leader]
            pids.add(again["pid"])
            return bool(again["alive"]) and again["pid"] != node["pid"]

        wait_for_sync(back, 60, "the killed node to be started again")
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert 0 == process.returncode, err
    assert "stopped" in out
    assert not [p for p in pids if pid_alive(p)], "a process of the cluster outlived it"
    done = run_cli("cluster", "status", "--dir", str(root))
    assert 2 == done.returncode and "no memstream cluster under" in done.stderr
