"""``memstream demo``: a scripted multi-agent session, then the queries that read it.

Three agents (a planner, a coder and a reviewer) work through tasks for two tenants,
``acme`` and ``globex``: they store knowledge and solutions, collaborate and message,
call tools, talk in a conversation, run flows and move tasks through their lifecycle.
Then the demo asks what an agent would ask: a search, the same search from the other
tenant, a recall bundle for the coder's next prompt, a task's bundle, and analytics.
Every query passes ``min_seq`` of the last write, so it reads what was just written.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table

from memstream.consumers.cli._common import load, nats_url_option, out, run
from memstream.producers._events import PublishAck
from memstream.producers.client import MemoryClient
from memstream.producers.connection import NatsAuth, connect_nats

__all__ = ["demo", "run_demo"]


@click.command()
@nats_url_option
def demo(nats_url: str | None) -> None:
    """Run a scripted multi-agent session against a running memstream, then show search,
    recall, a task's bundle and analytics over it (tenants acme and globex)."""
    settings = load(nats_url=nats_url)
    run(run_demo(settings.nats_url, settings.nats_auth, out))


async def _acme(mem: dict[str, MemoryClient], run: str) -> tuple[list[PublishAck], dict[str, str]]:
    planner, coder, reviewer = mem["planner"], mem["coder"], mem["reviewer"]
    acks: list[PublishAck] = []
    session = f"acme-session-{run}"
    ids = {"session": session}

    acks.append(
        await coder.store_knowledge(
            "The payments API returns 429 with a Retry-After header when a client exceeds 50 "
            "requests per second; honour the header before retrying.",
            domain="payments-api",
            tags=["http", "rate-limit"],
        )
    )
    acks.append(
        await planner.store_knowledge(
            "Release branches are cut every Tuesday; anything merged after 12:00 UTC ships "
            "the week after.",
            domain="process",
            tags=["release"],
        )
    )
    acks.append(
        await reviewer.store_solution(
            "Integration tests fail at random on CI because they sleep a fixed 2 s for the "
            "worker to start",
            "Wait for the worker's ready line with a deadline instead of sleeping; the flake "
            "went from 1 in 20 runs to none in 500.",
            tags=["ci", "flaky"],
        )
    )
    acks.append(
        await coder.store_solution(
            "HTTP client gives up on transient 503s from the payments API",
            "Retry idempotent requests up to 5 times with exponential backoff and full jitter, "
            "capped at 10 s; respect Retry-After when present.",
            tags=["http", "retry"],
        )
    )

    # Task 1: the planner creates it, the coder does it with tools, the reviewer approves.
    ids["retry_task"] = task_retry = f"retry-client-{run}"
    acks.append(
        await planner.task_created(
            "Add retries to the payments HTTP client",
            task_id=task_retry,
            assignee="coder",
            metadata={"priority": "high"},
        )
    )
    acks.append(await coder.task_started(task_retry))
    acks.append(
        await coder.add_turn(
            session,
            "user",
            "Can you make the client survive the payments API's 503s?",
            task_id=task_retry,
        )
    )
    acks.append(
        await coder.add_turn(
            session,
            "assistant",
            "Yes: I'll retry idempotent calls with jittered backoff and honour Retry-After.",
            task_id=task_retry,
        )
    )
    acks.append(
        await coder.record_tool_use(
            "pytest",
            args={"path": "tests/test_client.py"},
            result={"passed": 41, "failed": 1},
            duration_ms=8400,
            ok=False,
            task_id=task_retry,
        )
    )
    acks.append(
        await coder.record_tool_use(
            "pytest",
            args={"path": "tests/test_client.py"},
            result={"passed": 42, "failed": 0},
            duration_ms=8100,
            ok=True,
            task_id=task_retry,
        )
    )
    interaction = f"review-{run}"
    acks.append(
        await coder.record_collaboration(
            "Review the retry patch for the payments client",
            interaction_id=interaction,
            participants=["coder", "reviewer"],
            initiator="coder",
            outcome="approved",
            task_id=task_retry,
        )
    )
    acks.append(
        await reviewer.send_message(
            interaction,
            "Approved. Cap the total wait so a request cannot hang for minutes.",
            recipients=["coder"],
            task_id=task_retry,
        )
    )
    acks.append(
        await coder.send_message(
            interaction,
            "Capped at 30 s overall.",
            recipients=["reviewer"],
            task_id=task_retry,
        )
    )
    acks.append(
        await coder.task_completed(
            task_retry,
            output={"pr": 1287, "tests": "42 passed"},
        )
    )
    acks.append(
        await coder.add_turn(session, "user", "Great. Next: the flaky CI test.", task_id=task_retry)
    )

    # Task 2: the coder tries, the test run fails, the task fails with its reason.
    ids["orm_task"] = task_orm = f"orm-upgrade-{run}"
    acks.append(
        await planner.task_created("Upgrade the ORM to 3.0", task_id=task_orm, assignee="coder")
    )
    acks.append(await coder.task_started(task_orm))
    acks.append(
        await coder.record_tool_use("migrate", duration_ms=61000, ok=False, task_id=task_orm)
    )
    acks.append(
        await coder.task_failed(
            task_orm, "migration 0042 drops a column still read by the billing job"
        )
    )

    acks.append(await planner.record_flow_run("nightly-ci", "succeeded", duration_ms=412_000))
    acks.append(
        await planner.record_flow_run(
            "nightly-ci", "failed", duration_ms=95_000, data={"failed_job": "integration"}
        )
    )
    acks.append(
        await planner.set_context("sprint", {"goal": "payments reliability", "ends": "2026-12-04"})
    )
    return acks, ids


