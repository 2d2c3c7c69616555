"""CPU of one streamed model step in the agent alone: ``agent.stream`` against the fake provider, per step and chunk.

The fake provider (``tests/fake_providers``) runs in a child process, so the figure is the agent's own
CPU (``time.process_time`` of this process): the SDK's request, reading the event stream, decoding each
chunk and putting the step together. The reply is 1,600 characters in 100 chunks (``--chars``,
``--chunks``), sent as the provider's real wire format; the transport is what ``chatcore serve`` uses
(``--http aiohttp``, or ``httpx``).

    .venv/bin/python -m bench.agent_stream_cpu --provider openai --steps 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Literal

from chatcore.model import AgentRequest, AgentResponse, ChatMessage, TextDelta, ToolCall, ToolResult, ToolSpec

Provider = Literal["openai", "anthropic"]
ECHO = ToolSpec("echo", "Say the text back.", {"type": "object", "properties": {"text": {"type": "string"}}})
REPLY_PREFIX = 'Done. echo returned "'
"""The fake model answers a tool result with this, the result's text, and a closing quote."""


def request(chars: int) -> AgentRequest:
    """A step whose reply is ``chars`` characters: the fake model quotes the echo tool's result back."""
    text = ("lorem ipsum dolor sit amet " * (chars // 20 + 1))[: chars - len(REPLY_PREFIX) - 1]
    call = ToolCall("call_1", "echo", {"text": text})
    return AgentRequest(
        "You are a test.",
        (
            ChatMessage.user(f"echo {text}"),
            ChatMessage.assistant("", [call]),
            ChatMessage.tool_result(call, ToolResult(result=text)),
        ),
        (ECHO,),
    )


def serve(piece_chars: int) -> None:
    """The child: the fake provider until stdin closes; its URL on the first line of stdout."""
    from tests.fake_providers import FakeProviderServer

    with FakeProviderServer(stream_piece_chars=piece_chars) as server:
        print(server.url, flush=True)
        sys.stdin.read()


async def measure(provider: Provider, url: str, http: str, steps: int, chars: int) -> dict[str, float]:
    from chatcore.adapters.providers.transports import provider_transport

    agent_request = request(chars)
    transport = provider_transport(http, sdk=provider)  # type: ignore[arg-type]
    if provider == "openai":
        from chatcore.adapters.openai.agent import OpenAIChatAgent

        agent: OpenAIChatAgent | AnthropicChatAgent = OpenAIChatAgent(
            api_key="k", base_url=f"{url}/v1", transport=transport
        )
    else:
        from chatcore.adapters.anthropic.agent import AnthropicChatAgent

        agent = AnthropicChatAgent(api_key="k", base_url=url, transport=transport)
    try:
        events = [event async for event in agent.stream(agent_request)]  # warm up, and check the reply
        deltas = sum(isinstance(event, TextDelta) for event in events)
        final = events[-1]
        assert isinstance(final, AgentResponse)
        assert len(final.text) == chars, (len(final.text), chars)
        started = time.process_time()
        for _ in range(steps):
            async for _event in agent.stream(agent_request):
                pass
        spent = time.process_time() - started
    finally:
        await agent.aclose()
    return {
        "cpu_ms_per_step": round(spent / steps * 1000, 3),
        "cpu_us_per_chunk": round(spent / steps / deltas * 1e6, 2),
        "chunks": deltas,
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", choices=["openai", "anthropic"], default="openai")
    parser.add_argument("--http", choices=["aiohttp", "httpx"], default="aiohttp")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--chars", type=int, default=1600)
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--serve", type=int, metavar="PIECE_CHARS", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve:
        serve(arguments.serve)
        return
    piece_chars = -(-arguments.chars // arguments.chunks)
    child = subprocess.Popen(  # noqa: S603  # this very module, as the fake provider
        [sys.executable, "-m", "bench.agent_stream_cpu", "--serve", str(piece_chars)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        result = asyncio.run(measure(arguments.provider, url, arguments.http, arguments.steps, arguments.chars))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    print(json.dumps({"provider": arguments.provider, "http": arguments.http, **result}))


if __name__ == "__main__":
    main()
