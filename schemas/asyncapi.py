"""The wire contract as an AsyncAPI 3.0 document, made from the types in this package.

Every event type is a ``send`` operation on ``mem.{tenant}.<type>``; every query op is a
``send`` operation on ``memq.{tenant}.<op>`` with its reply. Payload schemas come from
the very msgspec Structs the SDK and the workers decode with, so the document cannot
drift from the code. (FastStream's generator reads pydantic signatures; with msgspec
Structs it would describe the payloads as empty objects.)
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from memstream.schemas import queries as q
from memstream.schemas.events import EVENT_TYPES
from memstream.schemas.ids import TENANT_PATTERN
from memstream.schemas.replies import ErrorBody

__all__ = ["asyncapi_document"]

_REF: Final = "#/components/schemas/{name}"
_RESULTS: Final[dict[str, type[Any]]] = {
    "search": q.SearchResult,
    "history": q.HistoryResult,
    "task": q.TaskResult,
    "context": q.ContextResult,
    "conversation": q.ConversationResult,
    "recall": q.RecallResult,
    "stats": q.StatsResult,
    "analytics": q.AnalyticsResult,
    "get": q.Memory,
    "list": q.ListResult,
    "revisions": q.RevisionsResult,
    "links": q.LinksResult,
    "outcome": q.OutcomeResult,
    "watch": q.WatchResult,
}


def _ecma(node: Any) -> Any:
    """Python's ``\\A...\\Z`` anchors as JSON Schema's (ECMA 262) ``^...$``."""
    if isinstance(node, dict):
        out = {k: _ecma(v) for k, v in node.items()}
        if isinstance(out.get("pattern"), str):
            out["pattern"] = re.sub(r"\\Z$", "$", re.sub(r"^\\A", "^", out["pattern"]))
        return out
    if isinstance(node, list):
        return [_ecma(v) for v in node]
    return node


def _name(tag: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[._]", tag))


def asyncapi_document(version: str = "0") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of events, queries and their replies."""
    events = list(EVENT_TYPES.items())
    ops = list(q.OPS.items())
    types: list[Any] = [cls for _, cls in events] + [cls for _, cls in ops]
    types += [*_RESULTS.values(), ErrorBody]
    _, schemas = msgspec.json.schema_components(types, ref_template=_REF)
    tenant = {"description": f"The tenant id, one subject token: {TENANT_PATTERN}"}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for tag, cls in events:
        name = _name(tag)
        messages[name] = {
            "name": tag,
            "title": tag,
            "summary": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else tag,
            "headers": {
                "type": "object",
                "properties": {"Nats-Msg-Id": {"type": "string", "description": "the event id"}},
            },
            "payload": {"$ref": _REF.format(name=cls.__name__)},
        }
        channels[f"event.{tag}"] = {
            "address": f"mem.{{tenant}}.{tag}",
            "parameters": {"tenant": tenant},
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"publish.{tag}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/event.{tag}"},
            "summary": f"Publish a {tag} event (JetStream stream MEMORY).",
        }
    for op, request_type in ops:
        request, reply = f"{_name(op)}Request", f"{_name(op)}Reply"
        messages[request] = {
            "name": request,
            "payload": {"$ref": _REF.format(name=request_type.__name__)},
        }
        messages[reply] = {
            "name": reply,
            "payload": {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {
                            "ok": {"const": True},
                            "result": {"$ref": _REF.format(name=_RESULTS[op].__name__)},
                        },
                        "required": ["ok", "result"],
                    },
                    {
                        "type": "object",
                        "properties": {
                            "ok": {"const": False},
                            "error": {"$ref": _REF.format(name="ErrorBody")},
                        },
                        "required": ["ok", "error"],
                    },
                ]
            },
        }
        channels[f"query.{op}"] = {
            "address": f"memq.{{tenant}}.{op}",
            "parameters": {"tenant": tenant},
            "messages": {request: {"$ref": f"#/components/messages/{request}"}},
        }
        channels[f"query.{op}.reply"] = {
            "address": None,  # the requester's inbox
            "messages": {reply: {"$ref": f"#/components/messages/{reply}"}},
        }
        operations[f"query.{op}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/query.{op}"},
            "reply": {"channel": {"$ref": f"#/channels/query.{op}.reply"}},
            "summary": f"Ask the query worker: {op}.",
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "memstream",
            "version": version,
            "description": "Event-sourced shared memory for multi-agent AI systems: events "
            "on mem.<tenant>.<type> (JetStream stream MEMORY), queries as request-reply on "
            "memq.<tenant>.<op>.",
        },
        "defaultContentType": "application/json",
        "servers": {"local": {"host": "127.0.0.1:4222", "protocol": "nats"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _ecma(schemas)},
    }