async def _globex(mem: MemoryClient) -> list[PublishAck]:
    return [
        await mem.store_knowledge(
            "Globex retries failed webhooks three times, then parks them for an operator.",
            domain="webhooks", tags=["retry"],
        ),
        await mem.store_solution(
            "Webhook consumer double-charges on redelivery",
            "Make the handler idempotent on the event id.", tags=["idempotency"],
        ),
    ]  # fmt: skip


def _hits_table(title: str, hits: list[Any]) -> Table:
    table = Table("score", "kind", "agent", "text", title=title, title_justify="left")
    for h in hits:
        text = " ".join(h.text.split())
        table.add_row(
            f"{h.score:.3f}", h.kind, h.agent, text[:90] + ("…" if len(text) > 90 else "")
        )
    return table


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.strftime("%H:%M:%S")
    if isinstance(value, dict | list):
        return msgspec.json.encode(value).decode()
    return str(value)


def _rows_table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(*columns, title=title, title_justify="left")
    for row in rows:
        table.add_row(*map(_cell, row))
    return table


async def run_demo(url: str, auth: NatsAuth, out: Console) -> None:
    """Write the session, then print the queries' answers."""
    nc = await connect_nats(url, name="memstream:demo", **auth)
    run = secrets.token_hex(3)
    try:
        acme = {
            a: MemoryClient(nc, tenant="acme", agent=a) for a in ("planner", "coder", "reviewer")
        }
        globex = MemoryClient(nc, tenant="globex", agent="planner")
        out.rule("[bold]1. Three agents at work[/bold]")
        acks, ids = await _acme(acme, run)
        acks += await _globex(globex)
        last = max(a.seq for a in acks)
        out.print(
            f"published {len(acks)} events for acme and globex "
            f"(stream seq up to {last}): knowledge, solutions, tasks, tool calls, "
            "a collaboration with messages, conversation turns, flow runs, context"
        )

        coder = acme["coder"]
        question = "how should the client handle 429 and 503 from the payments API?"
        out.rule("[bold]2. Search[/bold]")
        hits = await coder.search(question, top_k=4, min_seq=last)
        out.print(_hits_table(f"acme: {question!r}", hits))
        other = await globex.search(question, top_k=4, min_seq=last)
        out.print(_hits_table("globex, same question: only globex's own memory", other))

        out.rule("[bold]3. Recall: the coder's next prompt, within 900 characters[/bold]")
        bundle = await coder.recall(
            "make the retries safe", session_id=ids["session"], task_id=ids["retry_task"],
            budget_chars=900, min_seq=last,
        )  # fmt: skip
        out.print(bundle.text, markup=False)
        sources = ", ".join(
            f"{s.kind}" + (f" {s.score:.3f}" if s.score else "") for s in bundle.sources
        )
        out.print(f"[dim]{bundle.chars} characters from: {sources}[/dim]")

        out.rule("[bold]4. A task and everything that carried its id[/bold]")
        task = await coder.task(ids["retry_task"], min_seq=last)
        state = task.task
        out.print(f"{state['title']}: [bold]{state['status']}[/bold], output {_cell(task.output)}")
        out.print(
            _rows_table(
                "bundle",
                ["seq", "type", "agent"],
                [[e["seq"], e["type"], e["agent"]] for e in task.bundle],
            )
        )
        failed = await coder.task(ids["orm_task"])
        out.print(
            f"{failed.task['title']}: [bold]{failed.task['status']}[/bold]: {failed.task['error']}"
        )

        out.rule("[bold]5. Analytics over the whole history[/bold]")
        for name in ("agent_activity", "tool_usage", "collaboration_graph"):
            result = await coder.analytics(name, {"limit": 10}, min_seq=last)
            out.print(_rows_table(name, result.columns, result.rows))
        stats = await coder.stats()
        out.print(
            f"acme: {sum(stats.events_by_type.values())} events; projections applied up to "
            + ", ".join(f"{n} seq {s}" for n, s in stats.last_applied_seq.items())
            + f"; {stats.dlq_count} dead letters"
        )
    finally:
        await nc.drain()
