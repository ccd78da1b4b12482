"""Retrieval quality: planted facts among look-alike memories, found by dense, keyword
and hybrid search.

One tenant's memory holds ``--distractors`` memories made from templates about the same
services, people and numbers as the planted facts (so a shared word proves nothing),
plus the planted facts themselves. Each planted fact has a question an agent would ask
for it: 40 ask in other words than the fact's (sharing at most a common word with it),
15 ask by a name the agent knows exactly (an error code, a flag, a ticket, a host).
Every question is searched through memstream's vector projection and its search
(``search_vectors``, as the query worker calls it) in each mode; recall@1, @5 and @10
is the share of questions whose planted fact is among the first 1, 5, 10 hits.

Then the turns: ``--sessions`` conversations (benchmarks._conversations) with 40 planted
exchanges, each indexed with each choice of context for a turn (projections.turn_context):
recall of the answer turn, terse answers and answers that restate apart.

Embeddings: memstream's default, all-MiniLM-L6-v2 (``--embedder minilm``), or the hash
embedder (``--embedder hash``: words, no meaning).

Searched as projected, the dense side is an exact search (no index is built yet). With
``--indexed``, the shard's indexes are built first, as the vectors service builds them
aside, so the dense side searches what an indexed tenant is searched by: its int8
copies read in full, or its graph once past ``SCAN_KB`` in a segment.

    python -m benchmarks.retrieval [--distractors 3000] [--sessions 400] [--embedder minilm]
                                   [--indexed]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import arguments
from benchmarks._conversations import conversations
from memstream.projections.embedders import Embedder, HashEmbedder
from memstream.projections.embedding_cache import CachedEmbedder, EmbeddingCache
from memstream.projections.point_store import EdgeStores
from memstream.projections.turn_context import SIDES
from memstream.projections.vector_search import SearchSpec, embed_queries
from memstream.projections.vectors import VectorProjection
from memstream.schemas import events as ev

TENANT = "bench"
KS = (1, 5, 10)

# (planted fact, the question that looks for it)
PLANTED: tuple[tuple[str, str], ...] = (
    ("The billing service listens on port 8443 behind the internal load balancer.",
     "Which port does billing answer on?"),
    ("The staging database password is rotated every 30 days by the vault job.",
     "How often do the credentials for the pre-production DB change?"),
    ("Priya prefers code reviews to be requested before noon on weekdays.",
     "When should I ask Priya to look at my pull request?"),
    ("The nightly export to the data lake failed because the S3 bucket policy denied "
     "PutObject for the exporter role.", "Why did the overnight dump to the lake break?"),
    ("Customer Globex asked for invoices in euros starting next quarter.",
     "What currency does Globex want to be billed in?"),
    ("The search cluster runs out of heap when a query asks for more than 10,000 hits; "
     "page with search_after instead.", "How do we avoid memory errors on deep result pages?"),
    ("Marco is on parental leave until the end of March; Lena covers his on-call shifts.",
     "Who takes Marco's pager duty while he is away?"),
    ("The flaky test test_checkout_timeout was fixed by raising the mock clock skew to "
     "two seconds.", "What made the checkout timeout test stable?"),
    ("Deployments to production are frozen from December 20 to January 3.",
     "Can we ship to prod over the winter holidays?"),
    ("The recommendation model is retrained every Sunday at 02:00 UTC on the last 90 days "
     "of clicks.", "How fresh is the training data for suggestions?"),
    ("Acme's API key leaked in a public gist and was revoked on 2026-10-02.",
     "What happened to Acme's credentials in October?"),
    ("The mobile app crashes on Android 12 when the camera permission is denied twice.",
     "Which phones crash if the user refuses camera access?"),
    ("Use pnpm, not npm, in the frontend repository; the lockfile is pnpm-lock.yaml.",
     "Which package manager does the web client use?"),
    ("The rate limit for the public API is 600 requests per minute per token.",
     "How many calls can one token make each minute?"),
    ("Latency on checkout rose after the Redis cluster was moved to a smaller instance "
     "type.", "Why did paying for an order get slower?"),
    ("Support tickets tagged urgent must get a first reply within 2 hours.",
     "What is the response deadline for critical customer issues?"),
    ("The legacy SOAP endpoint for orders is used only by Initech and will be removed "
     "in June.", "Which client still calls the old XML order interface?"),
    ("The GPU nodes are in the eu-west-4 region; training jobs must request the "
     "gpu-a100 node pool.", "Where do the accelerated machines for model training live?"),
    ("Chen found that the memory leak in the ingest worker came from an unbounded "
     "retry queue.", "What caused the ingestion process to keep growing in RAM?"),
    ("The design review for the new onboarding flow is on Thursday at 3pm in room Orion.",
     "When and where do we discuss the signup redesign?"),
    ("Backups of the user database are kept for 35 days and tested monthly by restoring "
     "into a scratch cluster.", "How long do we retain copies of account data?"),
    ("Feature flags are managed in LaunchDarkly; the kill switch for payments is "
     "payments-enabled.", "How do I turn off charging customers in an emergency?"),
    ("The Kafka topic orders.v2 has 48 partitions and a retention of 7 days.",
     "How many shards does the second version of the order stream have?"),
    ("Our SLA promises 99.95% monthly availability for the dashboard.",
     "What uptime did we commit to for the reporting UI?"),
    ("Hiroshi wrote the migration that splits the accounts table into accounts and "
     "profiles.", "Who authored the schema change separating user profiles?"),
    ("The CI pipeline caches Docker layers in the registry under the tag buildcache.",
     "How are container build layers reused between pipeline runs?"),
    ("Emails to customers are sent through Postmark; marketing mail goes through "
     "Mailchimp.", "Which provider delivers transactional messages?"),
    ("The analytics warehouse is Snowflake, refreshed hourly by dbt jobs.",
     "How often is the reporting warehouse updated?"),
    ("Refunds above 500 dollars need approval from the finance lead.",
     "Who must sign off on a large money-back request?"),
    ("The tokenizer service returns HTTP 413 for documents over 2 MB.",
     "Why does the text splitting API reject big files?"),
    ("Zoe asked to be notified on Slack, not email, when her builds fail.",
     "How does Zoe want to hear about broken builds?"),
    ("The checkout page A/B test showed the one-step form converts 4% better.",
     "Which variant of the payment form won the experiment?"),
    ("TLS certificates are renewed automatically by cert-manager 30 days before expiry.",
     "Do we need to renew HTTPS certs by hand?"),
    ("The internal wiki moved from Confluence to Notion in August.",
     "Where is our team documentation kept now?"),
    ("Vendor Umbrella's SFTP drop arrives at 05:30 and is parsed by the ingest-umbrella "
     "cron.", "When does Umbrella's file delivery come in?"),
    ("Password hashing uses argon2id with 64 MB memory and 3 iterations.",
     "What algorithm protects stored user secrets?"),
    ("The load test reached 12,000 requests per second before the gateway saturated.",
     "What throughput did the stress test top out at?"),
    ("Ahmed prefers tabs over spaces in Go files, but gofmt decides anyway.",
     "What indentation does Ahmed like in Go?"),
    ("The error budget for the search API was exhausted on November 14.",
     "When did we run out of reliability allowance for search?"),
    ("Quarterly planning moved from the first Monday to the second Tuesday of the "
     "quarter.", "When does the team now plan the next three months?"),
)  # fmt: skip

# Facts an agent finds by a name it knows exactly: an error code, a flag, a ticket, a host.
NAMED: tuple[tuple[str, str], ...] = (
    ("Error E4021 from the ledger means the idempotency key was reused with another "
     "amount.", "What does E4021 mean?"),
    ("The flag beta_inline_citations turns on sources under every answer.",
     "What does beta_inline_citations do?"),
    ("Ticket OPS-3312 tracks the disk pressure on the build agents.",
     "What is OPS-3312 about?"),
    ("The host db-replica-07 lags because its disk is a magnetic drive.",
     "Why is db-replica-07 behind?"),
    ("The env var LEDGER_STRICT_MODE makes the ledger refuse unbalanced entries.",
     "What happens when LEDGER_STRICT_MODE is set?"),
    ("Cron job purge_stale_sessions deletes sessions idle for 14 days.",
     "What does purge_stale_sessions remove?"),
    ("The metric http_5xx_ratio_slo pages when above 0.5% for ten minutes.",
     "When does http_5xx_ratio_slo page?"),
    ("Library pydantic-settings 2.3 broke our config loading; pin 2.2.",
     "Which pydantic-settings version should we use?"),
    ("Invoice INV-88213 was paid twice by Hooli and refunded on May 2.",
     "What happened with INV-88213?"),
    ("The script tools/rebalance_shards.py moves tenants between shards at night.",
     "What does rebalance_shards.py do?"),
    ("Branch release/2026.11 is the one QA tests this sprint.",
     "Which branch is release/2026.11 used for?"),
    ("The bucket s3://acme-ml-artifacts keeps model checkpoints for 60 days.",
     "How long does acme-ml-artifacts keep files?"),
    ("Alert KafkaConsumerLagHigh fires when orders-consumer lags 50,000 messages.",
     "When does KafkaConsumerLagHigh fire?"),
    ("Endpoint /v3/quotes/bulk accepts at most 500 quotes per call.",
     "How many quotes can /v3/quotes/bulk take?"),
    ("The Terraform module net-core-vpc owns the NAT gateways.",
     "What does net-core-vpc manage?"),
)  # fmt: skip

_SERVICES = ("billing", "search", "checkout", "ingest", "gateway", "accounts", "orders",
             "analytics", "tokenizer", "recommendation", "mobile app", "dashboard")  # fmt: skip
_PEOPLE = ("Priya", "Marco", "Lena", "Chen", "Hiroshi", "Zoe", "Ahmed", "Sofia", "Tom")
_CUSTOMERS = ("Globex", "Acme", "Initech", "Umbrella", "Hooli", "Stark")
_TEMPLATES = (
    "The {s} service listens on port {n} in the {r} region.",
    "{p} reviewed the {s} pull request and asked for more tests.",
    "The {s} deployment on {d} rolled back after error rates rose to {k}%.",
    "{c} reported that the {s} export was late by {k} hours.",
    "{p} is on call for {s} during the week of {d}.",
    "The {s} database was resized to {k} cores and {n} MB of memory.",
    "Alerts for {s} latency fire when p99 exceeds {n} ms for {k} minutes.",
    "{c} asked for a discount of {k}% on the {s} plan.",
    "The {s} team meets on {d} to plan the migration to {r}.",
    "{p} prefers {s} incidents to be written up within {k} days.",
    "The {s} job runs every {k} hours and writes to the {r} bucket.",
    "A timeout of {n} ms was set for calls from {s} to the gateway.",
    "{c} renewed the contract for {s} for {k} more years.",
    "The {s} cache hit rate dropped to {k}% after the release on {d}.",
)
# Names like the planted ones (near codes, hosts, flags) in sentences like theirs.
_NAMES = (
    "Error E40{k:02d} from the {s} means the request was retried with another {w}.",
    "Ticket OPS-33{k:02d} tracks the {w} on the {s} agents.",
    "The host db-replica-{k:02d} lags because its {w} is shared with {s}.",
    "The flag beta_{w}_{s} turns on {w} under every {s} answer.",
    "Cron job purge_stale_{w} deletes {w} idle for {k} days.",
    "Invoice INV-882{k:02d} was paid by {c} and refunded on {d}.",
    "The bucket s3://{c}-{w}-artifacts keeps {s} files for {k} days.",
    "Endpoint /v{k}/{w}/bulk accepts at most {k}00 {w} per call.",
)
_WORDS = ("disk", "amount", "session", "quote", "citation", "cache", "token", "memory")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "March 3", "June 12")
_REGIONS = ("eu-west-1", "us-east-2", "ap-south-1", "eu-central-1")


def distractors(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    texts: set[str] = set()
    # A look-alike never carries a planted name itself (that would be a second answer).
    taken = {
        word
        for fact, _ in NAMED
        for word in fact.split()
        if any(c.isdigit() or c in "_-/" for c in word)
    }
    while len(texts) < n:
        text = rng.choice(_TEMPLATES + _NAMES).format(
                s=rng.choice(_SERVICES), p=rng.choice(_PEOPLE), c=rng.choice(_CUSTOMERS),
                n=rng.choice((80, 443, 5432, 6379, 8080, 8443, 9200, 250, 1200)),
                k=rng.randint(2, 60), d=rng.choice(_DAYS), r=rng.choice(_REGIONS),
                w=rng.choice(_WORDS),
        )  # fmt: skip
        if not taken & set(text.split()):
            texts.add(text)
    return sorted(texts)


def _embedder(name: str) -> Embedder:
    if name == "hash":
        return HashEmbedder(384)
    from memstream.projections.minilm import MiniLMEmbedder

    return MiniLMEmbedder()


def _build_indexes(projection: VectorProjection, dimensions: int) -> None:
    """The shard's indexes built, as an index build aside builds them."""
    generation = projection.stores.current()
    if generation is not None:
        projection.stores.open(generation, dimensions).shard.optimize()


