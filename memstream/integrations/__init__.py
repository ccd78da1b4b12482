"""memstream inside agent frameworks: each module implements one framework's own memory
interface over a memstream client, and is imported only when used (each has its extra:
``pip install 'memstream[langgraph]'``, ``[openai-agents]``, ``[autogen]``).

- :mod:`memstream.integrations.langgraph`: ``MemstreamStore``, a LangGraph ``BaseStore``.
- :mod:`memstream.integrations.openai_agents`: ``MemstreamSession``, a ``Session`` of the
  OpenAI Agents SDK, and ``MemstreamHooks``, which record tool calls and runs.
- :mod:`memstream.integrations.autogen`: ``MemstreamMemory``, an AutoGen ``Memory``.

Every adapter takes a :class:`~memstream.SyncMemoryClient`: it runs on a loop of its own,
so one client serves a framework's sync and async calls from any thread or event loop.
"""

__all__: list[str] = []
