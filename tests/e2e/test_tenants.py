"""Tenants from the command line: up --auth, tenant add/list/remove, tenant purge."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import Up, run_cli, start_up


def test_up_with_auth_admits_each_tenant_to_its_own_subjects(tmp_path: Path) -> None:
    """A tenant added while up --auth runs can store and query its own memory at once,
    nothing else; without credentials nobody gets in; once removed, the tenant is out."""
    data, elsewhere = tmp_path / "data", {"MEMSTREAM_DATA_DIR": str(tmp_path / "none")}
    up = start_up(data, "--auth")
    try:
        assert up.info["auth"] is True
        added = run_cli("tenant", "add", "acme", "--data-dir", str(data), "--json")
        assert 0 == added.returncode, added.stderr
        acme = {
            **elsewhere,
            "MEMSTREAM_NATS_USER": "acme",
            "MEMSTREAM_NATS_PASSWORD": json.loads(added.stdout)["password"],
        }
        q, dd = ("--nats-url", up.url), ("--data-dir", str(data))
        stored = run_cli("remember", *q, "-t", "acme", "-a", "a1", "--domain", "d", "ours",
                         "--json", env=acme)  # fmt: skip
        assert 0 == stored.returncode, stored.stderr
        seq = str(json.loads(stored.stdout)["seq"])
        hits = run_cli("search", *q, "-t", "acme", "ours", "--min-seq", seq, "--json", env=acme)
        assert ["ours"] == [h["text"] for h in json.loads(hits.stdout)]

        theirs = run_cli("remember", *q, "-t", "beta", "-a", "a1", "--domain", "d", "x", env=acme)
        assert (1, 1) == (theirs.returncode, len(theirs.stderr.splitlines())), theirs.stderr
        assert "may not publish to mem.beta.knowledge.stored" in theirs.stderr
        asked = run_cli("stats", *q, "-t", "beta", env=acme)
        assert "forbidden: these credentials may not query memq.beta.stats" in asked.stderr
        # From another directory, without the data dir: no credentials, and the line
        # says where they are kept and what to pass.
        for command in (["status"], ["dlq", "list"], ["dlq", "retry"]):
            nobody = run_cli(*command, *q, env=elsewhere)
            assert (2, 1) == (nobody.returncode, len(nobody.stderr.splitlines())), command
            assert "admits only users with credentials, and none were given" in nobody.stderr
            assert f"{tmp_path / 'none' / 'auth'} holds none" in nobody.stderr
            assert "pass the --data-dir that 'memstream up --auth' runs on" in nobody.stderr
        # With --data-dir alone: the running memstream's URL and its service user.
        for command in (["status"], ["dlq", "list"], ["sql", "SELECT 1 AS one"]):
            done = run_cli(*command, "--data-dir", str(data), "--json", env=elsewhere)
            assert 0 == done.returncode, (command, done.stderr)
            json.loads(done.stdout)
        reported = run_cli("status", "--data-dir", str(data), "--json", env=elsewhere)
        assert up.url == json.loads(reported.stdout)["nats_url"]

        operator = {"MEMSTREAM_DATA_DIR": str(data)}
        assert 0 == run_cli("status", *q, env=operator).returncode
        listed = run_cli("tenant", "list", "--data-dir", str(data), "--json")
        assert ["acme"] == json.loads(listed.stdout)

        lead = _users_roles_and_audit(up.url, data, elsewhere)
        unsure = run_cli("tenant", "purge", "acme", *q, env=operator)
        assert 2 == unsure.returncode and "--yes" in unsure.stderr
        purged = run_cli("tenant", "purge", "acme", "--yes", *q, env=operator)
        assert 0 == purged.returncode, purged.stderr
        assert f"purged tenant acme from {data.resolve()} (NATS {up.url}):" in purged.stdout
        # Its two memories' events, its two quota.set and its quota.reapplied.
        assert "stream MEMORY       5 messages" in purged.stdout
        # acme's admin purges its own tenant with its own credentials, and only that.
        theirs = run_cli("tenant", "purge", "beta", "--yes", *q, env=lead)
        assert 1 == theirs.returncode
        assert "lead@acme is a user of tenant acme: it may purge acme only" in theirs.stderr
        own = run_cli("tenant", "purge", "acme", "--yes", *q, env=lead)
        assert 0 == own.returncode, own.stderr
        assert f"purged tenant acme from {data.resolve()} (NATS {up.url}):" in own.stdout
        assert 0 == run_cli("tenant", "user", "remove", "acme", "lead", *dd).returncode

        assert 0 == run_cli("tenant", "remove", "acme", "--data-dir", str(data)).returncode
        gone = run_cli("stats", *q, "-t", "acme", env=acme)
        assert 1 == gone.returncode and "refused the credentials" in gone.stderr
    finally:
        assert 0 == up.stop()


def test_tenant_add_without_auth_says_nothing_is_enforced(up: Up) -> None:
    """On an up without --auth, adding a tenant does not pretend to protect anything."""
    added = run_cli("tenant", "add", "acme", "--data-dir", up.info["data_dir"])
    assert 0 == added.returncode, added.stderr
    assert "was started without --auth, so nothing is enforced" in added.stdout


def _users_roles_and_audit(url: str, data: Path, elsewhere: dict[str, str]) -> dict[str, str]:
    """Users within acme: a reader searches and may not write; an admin reads acme's
    audit, which names who asked, and may not read beta's; a rotated password stops.
    Returns the admin's environment."""
    q, dd = ("--nats-url", url), ("--data-dir", str(data))

    def add(user: str, role: str) -> dict[str, str]:
        made = run_cli("tenant", "user", "add", "acme", user, "--role", role, *dd, "--json")
        assert 0 == made.returncode, made.stderr
        info = json.loads(made.stdout)
        assert (f"{user}@acme", role) == (info["nats_user"], info["role"])
        return {**elsewhere, "MEMSTREAM_NATS_USER": info["nats_user"],
                "MEMSTREAM_NATS_PASSWORD": info["password"]}  # fmt: skip

    research, lead = add("research", "reader"), add("lead", "admin")
    listed = run_cli("tenant", "user", "list", "acme", *dd, "--json")
    assert [("lead", "admin"), ("research", "reader")] == [
        (u["user"], u["role"]) for u in json.loads(listed.stdout)
    ]
    again = run_cli("tenant", "user", "add", "acme", "lead", "--role", "reader", *dd)
    assert (2, 1) == (again.returncode, len(again.stderr.splitlines()))
    assert "already has a user 'lead'" in again.stderr

    written = run_cli("remember", *q, "-t", "acme", "-a", "r1", "--domain", "d", "no", env=research)
    assert (1, 1) == (written.returncode, len(written.stderr.splitlines())), written.stderr
    assert "may not publish to mem.acme.knowledge.stored" in written.stderr
    for query in (["search", "ours"], ["stats"]):
        done = run_cli(*query, *q, "-t", "acme", env=research)
        assert 0 == done.returncode, done.stderr

    limits = run_cli("tenant", "limits", "acme", "--queries-per-second", "50", *q, *dd, "--json")
    assert 0 == limits.returncode, limits.stderr
    assert 50 == json.loads(limits.stdout)["effective"]["queries_per_second"]

    def audit(*extra: str, env: dict[str, str]) -> list[dict[str, object]]:
        shown = run_cli("audit", "--tenant", "acme", *q, "--json", *extra, env=env)
        assert 0 == shown.returncode, shown.stderr
        return list(json.loads(shown.stdout))

    records = audit("--user", "research", env=lead)
    assert [("search", "ok"), ("stats", "ok")] == [(r["op"], r["outcome"]) for r in records]
    assert {"query"} == {r["kind"] for r in records}
    refused = run_cli("audit", "--tenant", "beta", *q, env=lead)
    assert (1, 1) == (refused.returncode, len(refused.stderr.splitlines())), refused.stderr
    assert "may not ask memadm.audit.beta" in refused.stderr
    operator = audit(env={"MEMSTREAM_DATA_DIR": str(data)})
    assert {"research", "acme", "lead"} <= {r["user"] for r in operator}
    # The operator's ops about no one tenant (the sql above) have a trail of their own.
    env = {"MEMSTREAM_DATA_DIR": str(data)}
    ops = run_cli("audit", "--tenant", "_admin", "--op", "sql", *q, "--json", env=env)
    assert 0 == ops.returncode, ops.stderr
    assert [("_admin", "admin", "sql", "ok")] == [
        (r["tenant"], r["kind"], r["op"], r["outcome"]) for r in json.loads(ops.stdout)
    ]
    theirs = run_cli("audit", "--tenant", "_admin", *q, env=lead)
    assert 1 == theirs.returncode
    assert theirs.stderr.rstrip().endswith(
        "may not ask memadm.audit._admin: it takes the service user"
    )

    # A quota of 1 memory, which acme holds: the admin's store is refused until the
    # operator raises it and reapplies; the quota was the operator's to set, not the admin's.
    quota = run_cli("tenant", "quota", "acme", "--memories", "1", *q, "--json", env=env)
    assert 0 == quota.returncode, quota.stderr
    assert (1, 1) == (
        json.loads(quota.stdout)["memories"],
        json.loads(quota.stdout)["memories_limit"],
    )
    run_cli("remember", *q, "-t", "acme", "-a", "l1", "--domain", "d", "one more", env=lead)
    shown = run_cli("tenant", "quota", "acme", *q, env=env)
    assert "tenant acme is at its quota of 1 memory" in shown.stdout, shown.stdout
    theirs = run_cli("tenant", "quota", "acme", "--memories", "100", *q, env=lead)
    assert 1 == theirs.returncode and "may not publish to mem.acme.quota.set" in theirs.stderr
    raised = run_cli("tenant", "quota", "acme", "--memories", "100", *q, env=env)
    assert 0 == raised.returncode, raised.stderr
    reapplied = run_cli("tenant", "reapply", "acme", *q, env=env)
    assert "reapplied 1 of 1 refused stores of acme" == reapplied.stdout.strip(), reapplied.stderr

    rotated = run_cli("tenant", "user", "rotate", "acme", "research", *dd)
    assert 0 == rotated.returncode, rotated.stderr
    old = run_cli("stats", *q, "-t", "acme", env=research)
    assert 1 == old.returncode and "refused the credentials" in old.stderr
    return lead
