"""A FastAPI shop that hosts chatcore: its own users, its own auth, its own data, and chatcore at /chat.

- ``user_for_token`` is the shop's authentication; the ``current_user`` dependency and chatcore's
  ``TokenVerifier`` (``ShopTokenVerifier``) both use it, so one token works on both APIs.
- ``list_orders`` and ``cancel_order`` are the shop's own functions, given to the model with ``@tool``.
- chatcore's conversations live in the shop's database (``DATABASE_URL``); on PostgreSQL in their own schema
  with ``CHATCORE_DB_SCHEMA``. Its migrations run when the app starts, in their own version table.

Run: ``python examples/fastapi_host/app.py`` (README.md beside this file).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException

from chatcore import Principal, ToolError, Unauthenticated
from chatcore.entrypoints.http import create_asgi_app
from chatcore.fakes import FunctionAgent
from chatcore.model import AgentRequest, AgentResponse, ToolCall
from chatcore.tools import tool

# --- The shop: users, auth, orders ----------------------------------------------------------------------------


@dataclass
class User:
    id: str
    email: str


@dataclass
class Order:
    id: int
    item: str
    status: str = "open"


TOKENS = {"alice-token": User("alice", "alice@example.com"), "bob-token": User("bob", "bob@example.com")}
ORDERS = {"alice": [Order(1, "espresso machine"), Order(2, "coffee beans")], "bob": [Order(3, "grinder")]}


def user_for_token(token: str) -> User | None:
    """The shop's one way to authenticate (a real shop would check a session or a JWT here)."""
    return TOKENS.get(token)


def current_user(authorization: Annotated[str, Header()] = "") -> User:
    user = user_for_token(authorization.removeprefix("Bearer ").strip())
    if user is None:
        raise HTTPException(status_code=401, detail="Invalid token")
    return user


class ShopTokenVerifier:
    """The shop's authentication as chatcore's ``TokenVerifier``: the same tokens, the same users."""

    async def verify(self, token: str) -> Principal:
        user = user_for_token(token)
        if user is None:
            raise Unauthenticated("Invalid token")
        return Principal(user_id=user.id, email=user.email)


# --- The shop's tools for the model ---------------------------------------------------------------------------


@tool
def list_orders(principal: Principal) -> list[Order]:
    """The user's orders, with their status."""
    return ORDERS.get(principal.user_id, [])


@tool
def cancel_order(principal: Principal, order_id: int) -> Order:
    """Cancel one of the user's open orders.

    Args:
        order_id: The order's number, as list_orders shows it.
    """
    for order in ORDERS.get(principal.user_id, []):
        if order.id == order_id:
            order.status = "cancelled"
            return order
    raise ToolError(f"You have no order {order_id}.")


def demo_model(request: AgentRequest) -> AgentResponse:
    """A stand-in model for trying the example without a provider key: it reads the user's words literally."""
    last = request.messages[-1]
    if last.role == "tool":
        return AgentResponse(f"Here is what the shop says: {last.content}")
    if wanted := re.search(r"cancel order (\d+)", last.content, re.IGNORECASE):
        arguments: dict[str, object] = {"order_id": int(wanted.group(1))}
        return AgentResponse("", (ToolCall(f"call-{uuid.uuid4().hex[:8]}", "cancel_order", arguments),))
    if "order" in last.content.lower():
        return AgentResponse("", (ToolCall(f"call-{uuid.uuid4().hex[:8]}", "list_orders", {}),))
    return AgentResponse("Ask me about your orders, or to cancel one.")


# --- The app --------------------------------------------------------------------------------------------------

chat = create_asgi_app(
    verifier=ShopTokenVerifier(),
    tools=[list_orders, cancel_order],
    # A real model when CHATCORE_LLM (and its key) is set, e.g. CHATCORE_LLM=openai OPENAI_API_KEY=sk-...
    agent=None if os.environ.get("CHATCORE_LLM") else FunctionAgent(demo_model),
)


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    async with chat.lifespan():  # FastAPI does not start a mounted app: chatcore starts and stops with the shop
        yield


app = FastAPI(title="Shop", lifespan=lifespan)
app.mount("/chat", chat)


@app.get("/orders")
def orders(user: Annotated[User, Depends(current_user)]) -> list[Order]:
    return ORDERS.get(user.id, [])


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")))
