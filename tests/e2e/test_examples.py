"""Every example in examples/ runs as its README says, against a memstream of its own
(memstream.testing), offline, and shows what it claims."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from memstream.testing import RunningMemstream, memstream_server

__all__ = ["memstream_server"]  # one memstream for the module

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(example: str, server: RunningMemstream) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEMSTREAM_", "OPENAI_"))}
    env |= {"MEMSTREAM_NATS_URL": server.url, "MEMSTREAM_TENANT": f"ex-{uuid.uuid4().hex[:8]}"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / example)], env=env, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr
    assert "" == done.stderr
    return done.stdout.splitlines()


def test_every_example_is_in_the_examples_readme() -> None:
    """The README of examples/ names each file there."""
    readme = (EXAMPLES / "README.md").read_text()
    assert [] == [p.name for p in EXAMPLES.glob("*.py") if f"`{p.name}`" not in readme]


def test_the_langgraph_team_shares_findings(memstream_server: RunningMemstream) -> None:
    """The writer's graph drafts from what the researcher's graph stored."""
    out = run("langgraph_team.py", memstream_server)
    assert "researcher stored 3 findings" == out[0]
    assert out[1].startswith("writer's draft: ") and "replay" in out[1]
    assert "namespaces: [('research', 'memstream')]" == out[2]


def test_the_openai_agent_remembers_by_session_and_by_mcp(
    memstream_server: RunningMemstream,
) -> None:
    """The second run answers from the session; the MCP search finds what was remembered."""
    out = run("openai_agents_memory.py", memstream_server)
    assert [
        "session: You said deploys freeze on Fridays.",
        "session: memstream keeps 4 items of support-42",
        "mcp: Staging is reset nightly.",
        "mcp: search_memory found 'the staging cluster is reset nightly'",
    ] == out


@pytest.mark.parametrize("round_", [1, 2])
def test_three_agents_lose_no_step_of_the_shared_plan(
    memstream_server: RunningMemstream, round_: int
) -> None:
    """15 steps from three processes at revision 16; each saw the others' 10 changes."""
    out = run("shared_plan.py", memstream_server)
    seen = sorted(line for line in out if "saw" in line)
    assert [f"{a}: added 5 steps, saw 10 changes by the others"
            for a in ("coder", "planner", "tester")] == seen  # fmt: skip
    assert "the plan has 15 steps at revision 16:" in out
    steps = [line for line in out if re.match(r"- \w+: step \d$", line)]
    assert 15 == len(set(steps))
