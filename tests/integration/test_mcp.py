"""`memstream mcp` through a real MCP client (the `mcp` package's session over stdio)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from memstream.consumers.mcp_server import TOOLS
from memstream.consumers.nats_server import NatsServer
from tests.integration.test_query_worker import running
from tests.waiting import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def server_params(url: str, tenant: str = "acme") -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTREAM_")}
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "memstream", "mcp", "--tenant", tenant, "--agent", "claude", "--nats-url", url],
        env=env,
    )


@contextlib.asynccontextmanager
async def connected(url: str, tenant: str = "acme") -> AsyncIterator[ClientSession]:
    """A real MCP client session with `memstream mcp` started over stdio. (Entered and
    left in the test's own task, as the SDK's task groups require.)"""
    async with (
        stdio_client(server_params(url, tenant)) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        yield client


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    found: dict[str, Any] = result.structured_content
    return found


async def error_of(session: ClientSession, tool: str, **arguments: Any) -> str:
    result = await session.call_tool(tool, arguments)
    assert result.is_error
    return " ".join(getattr(c, "text", "") for c in result.content)


async def test_every_tool_through_a_real_client(nats_server: NatsServer, tmp_path: Path) -> None:
    async with running(nats_server, tmp_path / "data"), connected(nats_server.url) as session:
        await every_tool(session)


async def every_tool(session: ClientSession) -> None:
    listed = await session.list_tools()
    tools = {t.name: t for t in listed.tools}
    assert set(TOOLS) == set(tools)
    for tool in tools.values():
        assert tool.description and len(tool.description) > 20
        assert tool.input_schema["type"] == "object"
    assert "query" in tools["search_memory"].input_schema["required"]

    # remember, then search finds it
    stored = await call(
        session,
        "remember",
        content="retry the flaky upload with exponential backoff",
        domain="ops",
        tags=["uploads"],
    )
    hits = (await call(session, "search_memory", query="flaky upload retries"))["hits"]
    assert stored["memory_id"] == hits[0]["memory_id"]
    solved = await call(
        session, "remember", problem="tests hang on CI", solution="add a timeout to each test"
    )
    assert "solutions" == solved["kind"]

    # revise, then get shows the revision; a stale revision or a made-up id says so
    assert 1 == stored["revision"]
    revised = await call(
        session, "revise_memory", memory_id=stored["memory_id"], content="use jitter too",
        expected_revision=1,
    )  # fmt: skip
    assert 2 == revised["revision"]
    memory = await call(session, "get_memory", memory_id=stored["memory_id"])
    assert ("use jitter too", 2) == (memory["content"], memory["revision"])
    message = await error_of(
        session, "revise_memory", memory_id=stored["memory_id"], content="stale",
        expected_revision=1,
    )  # fmt: skip
    assert "is at revision 2" in message and "get" in message
    message = await error_of(session, "revise_memory", memory_id="made-up", content="x")
    assert "no memory 'made-up' in tenant acme" in message and "search or list first" in message

    # link, then related returns it
    await call(
        session,
        "link_memories",
        from_id=solved["memory_id"],
        to_id=stored["memory_id"],
        relation="explains",
    )
    related = await call(session, "related_memories", memory_id=stored["memory_id"])
    assert {solved["memory_id"], stored["memory_id"]} == {n["memory_id"] for n in related["nodes"]}
    assert [("explains", solved["memory_id"])] == [
        (e["relation"], e["from_id"]) for e in related["edges"]
    ]

    listed_memories = await call(session, "list_memories", kinds=["knowledge"])
    assert [stored["memory_id"]] == [m["memory_id"] for m in listed_memories["memories"]]
    bundle = await call(session, "recall", query="use jitter")
    assert "jitter" in bundle["text"]

    # set, then get context
    await call(session, "set_context", key="plan", data={"step": 3})
    assert {"step": 3} == (await call(session, "get_context", key="plan"))["data"]

    # forget, then get is not found
    await call(session, "forget_memory", memory_id=stored["memory_id"])
    message = await error_of(session, "get_memory", memory_id=stored["memory_id"])
    assert "not_found" in message or "no memory" in message

    # a bad argument is a tool error with a clear message
    message = await error_of(session, "search_memory", query="x", filter={"colour": "red"})
    assert "colour" in message
    message = await error_of(session, "remember", problem="only half")
    assert "needs both problem and solution" in message
    message = await error_of(session, "remember", content="knowledge with no subject")
    assert "needs a domain" in message
    # the limits are the request decoder's, as in the SDK and the CLI
    assert 1000 == tools["search_memory"].input_schema["properties"]["top_k"]["maximum"]
    assert 1000 == tools["list_memories"].input_schema["properties"]["limit"]["maximum"]
    message = await error_of(session, "search_memory", query="x", top_k=1001)
    assert "top_k" in message


def test_stdout_carries_only_the_protocol(nats_server: NatsServer) -> None:
    """Every line the server writes to stdout is a JSON-RPC message, through a tool
    error (nothing serves the queries here) and an unknown tool; its logs go to stderr."""
    requests = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "get_memory", "arguments": {"memory_id": "missing"}},
        },
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "nope"}},
    ]
    params = server_params(nats_server.url)
    process = subprocess.Popen(
        [params.command, *params.args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**(params.env or {}), "MEMSTREAM_LOG_LEVEL": "info"},
    )
    # Killed by its pid if it has not answered in time, so the reads below end.
    watchdog = threading.Timer(60, process.kill)
    watchdog.start()
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("".join(json.dumps(r) + "\n" for r in requests))
        process.stdin.flush()
        replies = []
        while {1, 2, 3, 4} - {r.get("id") for r in replies}:
            line = process.stdout.readline()
            assert line, "the server closed stdout before answering"
            replies.append(json.loads(line))  # anything but JSON fails here
        process.stdin.close()
        rest = process.stdout.read()
        assert "" == rest.strip()
        assert 0 == process.wait(30)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert all(r["jsonrpc"] == "2.0" for r in replies)
    (missing,) = [r for r in replies if r.get("id") == 3]
    assert missing["result"]["isError"] is True
    # with no memstream answering, the outage is the tool's error, in the contract's words
    assert "unavailable: no query worker serves memq.acme.get" in json.dumps(
        missing["result"]["content"]
    )


def test_a_missing_tenant_is_one_line(nats_server: NatsServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTREAM_")}
    done = subprocess.run(
        [sys.executable, "-m", "memstream", "mcp", "--nats-url", nats_server.url],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert 2 == done.returncode
    assert "memstream: error: say whose memory this is" in done.stderr
    assert "" == done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_http(url: str, port: int, metrics: int) -> subprocess.Popen[bytes]:
    params = server_params(url)
    return subprocess.Popen(
        [params.command, *params.args, "--http", str(port), "--metrics-port", str(metrics)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=params.env,
    )


def get_json(url: str) -> tuple[int, Any]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.status, json.load(reply)


async def test_streamable_http_with_its_health(nats_server: NatsServer, tmp_path: Path) -> None:
    """`mcp --http`: a real client over streamable HTTP, and /readyz beside it."""
    port, metrics = free_port(), free_port()
    process = spawn_http(nats_server.url, port, metrics)
    try:

        def up() -> bool:
            assert process.poll() is None, process.communicate()[1]
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        await wait_for(up, 30, "the MCP server to listen")
        async with running(nats_server, tmp_path / "data"):
            url = f"http://127.0.0.1:{port}/mcp"
            async with (
                streamable_http_client(url) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                assert set(TOOLS) == {t.name for t in (await session.list_tools()).tools}
                stored = await call(session, "remember", content="over http", domain="web")
                hits = (await call(session, "search_memory", query="over http"))["hits"]
                assert stored["memory_id"] == hits[0]["memory_id"]
            status, body = await asyncio.to_thread(get_json, f"http://127.0.0.1:{metrics}/readyz")
            assert (200, True) == (status, body["ready"])
    finally:
        process.terminate()
        process.wait(15)
    assert process.stdout is not None
    assert b"" == process.stdout.read()  # over HTTP too, nothing on stdout


async def test_a_tenant_with_no_events_gets_a_hint(nats_server: NatsServer, tmp_path: Path) -> None:
    """An agent configured with a mistyped tenant is told so by the tools it calls."""
    async with (
        running(nats_server, tmp_path / "data"),
        connected(nats_server.url, "acme2") as session,
    ):
        found = await call(session, "search_memory", query="gateway")
        assert [] == found["hits"]
        assert "tenant 'acme2' has no events yet" in found["hint"]
        message = await error_of(session, "get_memory", memory_id="m1")
        assert "tenant 'acme2' has no events yet" in message
