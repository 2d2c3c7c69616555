"""A Litestar notes app that hosts chatcore with ``ChatcorePlugin``: chatcore's API at /chat, beside the app's own.

- The app signs its users' tokens itself (HS256, ``SECRET``); chatcore checks them with the app's verifier.
- ``add_note`` and ``list_notes`` are the app's own functions on its own table, given to the model with ``@tool``.
- One database and one engine for both (``DATABASE_URL``, default a SQLite file); on PostgreSQL chatcore's tables
  go to the schema ``CHATCORE_DB_SCHEMA`` names (or the ``schema=`` argument), the app's ``notes`` stay in its own.

Run: ``python examples/litestar_host/app.py`` (README.md beside this file).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from litestar import Litestar, Request, get, post
from litestar.exceptions import NotAuthorizedException
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select

from chatcore import Principal, Unauthenticated
from chatcore.adapters.auth.hs256 import Hs256TokenVerifier, mint_hs256_token
from chatcore.adapters.sqlalchemy.engine import create_engine
from chatcore.entrypoints.http import ChatcorePlugin
from chatcore.fakes import FunctionAgent
from chatcore.model import AgentRequest, AgentResponse, ToolCall
from chatcore.tools import tool

SECRET = os.environ.get("NOTES_SECRET", "notes-app-demo-secret-change-me-0123456789")
PASSWORDS = {"alice": "wonderland", "bob": "builder"}

# create_engine from chatcore: on SQLite it turns on WAL, a busy timeout and real transactions, which both need.
engine = create_engine(os.environ.get("DATABASE_URL", "sqlite:///./notes.db"))
verifier = Hs256TokenVerifier(SECRET)

metadata = MetaData()
notes = Table(
    "notes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", String(255), nullable=False, index=True),
    Column("text", String(1000), nullable=False),
)


@tool
async def add_note(principal: Principal, text: str) -> dict[str, object]:
    """Save a note for the user."""
    async with engine.begin() as connection:
        result = await connection.execute(insert(notes).values(user_id=principal.user_id, text=text))
    return {"id": result.inserted_primary_key[0], "text": text}


@tool
async def list_notes(principal: Principal) -> list[str]:
    """The user's notes, oldest first."""
    async with engine.connect() as connection:
        rows = await connection.execute(select(notes.c.text).where(notes.c.user_id == principal.user_id))
    return [text for (text,) in rows]


def demo_model(request: AgentRequest) -> AgentResponse:
    """A stand-in model for trying the example without a provider key: 'note: ...' saves, 'notes' lists."""
    last = request.messages[-1]
    if last.role == "tool":
        return AgentResponse(f"Done: {last.content}")
    call_id = f"call-{uuid.uuid4().hex[:8]}"
    if saved := re.match(r"\s*note:\s*(.+)", last.content, re.IGNORECASE | re.DOTALL):
        return AgentResponse("", (ToolCall(call_id, "add_note", {"text": saved.group(1).strip()}),))
    if "notes" in last.content.lower():
        return AgentResponse("", (ToolCall(call_id, "list_notes", {}),))
    return AgentResponse("Say 'note: ...' to save a note, or ask for your notes.")


async def principal_of(request: Request) -> Principal:
    try:
        return await verifier.verify(request.headers.get("Authorization", "").removeprefix("Bearer ").strip())
    except Unauthenticated as error:
        raise NotAuthorizedException("Invalid token") from error


@post("/login")
async def login(data: dict[str, str]) -> dict[str, str]:
    user = data.get("user", "")
    if PASSWORDS.get(user) != data.get("password"):
        raise NotAuthorizedException("Wrong user or password")
    return {"token": mint_hs256_token(SECRET, user_id=user, ttl_seconds=3600)}


@get("/notes")
async def my_notes(request: Request) -> list[str]:
    return list(await list_notes(await principal_of(request)))


@get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@asynccontextmanager
async def database(_app: Litestar) -> AsyncIterator[None]:
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)  # the app's own table; chatcore migrates its own
    try:
        yield
    finally:
        await engine.dispose()


app = Litestar(
    route_handlers=[login, my_notes, healthz],
    lifespan=[database],
    plugins=[
        ChatcorePlugin(
            path="/chat",
            verifier=verifier,
            tools=[add_note, list_notes],
            engine=engine,
            # A real model when CHATCORE_LLM (and its key) is set, e.g. CHATCORE_LLM=anthropic ANTHROPIC_API_KEY=...
            agent=None if os.environ.get("CHATCORE_LLM") else FunctionAgent(demo_model),
            schema=os.environ.get("CHATCORE_DB_SCHEMA") or None,
        )
    ],
)


if __name__ == "__main__":
    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")))
