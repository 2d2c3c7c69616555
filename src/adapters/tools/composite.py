"""Several ToolRegistries mounted as one, so the service sees a single toolset."""

from __future__ import annotations

from collections.abc import Mapping

from chatcore.errors import ToolError
from chatcore.model import JsonValue, Principal, ToolSpec
from chatcore.ports import ToolRegistry


class ToolNameConflict(RuntimeError):
    """Two mounted registries offer a tool of the same name: a configuration error, not the model's fault.

    Deliberately not a ChatError: it must fail loudly for the operator instead of becoming a tool result.
    """


class CompositeToolRegistry:
    """A ToolRegistry that lists the tools of every registry it wraps and routes each call to the owner.

    Duplicate names are detected at listing time, not construction, because listing is async
    and a registry's tools (an MCP server's, say) may change while the app runs: every
    ``list_tools`` rebuilds the routing table and raises ToolNameConflict on a duplicate.
    A call to a name the table does not know triggers one re-listing before it is refused.
    """

    def __init__(self, *registries: ToolRegistry) -> None:
        self.registries: tuple[ToolRegistry, ...] = registries
        self._owners: dict[str, ToolRegistry] = {}

    async def list_tools(self) -> list[ToolSpec]:
        specs: list[ToolSpec] = []
        owners: dict[str, ToolRegistry] = {}
        for registry in self.registries:
            for spec in await registry.list_tools():
                if spec.name in owners:
                    raise ToolNameConflict(
                        f"Tool {spec.name!r} is offered by both {type(owners[spec.name]).__name__} "
                        f"and {type(registry).__name__}; tool names must be unique across registries."
                    )
                owners[spec.name] = registry
                specs.append(spec)
        self._owners = owners
        return specs

    async def call(self, principal: Principal, name: str, arguments: Mapping[str, JsonValue]) -> JsonValue:
        owner = self._owners.get(name)
        if owner is None:
            await self.list_tools()
            owner = self._owners.get(name)
        if owner is None:
            raise ToolError(f"Unknown tool: {name!r}. Available tools: {', '.join(self._owners) or 'none'}.")
        return await owner.call(principal, name, arguments)