def main(
    n: int, embedder_name: str, indexed: bool = False
) -> dict[tuple[str, str], dict[int, float]]:
    memories = [(f"d{i}", text) for i, text in enumerate(distractors(n))]
    planted = {"in other words": PLANTED, "by name": NAMED}
    facts = [(group, f"fact-{g}-{i}", fact, question)
             for g, (group, pairs) in enumerate(planted.items())
             for i, (fact, question) in enumerate(pairs)]  # fmt: skip
    memories += [(ref, fact) for _, ref, fact, _ in facts]
    random.Random(11).shuffle(memories)
    questions = [question for *_, question in facts]
    ts = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    events = [
        (seq, ev.KnowledgeStored(id=f"e{seq}", tenant=TENANT, agent="bench", ts=ts,
                                 memory_id=ref, domain="ops", content=text))
        for seq, (ref, text) in enumerate(memories, start=1)
    ]  # fmt: skip
    recall: dict[tuple[str, str], dict[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp:
        cached = CachedEmbedder(_embedder(embedder_name), EmbeddingCache(Path(tmp) / "c.db"))
        start = time.perf_counter()
        projection = VectorProjection(EdgeStores(Path(tmp) / "vectors"), cached)
        for at in range(0, len(events), 500):
            projection.apply(events[at : at + 500])
        print(f"  {len(events):,} memories embedded and projected in "
              f"{time.perf_counter() - start:.0f} s", file=sys.stderr)  # fmt: skip
        vectors = embed_queries(cached, TENANT, questions)
        if indexed:
            _build_indexes(projection, len(vectors[0]))
        for mode in ("dense", "keyword", "hybrid"):
            spec = SearchSpec(mode=mode, top_k=max(KS))
            found = projection.search_vectors(TENANT, questions, vectors, spec)
            ranks = [
                (group, next((r for r, hit in enumerate(hits) if hit.ref == ref), None))
                for (group, ref, _, _), hits in zip(facts, found, strict=True)
            ]
            for group in (*planted, "all"):
                mine = [r for g, r in ranks if group in (g, "all")]
                recall[(group, mode)] = {
                    k: sum(1 for r in mine if r is not None and r < k) / len(mine) for k in KS
                }
    print(
        f"retrieval: {len(facts)} planted facts among {n:,} look-alike memories, "
        f"{embedder_name} embeddings{', indexed' if indexed else ''}; "
        "recall@1 / @5 / @10 of the questions"
    )
    for (group, mode), at in recall.items():
        figures = " / ".join(f"{100 * at[k]:3.0f}%" for k in KS)
        count = len(planted.get(group, facts))
        print(f"retrieval: {group:<15} ({count:>2}) {mode:<8} {figures}")
    return recall


def turns(
    sessions: int, embedder_name: str, indexed: bool = False
) -> dict[tuple[str, str, str], dict[int, float]]:
    """The planted exchanges of benchmarks._conversations, found among every session's
    turns (``conversation.turn`` events) by each side of each context choice."""
    talk, planted = conversations(sessions)
    ts = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    events = [
        (seq, ev.ConversationTurn(id=f"{session}-{i}", tenant=TENANT, agent="bench", ts=ts,
                                  session_id=session, role=role, content=text))
        for seq, (session, i, role, text) in enumerate(
            ((session, i, role, text) for session, said in talk.items()
             for i, (role, text) in enumerate(said)), start=1)
    ]  # fmt: skip
    questions = [question for _, _, question, _ in planted]
    groups = {"terse": [p[3] for p in planted], "restated": [not p[3] for p in planted]}
    recall: dict[tuple[str, str, str], dict[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp:
        # One cache for every choice: a text is embedded once, whichever indexes it.
        cached = CachedEmbedder(_embedder(embedder_name), EmbeddingCache(Path(tmp) / "c.db"))
        vectors = embed_queries(cached, TENANT, questions)
        for side in SIDES:
            projection = VectorProjection(EdgeStores(Path(tmp) / side), cached, turn_context=side)
            for at in range(0, len(events), 500):
                projection.apply(events[at : at + 500])
            if indexed:
                _build_indexes(projection, len(vectors[0]))
            for mode in ("dense", "keyword", "hybrid"):
                spec = SearchSpec(mode=mode, top_k=max(KS), kinds=("turns",))
                found = projection.search_vectors(TENANT, questions, vectors, spec)
                ranks = [
                    next((r for r, hit in enumerate(hits) if hit.ref == f"{s}-{i}"), None)
                    for (s, i, _, _), hits in zip(planted, found, strict=True)
                ]
                for group, member in (*groups.items(), ("all", [True] * len(ranks))):
                    mine = [r for r, m in zip(ranks, member, strict=True) if m]
                    recall[(side, group, mode)] = {
                        k: sum(1 for r in mine if r is not None and r < k) / len(mine) for k in KS
                    }
            projection.stores.close()
    print(
        f"retrieval: turns: {len(planted)} planted exchanges (half with terse answers) "
        f"among {len(events):,} turns of {sessions} sessions; the turn before added to a "
        "turn's keyword terms, its meaning vector, both, or neither"
    )
    for (side, group, mode), at in recall.items():
        if group == "all" or mode == "hybrid":
            figures = " / ".join(f"{100 * at[k]:3.0f}%" for k in KS)
            print(f"retrieval: turns, context {side:<7} {group:<9} {mode:<8} {figures}")
    return recall


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distractors", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--embedder", choices=("minilm", "hash"), default="minilm")
    parser.add_argument(
        "--indexed", action="store_true", help="build the shard's indexes before searching"
    )
    args = arguments(parser, smoke=dict(distractors=200, sessions=50, embedder="hash"))
    main(args.distractors, args.embedder, args.indexed)
    turns(args.sessions, args.embedder, args.indexed)
