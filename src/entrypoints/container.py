"""The composition root: settings in, a ChatService (and what the HTTP app needs) out.

This is the one map of what is wired to what. Tests override any provider with a
fake: ``container.agent.override(providers.Object(ScriptedAgent([...])))``.
Things with a lifetime (the engine, provider SDK clients) are Resources, started
and stopped by the app's lifespan through ``init_resources``/``shutdown_resources``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from dependency_injector import containers, providers
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.anthropic.agent import AnthropicChatAgent
from chatcore.adapters.auth.composite import AlgorithmRoutingTokenVerifier
from chatcore.adapters.auth.hs256 import Hs256TokenVerifier
from chatcore.adapters.auth.jwks import JwksTokenVerifier
from chatcore.adapters.mcp.config import parse_mcp_servers
from chatcore.adapters.mcp.registry import McpToolRegistry
from chatcore.adapters.offline.agent import OfflineTodoAgent
from chatcore.adapters.openai.agent import OpenAIChatAgent
from chatcore.adapters.sqlalchemy.conversation_store import SqlAlchemyConversationStore
from chatcore.adapters.sqlalchemy.engine import create_engine, database_url_from
from chatcore.adapters.sqlalchemy.task_store import SqlAlchemyTaskStore
from chatcore.adapters.tools.composite import CompositeToolRegistry
from chatcore.adapters.tools.todo import TodoToolRegistry
from chatcore.entrypoints.settings import ConfigurationError, Settings
from chatcore.ports import LLMAgent, TaskStore, TokenVerifier, ToolRegistry
from chatcore.service import DEFAULT_SYSTEM_PROMPT, ChatPolicy, ChatService

DEFAULT_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-6", "offline": "offline-todo"}


async def engine_resource(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(
        database_url_from(settings.database_url),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
    )
    try:
        yield engine
    finally:
        await engine.dispose()


async def agent_resource(settings: Settings) -> AsyncIterator[LLMAgent]:
    """The model named by CHATCORE_LLM; SDK clients are closed when the app stops."""
    if settings.llm == "offline":
        yield OfflineTodoAgent()
        return
    provider = {"openai": OpenAIChatAgent, "anthropic": AnthropicChatAgent}[settings.llm]
    api_key, base_url = (
        (settings.openai_api_key, settings.openai_base_url)
        if settings.llm == "openai"
        else (settings.anthropic_api_key, settings.anthropic_base_url)
    )
    agent = provider(
        model=settings.model or DEFAULT_MODELS[settings.llm],
        # Local OpenAI-compatible servers need no key, but the SDKs insist on one.
        api_key=api_key or "not-needed-for-local-servers",
        base_url=base_url,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        timeout_seconds=settings.llm_timeout_seconds,
        max_retries=settings.llm_max_retries,
    )
    try:
        yield agent
    finally:
        await agent.aclose()


async def tools_resource(settings: Settings, tasks: TaskStore) -> AsyncIterator[ToolRegistry]:
    """The todo tools, plus the tools of the MCP servers in CHATCORE_MCP_SERVERS (their sessions closed at stop)."""
    todo = TodoToolRegistry(tasks)
    if not settings.mcp_servers:
        yield todo
        return
    mounted = McpToolRegistry(
        parse_mcp_servers(settings.mcp_servers), call_timeout_seconds=settings.mcp_call_timeout_seconds
    )
    try:
        yield CompositeToolRegistry(todo, mounted)
    finally:
        await mounted.aclose()


def token_verifier(settings: Settings) -> TokenVerifier:
    """HS256 with BETTER_AUTH_SECRET, JWKS with BETTER_AUTH_JWKS_URL, or both routed by each token's algorithm."""
    if not settings.has_token_verifier:
        raise ConfigurationError("Set BETTER_AUTH_SECRET or BETTER_AUTH_JWKS_URL to verify tokens")
    hs256 = (
        Hs256TokenVerifier(
            settings.auth_secret,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            leeway_seconds=settings.auth_leeway_seconds,
        )
        if settings.auth_secret
        else None
    )
    jwks = (
        JwksTokenVerifier(
            settings.jwks_url,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            leeway_seconds=settings.auth_leeway_seconds,
        )
        if settings.jwks_url
        else None
    )
    if hs256 and not jwks:
        return hs256
    return AlgorithmRoutingTokenVerifier(hs256=hs256, jwks=jwks)


def chat_policy(settings: Settings) -> ChatPolicy:
    return ChatPolicy(
        history_limit=settings.history_limit,
        context_tokens=settings.context_tokens,
        max_tool_steps=settings.max_tool_steps,
        tool_timeout_seconds=settings.tool_timeout_seconds,
        system_prompt=settings.system_prompt or DEFAULT_SYSTEM_PROMPT,
    )


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)

    engine = providers.Resource(engine_resource, settings)
    store = providers.Singleton(SqlAlchemyConversationStore, engine)
    tasks = providers.Singleton(SqlAlchemyTaskStore, engine)
    tools = providers.Resource(tools_resource, settings, tasks)
    agent = providers.Resource(agent_resource, settings)
    verifier = providers.Singleton(token_verifier, settings)
    policy = providers.Singleton(chat_policy, settings)

    chat_service = providers.Singleton(
        ChatService, store=store, agent=agent, verifier=verifier, tools=tools, policy=policy
    )


def build_container(settings: Settings) -> Container:
    return Container(settings=settings)
