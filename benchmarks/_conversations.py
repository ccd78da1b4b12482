"""Conversations for benchmarks.retrieval's turns: sessions between a user and an
assistant about the same services, people and days, with planted exchanges to find.

A planted exchange is a user's question and the assistant's answer (the evidence), and
a later question an agent asks for it in other words. Half the answers are terse, as
answers in a conversation are ("Friday, right after the load test."): alone they do not
say what they answer, the turn before does. The other half restate their subject. The
same exchanges, about other services and with other days, people and numbers, fill the
other sessions, between small talk, so a shared word proves nothing.
"""

from __future__ import annotations

import random

# (the user's question, a terse answer, the same answer restating its subject, the later
# question); {s} service, {d} day, {p} person, {k} number, {r} region, {c} customer.
EXCHANGES: tuple[tuple[str, str, str, str], ...] = (
    ("When does the {s} migration to Postgres 16 start?",
     "{d}, right after the load test.",
     "The {s} migration to Postgres 16 starts {d}, right after the load test.",
     "When is the {s} database upgrade scheduled?"),
    ("Who owns the {s} on-call rotation this month?",
     "{p} does, until the end of the month.",
     "{p} owns the {s} on-call rotation until the end of the month.",
     "Who is carrying the pager for {s} right now?"),
    ("What broke the {s} deploy yesterday?",
     "A missing environment variable: the config map was never updated.",
     "The {s} deploy broke on a missing environment variable: the config map was never "
     "updated.",
     "Why did yesterday's {s} release fail?"),
    ("How long do we keep {s} logs?",
     "{k} days, then they move to cold storage.",
     "We keep {s} logs for {k} days, then they move to cold storage.",
     "What is the retention period for {s} logging?"),
    ("Which region hosts the {s} replicas?",
     "{r}, since the move in spring.",
     "The {s} replicas are hosted in {r} since the move in spring.",
     "Where do the {s} read copies run?"),
    ("Did {c} sign the renewal for {s}?",
     "Yes, on {d}, for two more years.",
     "{c} signed the {s} renewal on {d}, for two more years.",
     "Has {c} extended their {s} contract?"),
    ("What's the timeout on {s} calls to the payment provider?",
     "{k} seconds, and then we retry once.",
     "{s} calls to the payment provider time out after {k} seconds, then retry once.",
     "How long does {s} wait for the payment provider before giving up?"),
    ("Why is the {s} dashboard red?",
     "Disk on the primary is at {k}% and climbing.",
     "The {s} dashboard is red because disk on the primary is at {k}% and climbing.",
     "What is the alert on the {s} dashboard about?"),
)  # fmt: skip

SERVICES = ("billing", "search", "checkout", "ingest", "gateway", "accounts", "orders",
            "analytics", "tokenizer", "recommendation")  # fmt: skip
_PEOPLE = ("Priya", "Marco", "Lena", "Chen", "Hiroshi", "Zoe", "Ahmed", "Sofia", "Tom")
_CUSTOMERS = ("Globex", "Acme", "Initech", "Umbrella", "Hooli", "Stark")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "March 3", "June 12")
_REGIONS = ("eu-west-1", "us-east-2", "ap-south-1", "eu-central-1")
_SMALL_TALK = (
    ("user", "Thanks, that helps."), ("assistant", "Happy to help."),
    ("user", "Can you also update the runbook?"), ("assistant", "Sure, I'll do it today."),
    ("user", "Let me check and get back to you."), ("assistant", "Sounds good."),
    ("user", "Is that still true?"), ("assistant", "Yes, as far as I know."),
    ("user", "Ok, next question."), ("assistant", "Go ahead."),
    ("user", "Who told you that?"), ("assistant", "It was in last week's notes."),
)  # fmt: skip

# A planted exchange: its session, the evidence turn's index in it, the later question,
# and whether the answer is terse.
Planted = tuple[str, int, str, bool]


def _values(service: str, rng: random.Random) -> dict[str, object]:
    """One exchange's fillers: its question, answer and later question share them."""
    return {"s": service, "d": rng.choice(_DAYS), "p": rng.choice(_PEOPLE),
            "k": rng.randint(2, 95), "r": rng.choice(_REGIONS),
            "c": rng.choice(_CUSTOMERS)}  # fmt: skip


def conversations(
    sessions: int, seed: int = 5
) -> tuple[dict[str, list[tuple[str, str]]], list[Planted]]:
    """``sessions`` sessions of (role, text) turns, and the planted exchanges in them:
    one per (exchange, service) pair of the first five services (40), the rest of the
    sessions about the other five, so each later question has one answer."""
    rng = random.Random(seed)
    talk: dict[str, list[tuple[str, str]]] = {}
    planted: list[Planted] = []
    pairs = [(x, s) for x in range(len(EXCHANGES)) for s in SERVICES[:5]]
    for n in range(sessions):
        turns: list[tuple[str, str]] = []
        mine = pairs[n] if n < len(pairs) else None
        for slot in range(rng.randint(3, 5)):
            turns.extend(rng.sample(_SMALL_TALK, 2) if rng.random() < 0.4 else [])
            if mine is not None and slot == 1:
                x, service = mine
                asked, terse, full, question = EXCHANGES[x]
                is_terse = (x + SERVICES.index(service)) % 2 == 0
                v = _values(service, rng)
                turns.append(("user", asked.format(**v)))
                turns.append(("assistant", (terse if is_terse else full).format(**v)))
                planted.append((f"s{n}", len(turns) - 1, question.format(**v), is_terse))
                continue
            asked, terse, full, _ = rng.choice(EXCHANGES)
            v = _values(rng.choice(SERVICES[5:]), rng)
            turns.append(("user", asked.format(**v)))
            turns.append(("assistant", rng.choice((terse, full)).format(**v)))
        talk[f"s{n}"] = turns
    return talk, planted
