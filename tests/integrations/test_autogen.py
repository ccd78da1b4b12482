"""MemstreamMemory against autogen_core's own Memory and model contexts."""

from __future__ import annotations

import pytest
from autogen_core.memory import Memory, MemoryContent, MemoryMimeType
from autogen_core.model_context import UnboundedChatCompletionContext
from autogen_core.models import SystemMessage, UserMessage

from memstream import SyncMemoryClient
from memstream.integrations.autogen import MemstreamMemory


def text(content: str, **metadata: object) -> MemoryContent:
    return MemoryContent(content=content, mime_type=MemoryMimeType.TEXT, metadata=metadata)


async def test_added_contents_are_found_by_query(mem: SyncMemoryClient) -> None:
    """query ranks by meaning and words; metadata and MIME type come back."""
    memory = MemstreamMemory(mem)
    assert isinstance(memory, Memory)
    await memory.add(text("the staging database is reset every night", source="ops"))
    await memory.add(text("the team lunch is on thursdays"))
    await memory.add(
        MemoryContent(
            content={"service": "gateway", "timeout_s": 30}, mime_type=MemoryMimeType.JSON
        )
    )
    found = (await memory.query("when is the staging database reset")).results
    assert "the staging database is reset every night" == found[0].content
    assert "ops" == found[0].metadata["source"]
    assert found[0].metadata["score"] > 0
    as_json = (await memory.query("gateway timeout", k=1)).results
    assert [{"service": "gateway", "timeout_s": 30}] == [r.content for r in as_json]
    assert "application/json" == as_json[0].mime_type
    assert [] == (await memory.query("")).results


async def test_update_context_adds_what_recall_returns(mem: SyncMemoryClient) -> None:
    """The latest message is the question; the recalled memory joins the context."""
    memory = MemstreamMemory(mem)
    await memory.add(text("deploys are frozen on fridays after 3 pm"))
    context = UnboundedChatCompletionContext()
    await context.add_message(UserMessage(content="can I deploy on friday?", source="user"))
    result = await memory.update_context(context)
    messages = await context.get_messages()
    assert isinstance(messages[-1], SystemMessage)
    assert "deploys are frozen on fridays" in messages[-1].content
    assert result.memories.results
    empty = UnboundedChatCompletionContext()
    assert [] == (await memory.update_context(empty)).memories.results
    assert [] == await empty.get_messages()


async def test_clear_forgets_only_this_domain(mem: SyncMemoryClient) -> None:
    """clear forgets the memory's own domain; other memories of the tenant stay."""
    memory = MemstreamMemory(mem, domain="autogen-team")
    await memory.add(text("a note to be cleared"))
    other = mem.store_knowledge("a note of another domain", domain="ops")
    await memory.clear()
    assert [] == (await memory.query("note")).results
    assert mem.search("note", domain="ops", min_seq=other.seq)
    await memory.close()


async def test_images_and_bytes_are_refused_with_a_reason(mem: SyncMemoryClient) -> None:
    """A content memstream cannot keep is a ValueError that says what to do."""
    memory = MemstreamMemory(mem)
    with pytest.raises(ValueError, match="text, Markdown and JSON"):
        await memory.add(MemoryContent(content=b"\x89PNG", mime_type=MemoryMimeType.BINARY))
