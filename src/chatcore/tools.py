"""Tools from plain functions, and several tool registries mounted as one.

```python
from chatcore import Principal
from chatcore.tools import FunctionToolRegistry, tool

@tool
async def get_weather(city: str, unit: Literal["c", "f"] = "c") -> dict[str, object]:
    \"\"\"Current weather for a city.\"\"\"

@tool(requires_approval=True)
def cancel_order(principal: Principal, order_id: int, reason: str | None = None) -> str:
    \"\"\"Cancel one of the user's orders.\"\"\"

registry = FunctionToolRegistry([get_weather, cancel_order])
```

How a function becomes a tool, and why:

* **The schema is msgspec's** (``msgspec.json.schema_components``) for a Struct built from the signature,
  and the same Struct validates and converts the arguments (``msgspec.convert``), so what the model is
  told and what the function gets cannot drift apart. msgspec is the one library this domain module
  may use. The root is a plain ``"object"`` with ``"properties"``, ``"required"`` and
  ``"additionalProperties": false``; nested dataclasses, TypedDicts and Structs are inlined (only a
  recursive type keeps a ``$ref``, into the schema's own ``$defs``), because some providers resolve no
  references at all. An ``enum`` whose values share a JSON type also states ``"type"``.
* **Descriptions**: the tool's is the docstring's first paragraph (``description=`` overrides it); a
  parameter's comes from ``Annotated[T, msgspec.Meta(description=...)]``, else
  ``Annotated[T, "text"]``, else the docstring's ``Args:`` (Google), ``Parameters`` (NumPy) or
  ``:param x:`` (Sphinx) entry. The rest of the docstring is for the function's readers, not the model.
* **A parameter annotated ``Principal``** receives the caller's principal and is not in the schema, so
  no model can choose whose data a tool touches. ``Principal`` anywhere else in an annotation
  (``Principal | None``, ``list[Principal]``) is refused when the registry is built.
* **Arguments are read leniently where models are sloppy**: ``"3"`` and ``3.0`` for an integer,
  ``"true"`` for a boolean, a number with spaces around it. A parameter defaulting to ``msgspec.UNSET``
  (annotated ``T | msgspec.UnsetType``) is optional without being nullable, for a function that must
  tell "left out" from any value.
* **Failures are error results for the model, never a failed turn**: bad arguments are a ToolError
  naming the parameter; a ToolError the function raises reaches the model as it is; any other
  exception is logged and becomes the ToolError ``tool <name> failed unexpectedly``; a tool's own
  ``timeout=`` becomes ``tool <name> timed out after <n>s``. Other chatcore errors (StoreUnavailable)
  pass through for the service to judge. A sync function runs in a worker thread
  (``asyncio.to_thread``); when its timeout passes the turn goes on, but the thread runs to its end.
* **Results** are the function's return value made JSON by ``msgspec.to_builtins`` (dataclasses,
  Structs, datetimes, UUIDs, sets, enums).

When several registries offer the same tool name, ``ToolRouter`` is the one rule both
CompositeToolRegistry and the MCP registry follow: the first offer wins, the later one is left out and
a warning is logged once per name and pair.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import inspect
import logging
import re
import types
import typing
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any, Final, Generic, Literal, TypeVar, overload

import msgspec

from chatcore.errors import ChatError, ToolError
from chatcore.model import JsonValue, Principal, ToolSpec
from chatcore.ports import ToolRegistry

__all__ = [
    "PROVIDER_TOOL_NAME",
    "CompositeToolRegistry",
    "FunctionToolRegistry",
    "ToolOffer",
    "ToolOptions",
    "ToolRouter",
    "tool",
    "unknown_tool",
]

logger = logging.getLogger("chatcore.tools")

PROVIDER_TOOL_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""The tool names every model provider accepts (OpenAI's rule, the strictest)."""
MAX_ERROR_LENGTH: Final = 240
"""An argument error is cut here, so a huge argument is not echoed back into the model's context."""

F = TypeVar("F", bound=Callable[..., Any])
Owner = TypeVar("Owner")

_OPTIONS_ATTRIBUTE: Final = "__chatcore_tool__"


