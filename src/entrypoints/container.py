"""The composition root: settings in, a ChatService (and what the HTTP app needs) out.

This is the one map of what is wired to what. Tests override any provider with a
fake: ``container.agent.override(providers.Object(ScriptedAgent([...])))``.
Things with a lifetime (the engine, provider SDK clients) are Resources, started
and stopped by the app's lifespan through ``init_resources``/``shutdown_resources``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from dependency_injector import containers, providers
from litestar.stores.base import Store
from litestar.stores.memory import MemoryStore
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.observability.instrumented import (
    InstrumentedAgent,
    InstrumentedToolRegistry,
    InstrumentedUsagePolicy,
)
from chatcore.adapters.observability.metrics import ChatMetrics, pool_gauge_resource
from chatcore.adapters.observability.tracing import engine_tracing_resource, tracer_of, tracing_resource
from chatcore.adapters.sqlalchemy.alias_store import SqlAlchemyConversationAliases
from chatcore.adapters.sqlalchemy.conversation_reader import SqlAlchemyConversationReader
from chatcore.adapters.sqlalchemy.conversation_store import SqlAlchemyConversationStore
from chatcore.adapters.sqlalchemy.engine import create_engine, database_url_from
from chatcore.adapters.sqlalchemy.retention_store import SqlAlchemyRetentionStore
from chatcore.adapters.sqlalchemy.turn_claim_store import SqlAlchemyTurnClaimStore
from chatcore.adapters.sqlalchemy.turn_event_store import SqlAlchemyTurnEventStore
from chatcore.adapters.sqlalchemy.turn_notifications import AsyncpgTurnNotifications
from chatcore.adapters.sqlalchemy.usage_store import SqlAlchemyUsageStore
from chatcore.adapters.todo.ports import TaskStore
from chatcore.adapters.todo.prompt import TODO_SYSTEM_PROMPT
from chatcore.adapters.todo.sqlalchemy_store import SqlAlchemyTaskStore
from chatcore.adapters.todo.tools import todo_tools
from chatcore.conversations import ConversationHistory
from chatcore.entrypoints.extras import require_extras
from chatcore.entrypoints.http.errors import event_error_body
from chatcore.entrypoints.prices import load_prices
from chatcore.entrypoints.settings import Settings
from chatcore.entrypoints.verifiers import token_verifier
from chatcore.model import utcnow
from chatcore.ports import LLMAgent, ToolRegistry, TurnNotifications
from chatcore.retention import Janitor, RetentionPolicy
from chatcore.service import DEFAULT_SYSTEM_PROMPT, ChatPolicy, ChatService
from chatcore.streamed_turns import StreamPolicy
from chatcore.tools import CompositeToolRegistry
from chatcore.turn_events import TurnWatches
from chatcore.usage import Prices, StoredUsagePolicy, UsageHistory

if TYPE_CHECKING:
    from chatcore.adapters.anthropic.agent import AnthropicChatAgent
    from chatcore.adapters.openai.agent import OpenAIChatAgent

# The provider SDKs (OpenAI, Anthropic, MCP, Redis) are imported inside the factories below, only when the
# settings name them: each costs tens of MB per worker and seconds of start-up that a process not using it
# should not pay.

DEFAULT_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-6", "offline": "offline-todo"}
REDIS_TIMEOUT_SECONDS = 1.0
"""A slow Redis delays a request by at most this per call before the rate limiter lets it through."""


async def engine_resource(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(
        database_url_from(settings.database_url),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        schema=settings.db_schema,
    )
    try:
        yield engine
    finally:
        await engine.dispose()


async def agent_resource(settings: Settings) -> AsyncIterator[LLMAgent]:
    """The model named by CHATCORE_LLM; SDK clients are closed when the app stops."""
    if settings.llm == "offline":
        from chatcore.adapters.offline.agent import OfflineTodoAgent

        # In dev mode the offline agent's words arrive a little apart, so the chat page visibly streams.
        delay = settings.offline_word_delay_seconds
        yield OfflineTodoAgent(word_delay_seconds=(0.02 if settings.dev_mode else 0.0) if delay is None else delay)
        return
    provider: type[OpenAIChatAgent | AnthropicChatAgent]
    if settings.llm == "openai":
        from chatcore.adapters.openai.agent import OpenAIChatAgent

        provider = OpenAIChatAgent
    else:
        from chatcore.adapters.anthropic.agent import AnthropicChatAgent

        provider = AnthropicChatAgent
    api_key, base_url = (
        (settings.openai_api_key, settings.openai_base_url)
        if settings.llm == "openai"
        else (settings.anthropic_api_key, settings.anthropic_base_url)
    )
    from chatcore.adapters.providers.transports import provider_transport

    agent = provider(
        model=settings.model or DEFAULT_MODELS[settings.llm],
        # Local OpenAI-compatible servers need no key, but the SDKs insist on one.
        api_key=api_key or "not-needed-for-local-servers",
        base_url=base_url,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        timeout_seconds=settings.llm_timeout_seconds,
        max_retries=settings.llm_max_retries,
        transport=provider_transport(settings.llm_http, sdk=settings.llm),
    )
    try:
        yield agent
    finally:
        await agent.aclose()


async def tools_resource(settings: Settings, tasks: TaskStore) -> AsyncIterator[ToolRegistry]:
    """The todo tools (unless CHATCORE_TODO_TOOLS is off), plus the tools of the MCP servers in
    CHATCORE_MCP_SERVERS (their sessions closed at stop)."""
    todo: tuple[ToolRegistry, ...] = (todo_tools(tasks),) if settings.todo_tools else ()
    if not settings.mcp_servers:
        yield todo[0] if todo else CompositeToolRegistry()
        return
    from chatcore.adapters.mcp.config import parse_mcp_servers
    from chatcore.adapters.mcp.registry import McpToolRegistry

    mounted = McpToolRegistry(
        parse_mcp_servers(settings.mcp_servers), call_timeout_seconds=settings.mcp_call_timeout_seconds
    )
    try:
        yield CompositeToolRegistry(*todo, mounted)
    finally:
        await mounted.aclose()


async def rate_limit_store_resource(settings: Settings) -> AsyncIterator[Store | None]:
    """Where per-user request counts live: Redis (CHATCORE_REDIS_URL) so every replica shares them, else this
    process's memory; None when CHATCORE_RATE_LIMIT is off. Nothing connects until the first request."""
    if settings.rate_limit is None:
        yield None
        return
    if not settings.redis_url:
        yield MemoryStore()
        return
    from litestar.stores.redis import RedisStore
    from redis.asyncio import Redis

    client = Redis.from_url(
        settings.redis_url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS
    )
    try:
        yield RedisStore(client, namespace=f"{settings.redis_namespace}:rate-limit")
    finally:
        await client.aclose()


