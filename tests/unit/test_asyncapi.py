"""The AsyncAPI document of the wire contract."""

from __future__ import annotations

import json
import re
from typing import Any

from memstream.schemas.asyncapi import asyncapi_document
from memstream.schemas.events import EVENT_TYPES
from memstream.schemas.queries import OPS


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_event_type_and_query_op_has_its_channel() -> None:
    """16 event channels on mem.{tenant}.<type>; 8 query channels, each with a reply."""
    doc = asyncapi_document("1.2.3")
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {f"mem.{{tenant}}.{t}" for t in EVENT_TYPES} < addresses
    assert {f"memq.{{tenant}}.{op}" for op in OPS} < addresses
    replies = [o for o in doc["operations"].values() if "reply" in o]
    assert len(OPS) == len(replies)
    assert ("3.0.0", "1.2.3") == (doc["asyncapi"], doc["info"]["version"])


def test_every_reference_resolves() -> None:
    """Each $ref in the document points at something the document holds."""
    doc = asyncapi_document()
    for ref in _refs(doc):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert isinstance(node, dict), ref


def test_payloads_are_the_contracts_types() -> None:
    """A payload names the contract's required fields, with ECMA-262 patterns."""
    schemas = asyncapi_document()["components"]["schemas"]
    knowledge = schemas["KnowledgeStored"]
    assert {"type", "id", "tenant", "agent", "ts", "memory_id", "domain", "content"} <= set(
        knowledge["required"]
    )
    assert "^[a-z0-9][a-z0-9_-]{0,62}$" == knowledge["properties"]["tenant"]["pattern"]
    text = json.dumps(schemas)
    assert not re.search(r"\\\\[AZ]", text)
    assert {"query", "queries", "top_k", "min_seq", "wait_ms"} <= set(
        schemas["SearchRequest"]["properties"]
    )
