"""AutoGen on memstream: ``MemstreamMemory``, an ``autogen_core`` ``Memory``.

Give it to an agent (``AssistantAgent(..., memory=[MemstreamMemory(mem)])``): what is
added becomes knowledge of ``domain`` ("autogen" by default), shared with every agent of
the tenant; before each model call, ``update_context`` asks memstream's ``recall`` for
what bears on the latest message and adds it to the model context as a system message.
"""

from __future__ import annotations

import json
from typing import Any, Final

try:
    from autogen_core import CancellationToken
    from autogen_core.memory import (
        Memory,
        MemoryContent,
        MemoryMimeType,
        MemoryQueryResult,
        UpdateContextResult,
    )
    from autogen_core.model_context import ChatCompletionContext
    from autogen_core.models import SystemMessage
except ImportError as err:  # the extra is not installed
    raise ImportError(
        f"memstream.integrations.autogen needs AutoGen (autogen-core) ({err}): "
        "pip install 'memstream[autogen]'"
    ) from err

from memstream.integrations._common import OwnWrites
from memstream.producers import MemoryClient, SyncMemoryClient

__all__ = ["MemstreamMemory"]

_TEXT_TYPES: Final = (MemoryMimeType.TEXT.value, MemoryMimeType.MARKDOWN.value)


class MemstreamMemory(Memory, OwnWrites):
    """An AutoGen ``Memory`` whose contents are memstream memories of ``domain``.

    ``client``: a :class:`~memstream.SyncMemoryClient`; the memory does not close it.
    ``top_k``: how many memories ``query`` returns unless told (``k=``).
    ``budget_chars``: the most ``update_context`` adds to the model context.
    Text, Markdown and JSON contents are kept; images and bytes are refused."""

    def __init__(
        self,
        client: SyncMemoryClient,
        *,
        domain: str = "autogen",
        top_k: int = 5,
        budget_chars: int = 4000,
    ) -> None:
        self.client = client
        self.domain = domain
        self.top_k = top_k
        self.budget_chars = budget_chars

    async def add(
        self, content: MemoryContent, cancellation_token: CancellationToken | None = None
    ) -> None:
        """Store ``content`` as a knowledge memory; its metadata and MIME type travel with it."""
        mime = str(getattr(content.mime_type, "value", content.mime_type))
        if isinstance(content.content, str) and mime in _TEXT_TYPES:
            text = content.content
        elif isinstance(content.content, dict) and mime == MemoryMimeType.JSON.value:
            text = _json_text(content.content)
        else:
            raise ValueError(
                f"MemstreamMemory keeps text, Markdown and JSON contents, not {mime}: store a "
                "description of it, or where it is kept"
            )
        own = {"mime_type": mime, "metadata": content.metadata or {}}
        if isinstance(content.content, dict):
            own["json"] = content.content

        async def add(mem: MemoryClient) -> None:
            ack = await mem.store_knowledge(text, domain=self.domain, metadata={"autogen": own})
            self._wrote(ack.seq)

        await self.client.arun(add)

    async def query(
        self,
        query: str | MemoryContent = "",
        cancellation_token: CancellationToken | None = None,
        **kwargs: Any,
    ) -> MemoryQueryResult:
        """The memories of the domain that best match ``query`` (hybrid search), best
        first; ``k=`` sets how many. Each result's metadata has its ``score`` and
        ``memory_id``."""
        text = query.content if isinstance(query, MemoryContent) else query
        if not isinstance(text, str) or not text.strip():
            return MemoryQueryResult(results=[])
        top_k = int(kwargs.get("k", self.top_k))

        async def search(mem: MemoryClient) -> MemoryQueryResult:
            hits = await mem.search(text, domain=self.domain, top_k=top_k, **self._reads())
            results = []
            for hit in hits:
                own = hit.metadata.get("autogen") or {}
                meta = {**own.get("metadata", {}), "score": hit.score, "memory_id": hit.memory_id}
                results.append(
                    MemoryContent(
                        content=own.get("json", hit.text),
                        mime_type=own.get("mime_type", MemoryMimeType.TEXT.value),
                        metadata=meta,
                    )
                )
            return MemoryQueryResult(results=results)

        return await self.client.arun(search)

    async def update_context(self, model_context: ChatCompletionContext) -> UpdateContextResult:
        """Add what memstream recalls for the latest message to ``model_context``, as a
        system message; nothing when nothing bears on it."""
        messages = await model_context.get_messages()
        latest: str | None = next(
            (c for m in reversed(messages) if isinstance(c := getattr(m, "content", None), str)),
            None,
        )
        if not latest:
            return UpdateContextResult(memories=MemoryQueryResult(results=[]))

        async def recall(mem: MemoryClient) -> tuple[str, list[MemoryContent]]:
            bundle = await mem.recall(
                latest, budget_chars=self.budget_chars, filter={"domain": self.domain},
                **self._reads(),
            )  # fmt: skip
            sources = [
                MemoryContent(
                    content=source.ref,
                    mime_type=MemoryMimeType.TEXT,
                    metadata={"kind": source.kind, "score": source.score, "seq": source.seq},
                )
                for source in bundle.sources
            ]
            return bundle.text, sources

        text, sources = await self.client.arun(recall)
        if not sources:
            return UpdateContextResult(memories=MemoryQueryResult(results=[]))
        await model_context.add_message(
            SystemMessage(content=f"What the team's memory holds on this:\n{text}")
        )
        return UpdateContextResult(memories=MemoryQueryResult(results=sources))

    async def clear(self) -> None:
        """Forget every memory of the domain (the log keeps them)."""

        async def clear(mem: MemoryClient) -> None:
            while True:
                page = await mem.list_memories(
                    filter={"domain": self.domain}, limit=1000, **self._reads()
                )
                if not page.memories:
                    return
                for memory in page.memories:
                    ack = await mem.forget(memory.memory_id, reason="cleared from AutoGen")
                    self._wrote(ack.seq)

        await self.client.arun(clear)

    async def close(self) -> None:
        """Nothing to release: the client belongs to whoever gave it."""


def _json_text(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
