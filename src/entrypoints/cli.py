"""The ``chatcore`` command: serve, migrate, gc, token, mcp-serve."""

from __future__ import annotations

import argparse
import math
import os
import secrets
import shlex
import sys
from collections.abc import Sequence

from chatcore.entrypoints.extras import MissingExtra, is_installed, require_extra, require_extras
from chatcore.entrypoints.settings import ConfigurationError, Settings

DEMO_USER_ID = "demo-user"
DEMO_EMAIL = "demo@example.com"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatcore", description="A stateless chat backend for tool-using assistants.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (each a whole app)")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="demo mode: make an ephemeral token secret if none is set and print a ready token",
    )
    serve.add_argument("--no-migrate", action="store_true", help="do not apply migrations before serving")

    commands.add_parser("migrate", help="apply database migrations")
    commands.add_parser(
        "gc",
        help="delete what has expired: events of turns that ended more than CHATCORE_EVENT_RETENTION ago (and "
        "those turns), Idempotency-Keys past their TTL",
    )

    mcp = commands.add_parser(
        "mcp-serve", help="serve the todo tools over MCP (streamable HTTP, bearer JWT per request)"
    )
    mcp.add_argument("--host", default="127.0.0.1")
    mcp.add_argument("--port", type=int, default=8001)

    token = commands.add_parser("token", help="mint an HS256 token with BETTER_AUTH_SECRET")
    token.add_argument("--user-id", required=True)
    token.add_argument("--email")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "migrate":
            return migrate()
        if args.command == "mcp-serve":
            return mcp_serve(args)
        if args.command == "gc":
            return collect_garbage()
        return token(args)
    except ConfigurationError as error:
        print(f"chatcore: configuration error: {error}", file=sys.stderr)
        return 2
    except MissingExtra as error:
        print(f"chatcore: {error}", file=sys.stderr)
        return 2


def migrate() -> int:
    from chatcore.adapters.sqlalchemy.engine import database_url_from
    from chatcore.adapters.sqlalchemy.migrate import run_migrations

    settings = Settings.from_env()
    run_migrations(database_url_from(settings.database_url), schema=settings.db_schema)
    print("chatcore: database is up to date")
    return 0


def collect_garbage() -> int:
    """Sweep until nothing expired is left, in short batches (safe beside running servers and their janitors)."""
    import asyncio

    from chatcore.adapters.sqlalchemy.engine import create_engine, database_url_from
    from chatcore.adapters.sqlalchemy.retention_store import SqlAlchemyRetentionStore
    from chatcore.entrypoints.http.errors import event_error_body
    from chatcore.errors import StoreUnavailable
    from chatcore.retention import Janitor, RetentionPolicy, Swept

    settings = Settings.from_env()
    policy = RetentionPolicy(
        event_retention_seconds=settings.event_retention_seconds, lease_seconds=settings.lease_seconds
    )

    async def sweep() -> Swept:
        engine = create_engine(database_url_from(settings.database_url), pool_size=1, schema=settings.db_schema)
        try:
            return await Janitor(SqlAlchemyRetentionStore(engine), policy, error_body=event_error_body).sweep()
        finally:
            await engine.dispose()

    try:
        swept = asyncio.run(sweep())
    except StoreUnavailable:
        print("chatcore gc: the database is unavailable; nothing more was deleted", file=sys.stderr)
        return 1
    print(
        f"chatcore gc: deleted {swept.turn_events} turn events, {swept.turns} turns and {swept.idempotency_keys} "
        f"idempotency keys (turns that ended more than {settings.event_retention_seconds:g} s ago); closed "
        f"{swept.dead_turns} dead turns"
    )
    return 0


