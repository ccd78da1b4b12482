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
        q = ("--nats-url", up.url)
        stored = run_cli("remember", *q, "-t", "acme", "-a", "a1", "--domain", "d", "ours",
                         "--json", env=acme)  # fmt: skip
        assert 0 == stored.returncode, stored.stderr
        seq = str(json.loads(stored.stdout)["seq"])
        hits = run_cli("search", *q, "-t", "acme", "ours", "--min-seq", seq, "--json", env=acme)
        assert ["ours"] == [h["text"] for h in json.loads(hits.stdout)]

        theirs = run_cli("remember", *q, "-t", "beta", "-a", "a1", "--domain", "d", "x", env=acme)
        assert 1 == theirs.returncode
        assert "may not publish to mem.beta.knowledge.stored" in theirs.stderr.splitlines()[-1]
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

        unsure = run_cli("tenant", "purge", "acme", *q, env=operator)
        assert 2 == unsure.returncode and "--yes" in unsure.stderr
        purged = run_cli("tenant", "purge", "acme", "--yes", *q, env=operator)
        assert 0 == purged.returncode, purged.stderr
        assert f"purged tenant acme from {data.resolve()} (NATS {up.url}):" in purged.stdout
        assert "stream MEMORY       1 messages" in purged.stdout

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