def chat_policy(settings: Settings) -> ChatPolicy:
    return ChatPolicy(
        history_limit=settings.history_limit,
        context_tokens=settings.context_tokens,
        max_tool_steps=settings.max_tool_steps,
        tool_timeout_seconds=settings.tool_timeout_seconds,
        # The container mounts the todo toolset (``tools_resource``), so its prompt is the default one.
        system_prompt=settings.system_prompt or (TODO_SYSTEM_PROMPT if settings.todo_tools else DEFAULT_SYSTEM_PROMPT),
        lease_seconds=settings.lease_seconds,
        turn_wait_seconds=settings.turn_wait_seconds,
        busy_policy=settings.busy_policy,
        idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
        approval_tools=frozenset(settings.approval_tools),
        approval_ttl_seconds=settings.approval_ttl_seconds,
        max_turn_tokens=settings.max_turn_tokens,
    )


def streamed_turns_policy(settings: Settings) -> StreamPolicy:
    """CHATCORE_SHUTDOWN_GRACE bounds both uvicorn's graceful shutdown and the streamed turns' own wait in it."""
    return StreamPolicy(shutdown_seconds=settings.shutdown_grace_seconds)


async def turn_notifications_resource(engine: AsyncEngine, policy: StreamPolicy) -> AsyncIterator[TurnNotifications]:
    """LISTEN/NOTIFY on PostgreSQL (one connection of this process's own); elsewhere (SQLite) watches that poll."""
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg":
        notifications = AsyncpgTurnNotifications(engine, poll_seconds=policy.poll_seconds)
        notifications.start()
        try:
            yield notifications
        finally:
            await notifications.aclose()
    else:
        yield TurnWatches(poll_seconds=policy.poll_seconds, listening=lambda: False)


