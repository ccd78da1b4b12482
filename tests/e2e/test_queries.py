"""The query commands, the demo and the serve roles, run as a user runs them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import nats
import nats.errors

from memstream.consumers.nats_server import NatsServer
from tests.conftest import pid_alive
from tests.e2e.conftest import Up, run_cli, spawn_ready


def cli_json(*args: str) -> Any:
    result = run_cli(*args, "--json")
    assert 0 == result.returncode, result.stderr
    return json.loads(result.stdout)


def publish(url: str, type_: str, data: dict[str, Any], agent: str = "coder") -> int:
    ack = cli_json(
        "publish", type_, "--nats-url", url, "-t", "acme", "-a", agent, "--data", json.dumps(data)
    )
    return int(ack["seq"])


def test_every_query_command(up: Up) -> None:
    """Each query command answers from what was just published, in JSON and as a table."""
    url = up.url
    q = ("--nats-url", url, "--tenant", "acme")
    content = "retry 503 responses with jittered backoff"
    publish(url, "knowledge.stored", {"memory_id": "k1", "domain": "http", "content": content})
    publish(url, "task.created", {"task_id": "t1", "title": "add retries"}, agent="planner")
    publish(url, "task.started", {"task_id": "t1"})
    publish(url, "tool.used", {"tool": "pytest", "ok": True, "duration_ms": 900, "task_id": "t1"})
    publish(url, "task.completed", {"task_id": "t1", "output": {"pr": 7}})
    publish(url, "context.set", {"key": "sprint", "data": {"goal": "reliability"}})
    publish(url, "conversation.turn", {"session_id": "s1", "role": "user", "content": "hi"})
    last = publish(url, "conversation.turn", {"session_id": "s1", "role": "assistant",
                                              "content": "what shall we fix?"})  # fmt: skip
    rw = ("--min-seq", str(last))

    hits = cli_json("search", *q, *rw, "retry", "backoff")
    assert ["k1"] == [h["memory_id"] for h in hits[:1]]
    page = cli_json("history", *q, *rw, "--limit", "3")
    assert ([1, 2, 3], 3) == ([e["seq"] for e in page["events"]], page["next_after_seq"])
    task = cli_json("task", *q, *rw, "t1")
    assert ("completed", {"pr": 7}) == (task["task"]["status"], task["output"])
    assert 4 == len(task["bundle"])
    assert {"goal": "reliability"} == cli_json("context", *q, *rw, "sprint")["data"]
    turns = cli_json("conversation", *q, *rw, "s1", "--last-n", "1")["turns"]
    assert ["what shall we fix?"] == [t["content"] for t in turns]
    recall = cli_json("recall", *q, *rw, "retry", "--session-id", "s1", "--task-id", "t1",
                      "--budget-chars", "200")  # fmt: skip
    assert recall["chars"] <= 200 and recall["text"].startswith("## Task\nadd retries")
    stats = cli_json("stats", *q, *rw)
    assert (8, 0) == (sum(stats["events_by_type"].values()), stats["dlq_count"])
    rows = cli_json("analytics", "tool_usage", *q, *rw)
    assert [("pytest", 1)] == [(r["tool"], r["calls"]) for r in rows]

    wide = {"COLUMNS": "200"}
    table = run_cli("task", *q, "t1", env=wide)
    assert "add retries" in table.stdout and "task.completed" in table.stdout
    shown = run_cli("search", *q, "retry", env=wide)
    assert content in shown.stdout


def test_query_mistakes_are_one_line(up: Up) -> None:
    """Not found exits 1; a bad tenant, time or analytics name exits 2; one line each."""
    q = ("--nats-url", up.url)
    for args, status, says in [
        (("task", "-t", "acme", "nope"), 1, "not_found: tenant acme has no task 'nope'"),
        (("context", "-t", "acme", "gone"), 1, "not_found: context key 'gone' is not set"),
        (("search", "-t", "Acme", "x"), 2, "tenant 'Acme' is not a valid tenant id"),
        (("history", "-t", "acme", "--since", "yesterday"), 2, "'yesterday' is not an ISO"),
        (("analytics", "-t", "acme", "drop_all"), 2, "'drop_all' is not one of"),
        (("recall", "-t", "acme"), 2, "recall needs at least one of query"),
    ]:
        result = run_cli(*args, *q)
        assert status == result.returncode, (args, result.stderr)
        assert 1 == len(result.stderr.splitlines()), result.stderr
        assert says in result.stderr


def test_demo_tells_the_story(up: Up) -> None:
    """The demo runs against up and shows search, isolation, recall, a task and analytics."""
    result = run_cli("demo", "--nats-url", up.url, env={"COLUMNS": "120"})
    assert 0 == result.returncode, result.stderr
    out = result.stdout
    for heading in ("1. Three agents at work", "2. Search", "3. Recall", "4. A task", "5. Anal"):
        assert heading in out
    other_tenant = out.split("globex, same question")[1].split("3. Recall")[0]
    assert "Webhook" in other_tenant and "payments" not in other_tenant
    assert "Add retries to the payments HTTP client: completed" in out
    assert "collaboration_graph" in out


def _serve(role: str, url: str, data_dir: Path) -> subprocess.Popen[str]:
    process, info = spawn_ready(
        ["serve", "--role", role, "--data-dir", str(data_dir)], {"MEMSTREAM_NATS_URL": url}
    )
    assert role == info["role"]
    return process


async def _all_replies(url: str, subject: str) -> list[dict[str, Any]]:
    """Every reply a request gets within a second (a request takes only the first)."""
    nc = await nats.connect(url)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(subject, b"{}", reply=inbox)
        replies = []
        with contextlib.suppress(nats.errors.TimeoutError):
            while True:
                replies.append(json.loads((await sub.next_msg(timeout=1)).data))
        return replies
    finally:
        await nc.close()


def test_roles_in_separate_processes(nats_server: NatsServer, tmp_path: Path) -> None:
    """serve --role history and --role vectors split the work; every op is answered,
    recall composing across both processes; each stops cleanly on SIGTERM."""
    url = nats_server.url
    processes = [_serve("history", url, tmp_path / "h"), _serve("vectors", url, tmp_path / "v")]
    try:
        q = ("--nats-url", url, "--tenant", "roles")
        seq = cli_json("remember", *q, "-a", "a1", "--domain", "d", "split roles work")["seq"]
        cli_json("publish", "conversation.turn", *q, "-a", "a1", "--data",
                 '{"session_id": "s", "role": "user", "content": "hello roles"}')  # fmt: skip
        rw = ("--min-seq", str(seq + 1))
        assert "split roles work" == cli_json("search", *q, *rw, "split roles")[0]["text"]
        assert 2 == len(cli_json("history", *q, *rw)["events"])
        recall = cli_json("recall", *q, *rw, "split roles", "--session-id", "s")
        assert {"knowledge", "turn"} == {s["kind"] for s in recall["sources"]}
        stats = cli_json("stats", *q, *rw)
        assert seq + 1 <= min(stats["last_applied_seq"].values())
        # Exactly one role answers an unknown op (the history role), with bad_request.
        replies = asyncio.run(_all_replies(url, "memq.roles.nope"))
        assert ["bad_request"] == [r["error"]["code"] for r in replies]
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(60) for p in processes]
    assert [0, 0] == codes
    assert not any(pid_alive(p.pid) for p in processes)


def test_the_query_role_needs_a_qdrant_server(nats_server: NatsServer, tmp_path: Path) -> None:
    """Without MEMSTREAM_QDRANT_URL, serve --role query says why it cannot start."""
    result = run_cli(
        "serve", "--role", "query", "--nats-url", nats_server.url, "--data-dir", str(tmp_path)
    )
    assert 2 == result.returncode
    assert "set MEMSTREAM_QDRANT_URL" in result.stderr


def test_get_list_and_revisions_commands(up: Up) -> None:
    """get, list (with a filter, paged by cursor) and revisions, as JSON and as tables
    that fit 80 columns: an id by its last 8 characters, which the commands take back
    (whole with --wide); a bad filter is one line and exit 2."""
    url = up.url
    q = ("--nats-url", url, "--tenant", "acme")
    long_id = "incident-2026-11-30-payments-gateway-timeout-" + "x" * 40
    publish(url, "knowledge.stored", {"memory_id": long_id, "domain": "ops", "content": "a",
                                      "metadata": {"sev": 1}, "user_id": "u1"})  # fmt: skip
    for i in range(3):
        fact = {"memory_id": f"k{i}", "domain": "ops", "content": f"fact {i}"}
        publish(url, "knowledge.stored", {**fact, "metadata": {"sev": 3}})
    last = publish(url, "memory.revised", {"memory_id": "k0", "content": "fact zero"})
    rw = ("--min-seq", str(last))

    memory = cli_json("get", *q, *rw, "k0")
    assert ("fact zero", 2) == (memory["content"], memory["revision"])
    page = cli_json("list", *q, *rw, "--filter", '{"metadata.sev": {"$gte": 2}}', "--limit", "2")
    assert 2 == len(page["memories"]) and page["next_cursor"]
    rest = cli_json("list", *q, "--filter", '{"metadata.sev": {"$gte": 2}}', "--limit", "2",
                    "--cursor", page["next_cursor"])  # fmt: skip
    walked = [m["memory_id"] for m in page["memories"] + rest["memories"]]
    assert ["k0", "k1", "k2"] == sorted(walked) and rest["next_cursor"] is None
    revisions = cli_json("revisions", *q, "k0")["revisions"]
    assert ["knowledge.stored", "memory.revised"] == [r["type"] for r in revisions]

    narrow = {"COLUMNS": "80"}
    shown = run_cli("list", *q, "--filter", '{"user_id": "u1"}', env=narrow)
    assert long_id[-8:] in shown.stdout and long_id not in shown.stdout
    assert long_id in run_cli("list", *q, "--filter", '{"user_id": "u1"}', "--wide").stdout
    assert long_id == cli_json("get", *q, long_id[-8:])["memory_id"]
    assert 1 == len(cli_json("revisions", *q, long_id[-8:])["revisions"])
    found = run_cli("search", *q, "fact", "--latest", env=narrow)
    assert 0 == found.returncode and "k0" in found.stdout
    assert max(len(line) for line in found.stdout.splitlines()) <= 80
    twin = "incident-2026-12-01-other-" + "x" * 40
    last = publish(url, "knowledge.stored", {"memory_id": twin, "domain": "ops", "content": "b"})
    both = run_cli("get", *q, "--min-seq", str(last), long_id[-8:])
    assert 2 == both.returncode
    assert "2 memory ids end with 'xxxxxxxx': give the whole id" in both.stderr
    bad = run_cli("list", *q, "--filter", '{"colour": "red"}')
    assert 1 == bad.returncode or 2 == bad.returncode
    assert 1 == len(bad.stderr.strip().splitlines())
    assert "unknown field 'colour'" in bad.stderr
    broken = run_cli("list", *q, "--filter", "{not json")
    assert (2, 1) == (broken.returncode, len(broken.stderr.strip().splitlines()))


def test_revise_forget_link_and_links_commands(up: Up, tmp_path: Path) -> None:
    """The write commands for one memory, and publish --data from a file and stdin."""
    url = up.url
    w = ("--nats-url", url, "-t", "acme", "-a", "coder")
    q = ("--nats-url", url, "--tenant", "acme")
    event = tmp_path / "k.json"
    event.write_text(json.dumps({"memory_id": "k1", "domain": "ops", "content": "v1"}))
    assert 0 == run_cli("publish", "knowledge.stored", *w, "--data", f"@{event}").returncode
    piped = run_cli(
        "publish", "knowledge.stored", *w, "--data", "-",
        input=json.dumps({"memory_id": "k2", "domain": "ops", "content": "other"}),
    )  # fmt: skip
    assert 0 == piped.returncode, piped.stderr
    revised = cli_json("revise", "k1", *w, "--content", "v2", "--metadata", '{"sev": 2}')
    linked = cli_json("link", "k1", "refines", "k2", *w)
    assert linked["seq"] > revised["seq"]
    rw = ("--min-seq", str(linked["seq"]))
    memory = cli_json("get", *q, *rw, "k1")
    assert ("v2", {"sev": 2}, 2) == (memory["content"], memory["metadata"], memory["revision"])
    found = cli_json("links", *q, *rw, "k1")
    assert [("k1", "refines", "k2")] == [
        (e["from_id"], e["relation"], e["to_id"]) for e in found["edges"]
    ]
    gone = cli_json("forget", "k2", *w, "--reason", "merged")
    missing = run_cli("get", *q, "--min-seq", str(gone["seq"]), "k2")
    assert (1, 1) == (missing.returncode, len(missing.stderr.strip().splitlines()))
    nothing = run_cli("revise", "k1", *w)
    assert 2 == nothing.returncode and "revise changes nothing" in nothing.stderr


def test_a_write_to_nothing_or_a_stale_revision_says_so(up: Up) -> None:
    """revise, forget and link wait for their outcome: a memory that does not exist, or
    another revision than --expected-revision, is one line on stderr and exit 1;
    --no-confirm only stores the event."""
    w = ("--nats-url", up.url, "-t", "acme", "-a", "coder")
    made_up = run_cli("revise", "no-such-memory", *w, "--content", "x")
    assert 1 == made_up.returncode
    assert [
        "memstream: error: no memory 'no-such-memory' in tenant acme (never stored, "
        "forgotten or expired): search or list first"
    ] == made_up.stderr.strip().splitlines()
    assert 1 == run_cli("forget", "no-such-memory", *w).returncode
    assert 0 == run_cli("revise", "no-such-memory", *w, "--content", "x", "--no-confirm").returncode
    assert 0 == run_cli("remember", *w, "-d", "ops", "v1", "--memory-id", "doc").returncode
    revised = run_cli("revise", "doc", *w, "--content", "v2", "--expected-revision", "1")
    assert 0 == revised.returncode, revised.stderr
    assert revised.stdout.strip().endswith("revision 2")
    stale = run_cli("revise", "doc", *w, "--content", "v3", "--expected-revision", "1")
    assert 1 == stale.returncode
    (line,) = stale.stderr.strip().splitlines()
    assert "is at revision 2, not the one this write expected" in line


def test_a_tenant_that_has_stored_nothing_is_named(up: Up) -> None:
    """A search of a mistyped tenant answers as before (nothing, exit 0) and says on
    stderr, in one line, that the tenant has no events; a real tenant's empty answer
    says nothing of the kind, and a not_found names it too."""
    w = ("--nats-url", up.url, "-t", "acme", "-a", "coder")
    assert 0 == run_cli("remember", *w, "-d", "ops", "the gateway times out").returncode
    typo = run_cli("search", "--nats-url", up.url, "--tenant", "acme2", "gateway")
    assert 0 == typo.returncode, typo.stderr
    assert [
        "memstream: tenant 'acme2' has no events yet: check --tenant (or MEMSTREAM_TENANT)"
    ] == typo.stderr.strip().splitlines()
    real = run_cli("search", "--nats-url", up.url, "--tenant", "acme", "zzzqqq", "--json")
    assert (0, "") == (real.returncode, real.stderr.strip())
    missing = run_cli("get", "--nats-url", up.url, "--tenant", "acme2", "m1")
    assert 1 == missing.returncode
    assert "tenant 'acme2' has no events yet" in missing.stderr