# --- The decorator ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ToolOptions:
    """What ``@tool(...)`` says about a function; a function without the decorator gets the defaults."""

    name: str | None = None
    """The tool's name; the function's ``__name__`` by default."""
    description: str | None = None
    """What the model is told the tool does; the docstring's first paragraph by default."""
    requires_approval: bool = False
    """A call waits for the user's approval before it runs (``ToolSpec.requires_approval``)."""
    timeout: float | None = None
    """Seconds a call may take before it becomes an error result; None leaves it to the service's limit."""

    def __post_init__(self) -> None:
        if self.name is not None and not PROVIDER_TOOL_NAME.fullmatch(self.name):
            raise ValueError(f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")


@overload
def tool(function: F, /) -> F: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    requires_approval: bool = False,
    timeout: float | None = None,
) -> Callable[[F], F]: ...


def tool(
    function: F | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    requires_approval: bool = False,
    timeout: float | None = None,
) -> F | Callable[[F], F]:
    """Mark a function as a tool, bare (``@tool``) or with options (``@tool(requires_approval=True)``).

    The function is returned unchanged (its options ride along as an attribute), so direct calls and
    their types stay as they were; ``FunctionToolRegistry`` reads the signature when it is built.
    """
    options = ToolOptions(name=name, description=description, requires_approval=requires_approval, timeout=timeout)

    def mark(function: F) -> F:
        if not callable(function):
            raise TypeError(f"@tool decorates a function, not {type(function).__name__}")
        setattr(function, _OPTIONS_ATTRIBUTE, options)
        return function

    return mark if function is None else mark(function)


# --- The registry ----------------------------------------------------------------------------------------------


class FunctionToolRegistry:
    """A ToolRegistry of plain functions (decorated with ``@tool`` or not), see the module docstring.

    Every signature is read when the registry is built: an unsupported annotation, a duplicate name or a
    tool without a description is a TypeError/ValueError then, not at the model's first call. The
    registry keeps no state between calls; whose data a call touches is the ``Principal`` it is given.
    """

    def __init__(self, functions: Iterable[Callable[..., Any]]) -> None:
        self._tools: dict[str, _FunctionTool] = {}
        for function in functions:
            built = _FunctionTool.build(function)
            if built.spec.name in self._tools:
                raise ValueError(f"two tools are named {built.spec.name!r}; pass name= to @tool to tell them apart")
            self._tools[built.spec.name] = built

    def __repr__(self) -> str:
        return f"FunctionToolRegistry({list(self._tools)!r})"

    async def list_tools(self) -> list[ToolSpec]:
        return [built.spec for built in self._tools.values()]

    async def call(self, principal: Principal, name: str, arguments: Mapping[str, JsonValue]) -> JsonValue:
        built = self._tools.get(name)
        if built is None:
            raise unknown_tool(name, self._tools)
        return await built.call(principal, arguments)


