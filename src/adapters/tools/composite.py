"""Several ToolRegistries mounted as one, so the service sees a single toolset."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from chatcore.errors import ToolError
from chatcore.model import JsonValue, Principal, ToolSpec
from chatcore.ports import ToolRegistry

logger = logging.getLogger("chatcore.tools")


class CompositeToolRegistry:
    """A ToolRegistry that lists the tools of every registry it wraps and routes each call to the owner.

    Registries are listed in the order given, and on a duplicate name the first one wins: the
    later tool is left out and a warning is logged (once per name and pair of registries).
    Duplicates are only known at listing time, because listing is async and a registry's tools
    (an MCP server's, say) may change while the app runs; refusing them then would fail every
    turn because a third-party server added a tool, so chatcore's own tools, mounted first, are
    kept and the operator is told. Every ``list_tools`` rebuilds the routing table; a call to a
    name the table does not know triggers one re-listing before it is refused.
    """

    def __init__(self, *registries: ToolRegistry) -> None:
        self.registries: tuple[ToolRegistry, ...] = registries
        self._owners: dict[str, ToolRegistry] = {}
        self._warned: set[tuple[str, int, int]] = set()

    async def list_tools(self) -> list[ToolSpec]:
        specs: list[ToolSpec] = []
        owners: dict[str, ToolRegistry] = {}
        first_at: dict[str, int] = {}
        for position, registry in enumerate(self.registries):
            for spec in await registry.list_tools():
                if spec.name in first_at:
                    self._warn_shadowed(spec.name, first_at[spec.name], position)
                    continue
                owners[spec.name], first_at[spec.name] = registry, position
                specs.append(spec)
        self._owners = owners
        return specs

    def _warn_shadowed(self, name: str, kept: int, shadowed: int) -> None:
        """One warning per name and pair of registries, not one per turn."""
        if (name, kept, shadowed) in self._warned:
            return
        self._warned.add((name, kept, shadowed))
        logger.warning(
            "tool %r is offered by both %s (registry %d) and %s (registry %d); the first is used, the other left out",
            name,
            type(self.registries[kept]).__name__,
            kept + 1,
            type(self.registries[shadowed]).__name__,
            shadowed + 1,
            extra={"event": "tool_name_conflict", "tool": name},
        )

    async def call(self, principal: Principal, name: str, arguments: Mapping[str, JsonValue]) -> JsonValue:
        owner = self._owners.get(name)
        if owner is None:
            await self.list_tools()
            owner = self._owners.get(name)
        if owner is None:
            raise ToolError(f"Unknown tool: {name!r}. Available tools: {', '.join(self._owners) or 'none'}.")
        return await owner.call(principal, name, arguments)