def prices_of(settings: Settings) -> Prices | None:
    """The prices file's models (CHATCORE_PRICES), or None: every cost is then unknown (null)."""
    return None if settings.prices_path is None else load_prices(settings.prices_path)


def retention_policy(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy(
        event_retention_seconds=settings.event_retention_seconds,
        interval_seconds=settings.janitor_interval_seconds,
        lease_seconds=settings.lease_seconds,
    )


def _untraced(tracing: object | None) -> bool:
    return tracing is None


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)
    clock = providers.Object(utcnow)
    """What time it is for turns, leases and budget windows; tests override it to move time."""

    engine = providers.Resource(engine_resource, settings)
    tasks = providers.Singleton(SqlAlchemyTaskStore, engine)
    turn_events = providers.Singleton(SqlAlchemyTurnEventStore, engine)
    conversation_aliases = providers.Singleton(SqlAlchemyConversationAliases, engine)
    tools = providers.Resource(tools_resource, settings, tasks)
    agent = providers.Resource(agent_resource, settings)
    verifier = providers.Singleton(token_verifier, settings)
    policy = providers.Singleton(chat_policy, settings)
    stream_policy = providers.Singleton(streamed_turns_policy, settings)
    turn_notifications = providers.Resource(turn_notifications_resource, engine, stream_policy)
    rate_limit_store = providers.Resource(rate_limit_store_resource, settings)

    # Observability: a metrics registry per app; OTLP tracing only when configured. The service gets the agent
    # and tools wrapped in measuring decorators; overriding ``agent`` or ``tools`` in a test keeps them measured.
    metrics = providers.Singleton(ChatMetrics)
    pool_gauge = providers.Resource(pool_gauge_resource, metrics, engine)
    tracing = providers.Resource(tracing_resource, settings.provided.otlp_traces_endpoint)
    engine_tracing = providers.Resource(engine_tracing_resource, tracing, engine)
    tracer = providers.Callable(tracer_of, tracing)
    # With tracing on, the turn's statements stay in SQLAlchemy's execution layer, where they get their SQL spans.
    store = providers.Singleton(
        SqlAlchemyConversationStore, engine, asyncpg_statements=providers.Callable(_untraced, tracing)
    )
    claims = providers.Singleton(SqlAlchemyTurnClaimStore, engine)
    reader = providers.Singleton(SqlAlchemyConversationReader, engine)
    history = providers.Singleton(
        ConversationHistory, reader, store, approval_ttl_seconds=policy.provided.approval_ttl_seconds
    )
    observed_agent = providers.Singleton(InstrumentedAgent, agent, metrics, tracer)
    observed_tools = providers.Singleton(InstrumentedToolRegistry, tools, metrics, tracer)

    # Usage: recorded with each turn, read back per user; one budget for all users (CHATCORE_USER_TOKEN_BUDGET),
    # counted in the database every replica shares, and no database work at all without one.
    usage_store = providers.Singleton(
        SqlAlchemyUsageStore, engine, asyncpg_statements=providers.Callable(_untraced, tracing)
    )
    prices = providers.Singleton(prices_of, settings)
    usage_policy = providers.Singleton(
        InstrumentedUsagePolicy,
        providers.Singleton(StoredUsagePolicy, usage_store, settings.provided.user_token_budget),
        metrics,
    )
    usage_history = providers.Singleton(UsageHistory, usage_store, usage_policy, clock=clock)

    chat_service = providers.Singleton(
        ChatService,
        store=store,
        claims=claims,
        agent=observed_agent,
        verifier=verifier,
        tools=observed_tools,
        policy=policy,
        clock=clock,
        usage_policy=usage_policy,
        usage_store=usage_store,
        prices=prices,
        events=turn_events,
        error_body=providers.Object(event_error_body),
    )

    # Bounded storage: ``chatcore gc`` and the janitor each server runs (CHATCORE_JANITOR) delete what expired.
    retention = providers.Singleton(SqlAlchemyRetentionStore, engine)
    janitor = providers.Singleton(
        Janitor,
        retention,
        providers.Singleton(retention_policy, settings),
        error_body=providers.Object(event_error_body),
    )


def build_container(settings: Settings) -> Container:
    """The container for ``settings``; ``MissingExtra`` names the extra a setting needs that is not installed."""
    require_extras(settings)
    return Container(settings=settings)
