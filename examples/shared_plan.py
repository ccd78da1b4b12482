"""Three agent processes and one memstream: a shared plan kept by compare-and-set, and the
change feed telling each agent what the others changed.

Each agent adds its steps to the same plan with ``edit``: read the plan, change it,
write it only if nobody wrote in between, else read again and retry. Nothing is lost
however the writes interleave. Each agent also follows the tenant's change feed
(``watch``), asks what became of each revise (``outcome``), and counts the revisions
the others made.

    make up                                  # in one terminal
    .venv/bin/python examples/shared_plan.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

from memstream import MemoryClient

TENANT = os.environ.get("MEMSTREAM_TENANT", "demo")
AGENTS = ("planner", "coder", "tester")
STEPS = 5


async def agent(name: str, plan_id: str, from_seq: int) -> None:
    async with await MemoryClient.connect(tenant=TENANT, agent=name) as mem:
        seen_from_others = 0
        total = len(AGENTS) * STEPS

        async def follow() -> None:
            nonlocal seen_from_others
            applied = 0
            async for change in mem.watch(types=["memory.revised"], from_seq=from_seq):
                if getattr(change.event, "memory_id", None) != plan_id:
                    continue
                # The log holds every attempt; a revise that lost the race is a conflict,
                # and its agent tried again. Count what changed the plan.
                outcome = await mem.outcome(seq=change.seq, min_seq=change.seq, wait_ms=10_000)
                if outcome.outcome != "applied":
                    continue
                applied += 1
                if change.event.agent != name:
                    seen_from_others += 1
                if applied == total:
                    return

        feed = asyncio.create_task(follow())
        for step in range(1, STEPS + 1):
            line = f"- {name}: step {step}"
            await mem.edit(plan_id, lambda plan, line=line: {"content": f"{plan.content}\n{line}"})
        await asyncio.wait_for(feed, 60)
        print(f"{name}: added {STEPS} steps, saw {seen_from_others} changes by the others")


async def coordinate() -> None:
    plan_id = f"plan-{uuid.uuid4().hex[:8]}"
    async with await MemoryClient.connect(tenant=TENANT, agent="lead") as mem:
        # expected_revision=0: create it only if there is no such memory yet.
        ack = await mem.store_knowledge(
            "Release plan", domain="planning", memory_id=plan_id, expected_revision=0,
            confirm=True,
        )  # fmt: skip
        agents = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                name,
                plan_id,
                str(ack.seq),
                stdout=asyncio.subprocess.PIPE,
            )
            for name in AGENTS
        ]
        # Each agent's report, in the agents' order, once all have finished.
        reports = [(await p.communicate())[0].decode() for p in agents]
        if any(p.returncode for p in agents):
            raise SystemExit(f"an agent failed: exit codes {[p.returncode for p in agents]}")
        print("".join(reports), end="")
        plan = await mem.get(plan_id, consistency="latest")
        lines = plan.content.splitlines() if plan.content else []
        print(f"the plan has {len(lines) - 1} steps at revision {plan.revision}:")
        print(plan.content)


if __name__ == "__main__":
    if len(sys.argv) == 4:
        asyncio.run(agent(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    else:
        asyncio.run(coordinate())