@dataclasses.dataclass(frozen=True, slots=True)
class _FunctionTool:
    spec: ToolSpec
    function: Callable[..., Any]
    arguments: type[msgspec.Struct]
    """Validates and converts the model's arguments; its fields are the schema's properties."""
    positional: tuple[str, ...]
    """Positional-only parameters, passed by position in this order (the rest by keyword)."""
    principal: tuple[str, ...]
    """The parameters that receive the caller's Principal."""
    lenient: frozenset[str]
    """Number and boolean parameters, whose string values are stripped of surrounding whitespace."""
    is_async: bool
    timeout: float | None

    @classmethod
    def build(cls, function: Callable[..., Any]) -> _FunctionTool:
        options: ToolOptions = getattr(function, _OPTIONS_ATTRIBUTE, None) or ToolOptions()
        name: str = options.name or getattr(function, "__name__", None) or ""
        if not PROVIDER_TOOL_NAME.fullmatch(name):
            raise ValueError(
                f"{function!r} needs a tool name of 1-64 letters, digits, '_' or '-': pass @tool(name=...)"
            )
        doc = _Docstring.parse(inspect.getdoc(function) or "")
        description = options.description if options.description is not None else doc.summary
        if not description.strip():
            raise ValueError(f"tool {name!r} has no description: give it a docstring or @tool(description=...)")

        hints = _type_hints(function)
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        positional: list[str] = []
        principal: list[str] = []
        lenient: set[str] = set()
        notes: dict[str, str] = {}
        orders: list[tuple[Any, ...]] = []
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise TypeError(
                    f"tool {name!r}: *{parameter.name} and **{parameter.name} cannot be described to a model"
                )
            annotation = hints.get(parameter.name, Any)
            if _is_principal(annotation):
                principal.append(parameter.name)
                continue
            if _mentions_principal(annotation):
                raise TypeError(
                    f"tool {name!r}: parameter {parameter.name!r} mentions Principal; only a parameter annotated "
                    "exactly `Principal` receives it, and a model must never choose one"
                )
            if parameter.kind is parameter.POSITIONAL_ONLY:
                positional.append(parameter.name)
            if _is_lenient(annotation):
                lenient.add(parameter.name)
            orders.extend(_declared_orders(annotation, set()))
            note = _annotated_text(annotation) or doc.parameters.get(parameter.name)
            if note:
                notes[parameter.name] = note
            if parameter.default is parameter.empty:
                fields.append((parameter.name, annotation))
            else:
                fields.append((parameter.name, annotation, _struct_default(parameter.default)))

        struct_name = f"{name}_arguments"
        try:
            arguments = msgspec.defstruct(struct_name, fields, kw_only=True, forbid_unknown_fields=True)
            schema = _parameters_schema(arguments, notes, orders)
        except (TypeError, ValueError) as error:
            raise TypeError(f"tool {name!r}: its parameters cannot be described as JSON: {error}") from error
        return cls(
            spec=ToolSpec(
                name=name,
                description=description.strip(),
                parameters=schema,
                requires_approval=options.requires_approval,
            ),
            function=function,
            arguments=arguments,
            positional=tuple(positional),
            principal=tuple(principal),
            lenient=frozenset(lenient),
            is_async=_is_async(function),
            timeout=options.timeout,
        )

    async def call(self, principal: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
        name = self.spec.name
        if not isinstance(arguments, Mapping):
            raise ToolError(f"Arguments for {name} must be a JSON object.")
        values = {
            key: value.strip() if key in self.lenient and isinstance(value, str) else value
            for key, value in arguments.items()
        }
        try:
            converted = msgspec.convert(values, self.arguments, strict=False)
        except msgspec.ValidationError as error:
            detail = f"Invalid arguments for {name}: {_explain(str(error), self.spec.parameters)}"
            raise ToolError(_shorten(detail)) from None
        keywords = {field: _complete(getattr(converted, field)) for field in self.arguments.__struct_fields__}
        keywords.update(dict.fromkeys(self.principal, principal))
        args = [keywords.pop(field) for field in self.positional]
        try:
            async with asyncio.timeout(self.timeout) as deadline:
                if self.is_async:
                    result = await self.function(*args, **keywords)
                else:
                    result = await asyncio.to_thread(self.function, *args, **keywords)
        except ChatError:
            raise  # a ToolError is the model's to hear; StoreUnavailable and the like are the service's to judge
        except TimeoutError:
            if deadline.expired():
                raise ToolError(f"tool {name} timed out after {self.timeout:g}s") from None
            logger.exception("tool %s raised", name, extra={"event": "tool_error", "tool": name})
            raise ToolError(f"tool {name} failed unexpectedly") from None
        except Exception:
            logger.exception("tool %s raised", name, extra={"event": "tool_error", "tool": name})
            raise ToolError(f"tool {name} failed unexpectedly") from None
        try:
            return msgspec.to_builtins(result, str_keys=True)
        except (TypeError, ValueError):
            logger.exception(
                "tool %s returned a value that is not JSON", name, extra={"event": "tool_error", "tool": name}
            )
            raise ToolError(f"tool {name} failed unexpectedly") from None


def _complete(value: Any) -> Any:
    """``value`` with every dataclass in it holding all its fields in ``__dict__``.

    msgspec.convert leaves a defaulted field it was not given out of a dataclass's ``__dict__`` (reading it
    falls back to the class attribute), so ``vars()`` and ``msgspec.to_builtins`` would miss it: a tool
    that returned its own argument would lose fields.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        state = getattr(value, "__dict__", None)
        for field in dataclasses.fields(value):
            if state is not None and field.name not in state:
                object.__setattr__(value, field.name, getattr(value, field.name))
            _complete(getattr(value, field.name))
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            _complete(getattr(value, name))
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _complete(item)
    elif isinstance(value, dict):
        for item in value.values():
            _complete(item)
    return value


def unknown_tool(name: str, available: Iterable[str]) -> ToolError:
    """The error for a call to a tool no registry offers; it lists the tools the model may use instead."""
    return ToolError(f"Unknown tool: {name!r}. Available tools: {', '.join(available) or 'none'}.")


# --- Reading a signature ---------------------------------------------------------------------------------------


def _type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    """The parameters' resolved annotations (``Annotated`` kept), also for a partial or a callable object."""
    target: Any = function
    while isinstance(target, functools.partial):
        target = target.func
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = type(target).__call__
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception as error:
        raise TypeError(f"the annotations of {function!r} cannot be resolved: {error}") from error


def _is_async(function: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(type(function).__call__)


def _unannotated(annotation: Any) -> Any:
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation


def _is_principal(annotation: Any) -> bool:
    return _unannotated(annotation) is Principal


def _mentions_principal(annotation: Any) -> bool:
    return annotation is Principal or any(_mentions_principal(arg) for arg in typing.get_args(annotation))


def _is_lenient(annotation: Any) -> bool:
    """A number or boolean parameter (optional or not): a model may send it as text with spaces around."""
    plain = _unannotated(annotation)
    if typing.get_origin(plain) in (typing.Union, types.UnionType):
        return all(_is_lenient(arg) for arg in typing.get_args(plain) if arg not in (type(None), msgspec.UnsetType))
    return plain in (int, float, bool)


def _declared_orders(annotation: Any, seen: set[Any]) -> Iterator[tuple[Any, ...]]:
    """The values of every Literal and Enum in ``annotation`` (and in the fields of the classes it names), in
    the order they were written: msgspec sorts an ``enum``'s values, the schema keeps the author's order."""
    plain = _unannotated(annotation)
    if typing.get_origin(plain) is Literal:
        yield typing.get_args(plain)
        return
    if isinstance(plain, type) and issubclass(plain, enum.Enum):
        yield tuple(member.value for member in plain)
        return
    if isinstance(plain, type) and plain not in seen and _has_fields(plain):
        seen.add(plain)
        try:
            fields = list(typing.get_type_hints(plain, include_extras=True).values())
        except Exception:  # msgspec will say what is wrong with the class, or describe it anyway
            fields = []
        for field in fields:
            yield from _declared_orders(field, seen)
        return
    for argument in typing.get_args(plain):
        yield from _declared_orders(argument, seen)


def _has_fields(cls: type) -> bool:
    return dataclasses.is_dataclass(cls) or issubclass(cls, msgspec.Struct) or typing.is_typeddict(cls)


def _annotated_text(annotation: Any) -> str | None:
    """The description in ``Annotated[T, "text"]``, if a plain string is among the metadata."""
    if typing.get_origin(annotation) is not Annotated:
        return None
    return next((item for item in annotation.__metadata__ if isinstance(item, str)), None)


def _struct_default(default: Any) -> Any:
    """A Struct refuses a mutable default (a list with items, a dict); such a default is copied per call."""
    if isinstance(default, list | dict | set | bytearray) and default:
        return msgspec.field(default_factory=functools.partial(_copy, default))
    return default


def _copy(value: Any) -> Any:
    return msgspec.convert(msgspec.to_builtins(value), type(value))


@dataclasses.dataclass(frozen=True, slots=True)
class _Docstring:
    """The parts of a docstring a tool needs: its first paragraph and each parameter's description."""

    summary: str
    parameters: dict[str, str]

    _GOOGLE_SECTION = re.compile(r"(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments):\s*")
    _OTHER_SECTION = re.compile(
        r"(Returns?|Yields?|Raises|Examples?|Notes?|See Also|Warnings?|Attributes|Todo|References)(:\s*)?"
    )
    _GOOGLE_ITEM = re.compile(r"\*{0,2}(?P<name>\w+)\s*(\([^)]*\))?\s*:\s*(?P<text>.*)")
    _NUMPY_ITEM = re.compile(r"(?P<name>\w+)\s*(:.*)?")
    _SPHINX_ITEM = re.compile(r":param\s+(?:[^:]*\s)?(?P<name>\w+)\s*:\s*(?P<text>.*)")
    _UNDERLINE = re.compile(r"-{3,}\s*")

    @classmethod
    def parse(cls, text: str) -> _Docstring:
        lines = text.splitlines()
        summary: list[str] = []
        for line in lines:
            if not line.strip() or cls._is_section(line) or line.lstrip().startswith(":"):
                break
            summary.append(line.strip())
        return cls(summary=" ".join(summary), parameters=dict(cls._parameters(lines)))

    @classmethod
    def _is_section(cls, line: str) -> bool:
        stripped = line.strip()
        return bool(cls._GOOGLE_SECTION.fullmatch(stripped) or cls._OTHER_SECTION.fullmatch(stripped))

    @classmethod
    def _parameters(cls, lines: list[str]) -> Iterator[tuple[str, str]]:
        index = 0
        while index < len(lines):
            line = lines[index]
            stripped = line.strip()
            if sphinx := cls._SPHINX_ITEM.fullmatch(stripped):
                block = [sphinx["text"]]
                index += 1
                while index < len(lines) and lines[index].strip() and not lines[index].strip().startswith(":"):
                    block.append(lines[index].strip())
                    index += 1
                yield sphinx["name"], " ".join(block).strip()
                continue
            numpy = (
                stripped in ("Parameters", "Other Parameters")
                and index + 1 < len(lines)
                and cls._UNDERLINE.fullmatch(lines[index + 1].strip())
            )
            if cls._GOOGLE_SECTION.fullmatch(stripped) or numpy:
                index += 2 if numpy else 1
                index = yield from cls._items(lines, index, numpy=bool(numpy))
                continue
            index += 1

    @classmethod
    def _items(cls, lines: list[str], index: int, *, numpy: bool) -> Generator[tuple[str, str], None, int]:
        """The entries of one parameter section, up to its end; returns where the section ends."""
        base: int | None = None
        name: str | None = None
        block: list[str] = []
        while index < len(lines):
            line = lines[index]
            indent = len(line) - len(line.lstrip())
            if not line.strip():
                if numpy and index + 1 < len(lines) and cls._UNDERLINE.fullmatch(lines[index + 1].strip()):
                    break
                index += 1
                continue
            if base is None:
                base = indent
            if indent < base or (
                numpy and index + 1 < len(lines) and cls._UNDERLINE.fullmatch(lines[index + 1].strip())
            ):
                break
            if indent == base:
                item = (cls._NUMPY_ITEM if numpy else cls._GOOGLE_ITEM).fullmatch(line.strip())
                if item is None:
                    break
                if name is not None:
                    yield name, " ".join(block).strip()
                name, block = item["name"], [] if numpy else [item["text"]]
            else:
                block.append(line.strip())
            index += 1
        if name is not None:
            yield name, " ".join(block).strip()
        return index


# --- The schema --------------------------------------------------------------------------------------------------

_DEFS_PREFIX: Final = "#/$defs/"
_SUBSCHEMA_MAPS: Final = ("properties", "$defs", "patternProperties", "dependentSchemas")
_SUBSCHEMA_LISTS: Final = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_VALUES: Final = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else")


def _parameters_schema(
    arguments: type[msgspec.Struct], notes: Mapping[str, str], orders: Sequence[tuple[Any, ...]]
) -> dict[str, JsonValue]:
    """The arguments Struct's JSON schema as providers take it: an object at the root, references inlined,
    enums in their declared order (``orders``), parameters described by ``notes`` where msgspec had nothing."""
    _, components = msgspec.json.schema_components([arguments], ref_template=_DEFS_PREFIX + "{name}")
    root = dict(components.pop(arguments.__name__))
    root.pop("title", None)
    recursive: dict[str, Any] = {}
    inline = functools.partial(_inline, components=components, recursive=recursive, orders=orders)
    schema = inline(root, stack=())
    while unbuilt := [name for name, built in recursive.items() if built is None]:
        for name in unbuilt:
            recursive[name] = inline(components[name], stack=(name,))
    if recursive:
        schema["$defs"] = recursive
    schema.setdefault("required", [])
    for name, note in notes.items():
        schema["properties"][name].setdefault("description", note)
    return schema


def _inline(
    schema: Mapping[str, Any],
    *,
    stack: tuple[str, ...],
    components: Mapping[str, Any],
    recursive: dict[str, Any],
    orders: Sequence[tuple[Any, ...]],
) -> dict[str, Any]:
    """``schema`` with every ``$ref`` replaced by its component, except a reference back into a component
    being inlined (a recursive type), which stays and puts the component in ``recursive`` (None until built).
    An ``enum`` is put back in its declared order and, when its values share one JSON type, states it."""
    inline = functools.partial(_inline, stack=stack, components=components, recursive=recursive, orders=orders)
    reference = schema.get("$ref")
    if isinstance(reference, str) and reference.startswith(_DEFS_PREFIX):
        name = reference.removeprefix(_DEFS_PREFIX)
        if name in stack:
            recursive.setdefault(name, None)
            return dict(schema)
        siblings = {key: value for key, value in schema.items() if key != "$ref"}
        return {**inline(components[name], stack=(*stack, name)), **siblings}
    inlined: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SUBSCHEMA_MAPS and isinstance(value, Mapping):
            inlined[key] = {name: inline(item) for name, item in value.items()}
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            inlined[key] = [inline(item) for item in value]
        elif key in _SUBSCHEMA_VALUES and isinstance(value, Mapping):
            inlined[key] = inline(value)
        else:
            inlined[key] = value
    if isinstance(values := inlined.get("enum"), list):
        inlined["enum"] = next((list(order) for order in orders if _same_values(order, values)), values)
        if "type" not in inlined and (kind := _json_type(values)) is not None:
            inlined["type"] = kind
    return inlined


def _same_values(declared: tuple[Any, ...], listed: list[Any]) -> bool:
    """Whether msgspec's enum lists exactly the declared values (an Enum's are its members' values)."""
    plain = [value.value if isinstance(value, enum.Enum) else value for value in declared]
    return sorted(map(repr, plain)) == sorted(map(repr, listed))


def _json_type(values: Sequence[Any]) -> str | None:
    kinds = {
        "boolean"
        if isinstance(v, bool)
        else "integer"
        if isinstance(v, int)
        else "string"
        if isinstance(v, str)
        else ""
        for v in values
    }
    return kinds.pop() if len(kinds) == 1 and "" not in kinds else None


# --- Telling the model what was wrong ----------------------------------------------------------------------------

_AT_PATH = re.compile(r"(?P<message>.*) - at `\$(?P<path>[^`]*)`", re.DOTALL)
_WRONG_TYPE = re.compile(r"Expected `(?P<expected>[^`]+)`, got `(?P<got>[^`]+)`")
_OUT_OF_BOUNDS = re.compile(r"Expected `(?P<kind>int|float)` (?P<op>>=|>|<=|<) (?P<bound>\S+)")
_LENGTH = re.compile(r"Expected `(?P<kind>str|array|object)` of length (?P<op>>=|<=) (?P<bound>\d+)")
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`")
_BAD_ENUM = re.compile(r"Invalid enum value (?P<value>.+)", re.DOTALL)
_OUT_OF_RANGE = re.compile(r"(Integer value|Number) out of range")
_KINDS: Final = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "a boolean",
    "null": "null",
    "array": "an array",
    "object": "an object",
}
_UNITS: Final = {"str": "characters", "array": "items", "object": "entries"}


def _explain(message: str, schema: Mapping[str, Any]) -> str:
    """msgspec's validation message, told as a model understands it, naming the parameter (``a.b[0]``)."""
    path = ""
    if at := _AT_PATH.fullmatch(message):
        message, path = at["message"], at["path"].removeprefix(".")
    field = path or "the arguments"
    if match := _WRONG_TYPE.fullmatch(message):
        return f"{field} must be {_kind(match['expected'])}, not {_kind(match['got'])}"
    if match := _OUT_OF_BOUNDS.fullmatch(message):
        limit = "minimum" if match["op"].startswith(">") else "maximum"
        return f"{field} must be {_kind(match['kind'])} {match['op']} {match['bound']} (the {limit})"
    if match := _LENGTH.fullmatch(message):
        bound, unit = int(match["bound"]), _UNITS[match["kind"]]
        if match["op"] == ">=" and bound == 1:
            return f"{field} must not be empty"
        if match["op"] == ">=":
            return f"{field} is too short: it must be at least {bound} {unit} long"
        return f"{field} is too long: it must be at most {bound} {unit} long"
    if match := _MISSING.fullmatch(message):
        where = f"{path}.{match['field']}" if path else match["field"]
        return f"{where} is required"
    if match := _UNKNOWN.fullmatch(message):
        if path:
            return f"{path} has no field {match['field']!r}"
        known = ", ".join(schema.get("properties", {})) or "none"
        return f"unknown argument {match['field']!r} (the parameters are: {known})"
    if match := _BAD_ENUM.fullmatch(message):
        allowed = schema.get("properties", {}).get(path, {}).get("enum") if "." not in path else None
        choices = f"one of {', '.join(map(repr, allowed))}" if allowed else "one of the allowed values"
        return f"{field} must be {choices}, not {match['value']}"
    if _OUT_OF_RANGE.fullmatch(message):
        return f"{field} is out of range"
    return f"{field}: {message}" if path else message


def _kind(names: str) -> str:
    return " or ".join(_KINDS.get(name.strip(), f"`{name.strip()}`") for name in names.split("|"))


def _shorten(detail: str) -> str:
    return detail if len(detail) <= MAX_ERROR_LENGTH else detail[: MAX_ERROR_LENGTH - 1] + "…"


# --- Several registries as one -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ToolOffer(Generic[Owner]):
    """The tools one owner (a registry, an MCP server) offers; ``label`` names it in the log."""

    owner: Owner
    label: str
    tools: Sequence[ToolSpec]


class ToolRouter(Generic[Owner]):
    """The one rule for a tool name offered twice, and the table that routes each call to its tool's owner.

    Offers are read in the order given and the first one wins: a later tool of the same name is left out
    and a warning is logged, once per name and pair of owners rather than once per turn. Duplicates are
    only known when the tools are listed, because listing is async and a registry's tools (an MCP
    server's, say) may change while the app runs; refusing them then would fail every turn because a
    third-party server added a tool, so the owner mounted first (chatcore's own tools) keeps the name and
    the operator is told. ``owners`` is the plural noun the warning uses (``"MCP servers"``).
    """

    def __init__(self, owners: str = "registries") -> None:
        self.owners = owners
        self._routes: dict[str, Owner] = {}
        self._warned: set[tuple[str, str, str]] = set()

    def route(self, offers: Iterable[ToolOffer[Owner]], *, unlisted: Iterable[ToolOffer[Owner]] = ()) -> list[ToolSpec]:
        """The tools to list, first offer first; calls are routed by this listing until the next one.

        ``unlisted`` offers (a server that is down) are not listed, but a call to a name only they
        offer still reaches them, so it fails with their own error rather than as an unknown tool.
        """
        specs: list[ToolSpec] = []
        routes: dict[str, Owner] = {}
        kept: dict[str, str] = {}
        for offer in offers:
            for spec in offer.tools:
                if spec.name in kept:
                    self._warn_shadowed(spec.name, kept[spec.name], offer.label)
                    continue
                routes[spec.name], kept[spec.name] = offer.owner, offer.label
                specs.append(spec)
        for offer in unlisted:
            for spec in offer.tools:
                routes.setdefault(spec.name, offer.owner)
        self._routes = routes
        return specs

    async def owner_of(self, name: str, relist: Callable[[], Awaitable[object]]) -> Owner:
        """Whose tool ``name`` is; a name the last listing did not know triggers one ``relist`` before it is
        refused with a ToolError (a call may come before any listing, or after a registry gained a tool)."""
        owner = self._routes.get(name)
        if owner is None:
            await relist()
            owner = self._routes.get(name)
        if owner is None:
            raise unknown_tool(name, self._routes)
        return owner

    def _warn_shadowed(self, name: str, kept: str, shadowed: str) -> None:
        if (name, kept, shadowed) in self._warned:
            return
        self._warned.add((name, kept, shadowed))
        logger.warning(
            "tool %r is offered by both %s %s and %s; the first is used, the other left out",
            name,
            self.owners,
            kept,
            shadowed,
            extra={"event": "tool_name_conflict", "tool": name, "kept": kept, "shadowed": shadowed},
        )


class CompositeToolRegistry:
    """A ToolRegistry that lists the tools of every registry it wraps and routes each call to the owner.

    Registries are listed in the order given; a duplicate name follows ToolRouter's rule (the first
    registry keeps it, the later tool is left out with one warning). Every ``list_tools`` rebuilds the
    routing table; a call to a name the table does not know triggers one re-listing before it is refused.
    """

    def __init__(self, *registries: ToolRegistry) -> None:
        self.registries: tuple[ToolRegistry, ...] = registries
        self._router: ToolRouter[ToolRegistry] = ToolRouter("registries")

    async def list_tools(self) -> list[ToolSpec]:
        listed = [await registry.list_tools() for registry in self.registries]
        return self._router.route(
            ToolOffer(registry, f"{type(registry).__name__} (#{position})", tools)
            for position, (registry, tools) in enumerate(zip(self.registries, listed, strict=True), start=1)
        )

    async def call(self, principal: Principal, name: str, arguments: Mapping[str, JsonValue]) -> JsonValue:
        owner = await self._router.owner_of(name, self.list_tools)
        return await owner.call(principal, name, arguments)
