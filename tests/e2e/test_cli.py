"""The memstream CLI in a subprocess, the way a user runs it."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from tests.conftest import pid_alive
from tests.e2e.conftest import Up, run_cli, start_up
from tests.waiting import wait_for_sync


def test_up_remember_status_tour(up: Up) -> None:
    """up starts the broker; remember prints its seq; status shows it in MEMORY."""
    assert up.info["embedded"] is True
    assert pid_alive(up.info["nats_pid"])
    names = ("MEMORY", "MEMORY_DLQ", "KV_MEMLOCK", "MEMORY_AUDIT")
    expected = dict.fromkeys(names, "created")
    assert expected == up.info["streams"]
    result = run_cli(
        "remember",
        "--nats-url",
        up.url,
        "--tenant",
        "acme",
        "--agent",
        "a1",
        "--domain",
        "python",
        "asyncio.gather runs awaitables concurrently",
    )
    assert 0 == result.returncode, result.stderr
    assert result.stdout.startswith("stored knowledge.stored at seq 1 ")

    def memory_stream() -> dict[str, Any]:
        status = run_cli("status", "--nats-url", up.url, "--json")
        assert 0 == status.returncode, status.stderr
        return {s["name"]: s for s in json.loads(status.stdout)["streams"]}["MEMORY"]  # type: ignore[no-any-return]

    def acked(consumer: str) -> int:
        by_projection = {c["name"].split("-")[0]: c for c in memory_stream()["consumers"]}
        return by_projection[consumer]["acked_seq"]  # type: ignore[no-any-return]

    wait_for_sync(lambda: acked("history") == acked("vectors") == 1, what="both projected it")
    memory = memory_stream()
    assert (1, 1) == (memory["messages"], memory["last_seq"])
    assert {"history": 0, "vectors": 0} == {
        c["name"].split("-")[0]: c["pending"] for c in memory["consumers"]
    }
    table = run_cli("status", "--nats-url", up.url)
    assert "MEMORY" in table.stdout and "history" in table.stdout
    sql = run_cli(
        "sql",
        "--nats-url",
        up.url,
        "--data-dir",
        up.info["data_dir"],
        "--format",
        "json",
        "SELECT tenant, agent, domain, content FROM knowledge",
    )
    assert 0 == sql.returncode, sql.stderr
    assert [
        {
            "tenant": "acme",
            "agent": "a1",
            "domain": "python",
            "content": "asyncio.gather runs awaitables concurrently",
        }
    ] == json.loads(sql.stdout)


def test_publish_any_type_with_json_output(up: Up) -> None:
    """publish fills id, ts and the generated task_id, and reports them as JSON."""
    result = run_cli(
        "publish",
        "task.created",
        "--nats-url",
        up.url,
        "-t",
        "acme",
        "-a",
        "pm",
        "--data",
        '{"title": "ship it", "assignee": "coder"}',
        "--json",
    )
    assert 0 == result.returncode, result.stderr
    ack = json.loads(result.stdout)
    assert (1, False, "task.created") == (ack["seq"], ack["duplicate"], ack["type"])
    assert ack["task_id"] and ack["id"]
    # The same event (same id) twice: stored once, the second reported as a duplicate.
    args = (
        "publish",
        "task.started",
        "--nats-url",
        up.url,
        "-t",
        "acme",
        "-a",
        "pm",
        "--data",
        json.dumps({"task_id": ack["task_id"], "id": "fixed-1"}),
    )
    again, dup = (run_cli(*args) for _ in range(2))
    assert "at seq 2 " in again.stdout
    assert "is a duplicate of the task.started at seq 2" in dup.stdout


def _one_line_error(result: object, status: int, *needles: str) -> None:
    assert status == result.returncode  # type: ignore[attr-defined]
    err = result.stderr  # type: ignore[attr-defined]
    assert 1 == len(err.strip().splitlines()), err
    assert "Traceback" not in err
    assert err.startswith("memstream: error: ")
    for needle in needles:
        assert needle in err


def test_user_mistakes_are_one_line_and_status_2(up: Up) -> None:
    """Bad tenant, bad JSON, unknown type, missing option: one stderr line, exit 2."""
    _one_line_error(
        run_cli(
            "remember",
            "--nats-url",
            up.url,
            "--tenant",
            "Acme Corp",
            "--agent",
            "a1",
            "--domain",
            "python",
            "x",
        ),
        2,
        "tenant 'Acme Corp' is not a valid tenant id",
    )
    _one_line_error(
        run_cli("publish", "task.created", "-t", "acme", "-a", "a", "--data", "{x"),
        2,
        "--data is not valid JSON",
    )
    _one_line_error(
        run_cli("publish", "task.exploded", "-t", "acme", "-a", "a"),
        2,
        "unknown event type 'task.exploded'",
    )
    _one_line_error(
        run_cli(
            "publish", "task.created", "--nats-url", up.url, "-t", "acme", "-a", "a", "--data", "{}"
        ),
        2,
        "missing required field `title`",
    )
    _one_line_error(run_cli("remember", "-t", "acme", "x"), 2, "Missing option")
    _one_line_error(
        run_cli("status", env={"MEMSTREAM_NATS_URL": "not-a-url"}),
        2,
        "MEMSTREAM_NATS_URL='not-a-url' is not valid",
    )
    status = json.loads(run_cli("status", "--nats-url", up.url, "--json").stdout)
    assert 0 == status["streams"][0]["messages"]


def test_unreachable_nats_is_one_line_and_status_1() -> None:
    """No server: the error names the URL and says how to start one."""
    _one_line_error(
        run_cli(
            "remember",
            "--nats-url",
            "nats://127.0.0.1:1",
            "-t",
            "acme",
            "-a",
            "a",
            "-d",
            "x",
            "text",
        ),
        1,
        "cannot reach NATS at nats://127.0.0.1:1",
        "memstream up",
    )


def test_up_restarts_on_existing_data(tmp_path: Path) -> None:
    """Stopped with SIGTERM and started again, up keeps the stream and changes nothing."""
    first = start_up(tmp_path)
    run_cli("remember", "--nats-url", first.url, "-t", "acme", "-a", "a", "-d", "d", "kept")
    nats_pid = first.info["nats_pid"]
    assert 0 == first.stop(signal.SIGTERM)
    assert not pid_alive(nats_pid)
    second = start_up(tmp_path)
    try:
        names = ("MEMORY", "MEMORY_DLQ", "KV_MEMLOCK", "MEMORY_AUDIT")
        streams = dict.fromkeys(names, "unchanged")
        assert streams == second.info["streams"]
        status = json.loads(run_cli("status", "--nats-url", second.url, "--json").stdout)
        assert 1 == status["streams"][0]["messages"]
    finally:
        assert 0 == second.stop(signal.SIGINT)


def test_up_refuses_a_taken_port(up: Up, tmp_path: Path) -> None:
    """A second up on the same port fails with one line naming the port."""
    port = up.url.rsplit(":", 1)[1]
    result = run_cli("up", "--nats-port", port, "--data-dir", str(tmp_path / "other"))
    _one_line_error(result, 1, f"port {port} on 127.0.0.1 is already in use")


def test_ctrl_c_to_the_whole_group_still_stops_in_order(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals every process of the group: the broker (in a group
    of its own) stays up until memstream has stopped its projections, then goes."""
    import os
    import subprocess

    from tests.e2e.conftest import MEMSTREAM

    process = subprocess.Popen(
        [*MEMSTREAM, "up", "--nats-port", "0", "--data-dir", str(tmp_path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MEMSTREAM_LOG_FORMAT": "json"},
        start_new_session=True,  # a terminal's foreground group, away from pytest's
    )
    assert process.stdout is not None
    info = json.loads(process.stdout.readline())
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert 0 == process.returncode, err
    assert "Traceback" not in err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert events.index("projection_stopped") < events.index("nats_stopped")
    assert not pid_alive(info["nats_pid"])


def test_a_group_without_its_command_shows_its_help() -> None:
    """`memstream` and `memstream dlq` print their help as help, not on one error line."""
    for args in ((), ("dlq",), ("tenant",)):
        result = run_cli(*args)
        assert 2 == result.returncode
        assert "" == result.stderr
        assert result.stdout.startswith(
            f"Usage: memstream {' '.join(args)}".rstrip() + " [OPTIONS]"
        )
        assert "Commands:" in result.stdout.splitlines()


def test_a_duplicate_publish_claims_no_new_ids(up: Up) -> None:
    """Publishing an event id twice: the second says nothing new was stored, and names
    no memory id made up for it (it was never stored)."""
    args = ("publish", "knowledge.stored", "--nats-url", up.url, "-t", "acme", "-a", "a1",
            "--data", '{"id": "e-twice", "domain": "d", "content": "once"}')  # fmt: skip
    first = run_cli(*args)
    second = run_cli(*args)
    assert 0 == first.returncode == second.returncode, second.stderr
    assert "memory_id" in first.stdout
    assert second.stdout.startswith("not stored again: event e-twice is a duplicate")
    assert "memory_id" not in second.stdout


def test_the_tenant_and_agent_come_from_the_environment_as_for_mcp(up: Up) -> None:
    """MEMSTREAM_TENANT and MEMSTREAM_AGENT stand in for -t and -a (a flag still wins);
    with neither, the one line says which option is missing."""
    env = {"MEMSTREAM_TENANT": "acme", "MEMSTREAM_AGENT": "planner"}
    stored = run_cli("remember", "--nats-url", up.url, "-d", "ops",
                     "the deploy key rotates monthly", "--json", env=env)  # fmt: skip
    assert 0 == stored.returncode, stored.stderr
    seq = str(json.loads(stored.stdout)["seq"])
    found = run_cli("search", "--nats-url", up.url, "deploy key", "--min-seq", seq, "--json",
                    env=env)  # fmt: skip
    assert [("the deploy key rotates monthly", "planner")] == [
        (h["text"], h["agent"]) for h in json.loads(found.stdout)
    ]
    elsewhere = run_cli("search", "--nats-url", up.url, "-t", "globex", "deploy key", "--json",
                        env=env)  # fmt: skip
    assert [] == json.loads(elsewhere.stdout)
    missing = run_cli("search", "--nats-url", up.url, "deploy key")
    assert 2 == missing.returncode
    assert "Missing option '--tenant'" in missing.stderr