def mcp_serve(args: argparse.Namespace) -> int:
    """The user's own todo tools for other agents (Claude Desktop, the OpenAI Agents SDK), bound to each token."""
    require_extra("mcp", "chatcore mcp-serve")
    from chatcore.adapters.mcp.server import create_mcp_asgi_app, run_mcp_server
    from chatcore.adapters.sqlalchemy.engine import create_engine, database_url_from
    from chatcore.adapters.sqlalchemy.migrate import run_migrations
    from chatcore.adapters.todo.sqlalchemy_store import SqlAlchemyTaskStore
    from chatcore.adapters.todo.tools import todo_tools
    from chatcore.entrypoints.verifiers import token_verifier

    settings = Settings.from_env()
    verifier = token_verifier(settings)
    url = database_url_from(settings.database_url)
    run_migrations(url, schema=settings.db_schema)
    engine = create_engine(
        url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow, schema=settings.db_schema
    )
    app = create_mcp_asgi_app(todo_tools(SqlAlchemyTaskStore(engine)), verifier, on_shutdown=[engine.dispose])
    print(f"chatcore MCP server on http://{args.host}:{args.port}/mcp", flush=True)
    run_mcp_server(app, host=args.host, port=args.port, log_level=settings.log_level.lower())
    return 0


def token(args: argparse.Namespace) -> int:
    from chatcore.adapters.auth.hs256 import mint_hs256_token

    settings = Settings.from_env()
    if not settings.auth_secret:
        raise ConfigurationError("BETTER_AUTH_SECRET is not set: there is no secret to sign a token with")
    if args.ttl <= 0:
        raise ConfigurationError("--ttl must be a positive number of seconds")
    print(
        mint_hs256_token(
            settings.auth_secret,
            user_id=args.user_id,
            email=args.email,
            ttl_seconds=args.ttl,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
        )
    )
    return 0


def serve(args: argparse.Namespace) -> int:
    require_extra("server", "chatcore serve")
    import uvicorn

    from chatcore.adapters.auth.hs256 import mint_hs256_token
    from chatcore.adapters.sqlalchemy.engine import database_url_from
    from chatcore.adapters.sqlalchemy.migrate import run_migrations
    from chatcore.entrypoints.logging import configure_logging

    if args.dev:
        os.environ["CHATCORE_DEV"] = "1"
        # The chat page shows the approval flow: deleting a task waits for Approve (unless the variable is given).
        os.environ.setdefault("CHATCORE_APPROVAL_TOOLS", "delete_task")
        if not os.environ.get("BETTER_AUTH_SECRET") and not os.environ.get("BETTER_AUTH_JWKS_URL"):
            # Workers read the environment, so the ephemeral secret travels there, never to a file.
            os.environ["BETTER_AUTH_SECRET"] = secrets.token_urlsafe(32)
    settings = Settings.from_env()
    if not settings.has_token_verifier:
        raise ConfigurationError(
            "no token secret configured: set BETTER_AUTH_SECRET (HS256) or BETTER_AUTH_JWKS_URL (Better Auth JWKS), "
            "or run `chatcore serve --dev` for a demo with an ephemeral secret"
        )
    require_extras(settings)  # before migrating: a worker would only fail with a traceback
    configure_logging(settings.log_level, settings.log_format, access_log=settings.access_log)
    if not args.no_migrate:
        run_migrations(database_url_from(settings.database_url), schema=settings.db_schema)
    if args.dev and settings.auth_secret:
        demo_token = mint_hs256_token(
            settings.auth_secret,
            user_id=DEMO_USER_ID,
            email=DEMO_EMAIL,
            ttl_seconds=24 * 3600,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
        )
        os.environ["CHATCORE_DEMO_TOKEN"] = demo_token
        base = f"http://{args.host}:{args.port}"
        body = shlex.quote('{"message": "Add a task to buy milk"}')
        print(
            f"\nchatcore dev server on {base}  (agent: {settings.llm})\n"
            f"demo token for user {DEMO_USER_ID!r} (valid 24 h):\n\n  {demo_token}\n\n"
            f"try it:\n\n  curl -s {base}/api/{DEMO_USER_ID}/chat \\\n"
            f"    -H 'Authorization: Bearer {demo_token}' \\\n"
            f"    -H 'Content-Type: application/json' -d {body}\n",
            flush=True,
        )
    uvicorn.run(
        "chatcore.entrypoints.http.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers if args.workers > 1 else None,
        log_level=settings.log_level.lower(),
        log_config=None,  # configure_logging's JSON handler stays in charge of uvicorn's loggers
        access_log=settings.access_log,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),  # in-flight turns finish first
        # The server extra brings uvloop and httptools, but not on every platform: the fast loop and parser if there.
        loop="uvloop" if is_installed("uvloop") else "asyncio",
        http="httptools" if is_installed("httptools") else "h11",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
