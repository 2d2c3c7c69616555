"""Tools from plain functions: the schema a signature gives, the principal, validation, failures, threads, results."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import json
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypedDict

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from msgspec import UNSET, Meta, UnsetType

from chatcore import Principal, StoreUnavailable, ToolError, ToolSpec
from chatcore.model import JsonValue
from chatcore.tools import FunctionToolRegistry, tool

ALICE = Principal("alice", email="alice@example.com")
BOB = Principal("bob")


async def spec_of(function: Any) -> ToolSpec:
    [spec] = await FunctionToolRegistry([function]).list_tools()
    Draft202012Validator.check_schema(spec.parameters)
    return spec


def refs_in(schema: JsonValue) -> list[str]:
    if isinstance(schema, dict):
        found = [schema["$ref"]] if isinstance(schema.get("$ref"), str) else []
        return found + [ref for key, value in schema.items() if key != "$ref" for ref in refs_in(value)]
    if isinstance(schema, list):
        return [ref for item in schema for ref in refs_in(item)]
    return []


# --- The issue's example -----------------------------------------------------------------------------------------

orders_cancelled: list[tuple[str, int, str | None]] = []


@tool
async def get_weather(city: str, unit: Literal["c", "f"] = "c") -> dict[str, object]:
    """Current weather for a city."""
    return {"city": city, "temperature": 21 if unit == "c" else 70, "unit": unit}


@tool(requires_approval=True)
def cancel_order(principal: Principal, order_id: int, reason: str | None = None) -> str:
    """Cancel one of the user's orders."""
    orders_cancelled.append((principal.user_id, order_id, reason))
    return f"order {order_id} cancelled"


async def test_the_issues_example_lists_both_tools_with_their_schemas() -> None:
    registry = FunctionToolRegistry([get_weather, cancel_order])

    weather, cancel = await registry.list_tools()

    assert weather == ToolSpec(
        name="get_weather",
        description="Current weather for a city.",
        parameters={
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
        requires_approval=False,
    )
    assert cancel == ToolSpec(
        name="cancel_order",
        description="Cancel one of the user's orders.",
        parameters={
            "type": "object",
            "properties": {
                "order_id": {"type": "integer"},
                "reason": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            },
            "required": ["order_id"],
            "additionalProperties": False,
        },
        requires_approval=True,
    )


async def test_the_issues_example_runs_each_tool_for_the_principal() -> None:
    registry = FunctionToolRegistry([get_weather, cancel_order])
    orders_cancelled.clear()

    assert await registry.call(ALICE, "get_weather", {"city": "Paris", "unit": "f"}) == {
        "city": "Paris",
        "temperature": 70,
        "unit": "f",
    }
    assert await registry.call(BOB, "cancel_order", {"order_id": 7}) == "order 7 cancelled"
    assert orders_cancelled == [("bob", 7, None)]


async def test_a_decorated_function_is_still_the_function_for_direct_calls() -> None:
    assert await get_weather("Oslo") == {"city": "Oslo", "temperature": 21, "unit": "c"}
    orders_cancelled.clear()
    assert cancel_order(ALICE, 3, reason="late") == "order 3 cancelled"
    assert orders_cancelled == [("alice", 3, "late")]
    assert asyncio.iscoroutinefunction(get_weather)
    assert get_weather.__name__ == "get_weather"
    assert get_weather.__doc__ == "Current weather for a city."


async def test_a_plain_function_without_the_decorator_is_a_tool_with_the_defaults() -> None:
    def shout(text: str) -> str:
        """Say it louder."""
        return text.upper()

    registry = FunctionToolRegistry([shout])

    [spec] = await registry.list_tools()
    assert (spec.name, spec.description, spec.requires_approval) == ("shout", "Say it louder.", False)
    assert await registry.call(ALICE, "shout", {"text": "hey"}) == "HEY"


async def test_name_and_description_options_override_the_functions() -> None:
    @tool(name="lookup-v2", description="Look a word up in the dictionary.")
    async def lookup(word: str) -> str:
        """Internal notes nobody should send to a model."""
        return word

    spec = await spec_of(lookup)

    assert (spec.name, spec.description) == ("lookup-v2", "Look a word up in the dictionary.")
    assert await FunctionToolRegistry([lookup]).call(ALICE, "lookup-v2", {"word": "hi"}) == "hi"


# --- Schemas for each kind of annotation -------------------------------------------------------------------------


@dataclasses.dataclass
class Address:
    """A postal address."""

    street: str
    city: str
    zip_code: str | None = None


class Dimensions(TypedDict):
    width: float
    height: float


class LineItem(msgspec.Struct):
    sku: str
    quantity: Annotated[int, Meta(ge=1)] = 1


class Category(enum.StrEnum):
    BOOKS = "books"
    GAMES = "games"


class Priority(enum.IntEnum):
    HIGH = 2
    LOW = 1


class Tree(msgspec.Struct):
    label: str
    children: list[Tree] = []


SCHEMA_CASES: list[tuple[Any, dict[str, Any]]] = [
    (str, {"type": "string"}),
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (bool, {"type": "boolean"}),
    (list[int], {"type": "array", "items": {"type": "integer"}}),
    (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
    (Literal["b", "a"], {"type": "string", "enum": ["b", "a"]}),
    (Literal[1, 2, 3], {"type": "integer", "enum": [1, 2, 3]}),
    (Category, {"title": "Category", "type": "string", "enum": ["books", "games"]}),
    (Priority, {"title": "Priority", "type": "integer", "enum": [2, 1]}),
    (str | None, {"anyOf": [{"type": "string"}, {"type": "null"}]}),
    (Annotated[str, "The city."], {"type": "string", "description": "The city."}),
    (
        Annotated[str, Meta(min_length=2, max_length=5, pattern="^[a-z]+$", description="A code.")],
        {"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$", "description": "A code."},
    ),
    (Annotated[int, Meta(ge=1, le=10)], {"type": "integer", "minimum": 1, "maximum": 10}),
    (
        Address,
        {
            "title": "Address",
            "description": "A postal address.",
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "zip_code": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            },
            "required": ["street", "city"],
        },
    ),
    (
        Dimensions,
        {
            "title": "Dimensions",
            "type": "object",
            "properties": {"height": {"type": "number"}, "width": {"type": "number"}},
            "required": ["height", "width"],
        },
    ),
    (
        LineItem,
        {
            "title": "LineItem",
            "type": "object",
            "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1, "default": 1}},
            "required": ["sku"],
        },
    ),
    (datetime.date, {"type": "string", "format": "date"}),
    (uuid.UUID, {"type": "string", "format": "uuid"}),
]


@pytest.mark.parametrize(("annotation", "expected"), SCHEMA_CASES, ids=[repr(a) for a, _ in SCHEMA_CASES])
async def test_each_kind_of_annotation_gives_its_json_schema_inlined(annotation: Any, expected: dict[str, Any]) -> None:
    def probe(value: Any) -> str:
        """Probe one annotation."""
        return "ok"

    probe.__annotations__ = {"value": annotation, "return": str}

    spec = await spec_of(probe)

    assert spec.parameters == {
        "type": "object",
        "properties": {"value": expected},
        "required": ["value"],
        "additionalProperties": False,
    }
    assert refs_in(spec.parameters) == []


async def test_defaults_make_a_parameter_optional_and_are_stated() -> None:
    def search(query: str, limit: int = 10, exact: bool = False, scope: Literal["all", "mine"] = "all") -> str:
        """Search."""
        return query

    parameters = (await spec_of(search)).parameters

    assert parameters["required"] == ["query"]
    assert parameters["properties"]["limit"] == {"type": "integer", "default": 10}
    assert parameters["properties"]["exact"] == {"type": "boolean", "default": False}
    assert parameters["properties"]["scope"] == {"type": "string", "enum": ["all", "mine"], "default": "all"}


async def test_an_unset_default_is_optional_but_not_nullable_and_the_function_sees_unset() -> None:
    seen: list[object] = []

    def rename(title: Annotated[str, Meta(max_length=20)] | UnsetType = UNSET) -> str:
        """Rename."""
        seen.append(title)
        return "ok"

    registry = FunctionToolRegistry([rename])
    [spec] = await registry.list_tools()

    assert spec.parameters["properties"] == {"title": {"type": "string", "maxLength": 20}}
    assert spec.parameters["required"] == []
    await registry.call(ALICE, "rename", {})
    await registry.call(ALICE, "rename", {"title": "New"})
    with pytest.raises(ToolError, match="title must be a string, not null"):
        await registry.call(ALICE, "rename", {"title": None})
    assert seen == [UNSET, "New"]


async def test_a_recursive_type_keeps_one_consistent_defs_entry() -> None:
    def plant(tree: Tree) -> int:
        """Plant a tree."""
        return len(tree.children)

    parameters = (await spec_of(plant)).parameters

    node = {
        "title": "Tree",
        "type": "object",
        "properties": {
            "label": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/Tree"}, "default": []},
        },
        "required": ["label"],
    }
    assert parameters["properties"]["tree"] == node
    assert parameters["$defs"] == {"Tree": node}
    for ref in refs_in(parameters):
        assert ref.removeprefix("#/$defs/") in parameters["$defs"]
    validator = Draft202012Validator(parameters)
    assert validator.is_valid({"tree": {"label": "oak", "children": [{"label": "acorn"}]}})
    assert not validator.is_valid({"tree": {"label": "oak", "children": [{"children": []}]}})
    assert (
        await FunctionToolRegistry([plant]).call(ALICE, "plant", {"tree": {"label": "a", "children": [{"label": "b"}]}})
        == 1
    )


async def test_a_tool_without_parameters_has_an_empty_strict_object() -> None:
    def ping() -> str:
        """Answer pong."""
        return "pong"

    assert (await spec_of(ping)).parameters == {
        "type": "object",
        "properties": {},
        "required": [],
        "additionalProperties": False,
    }


# --- Descriptions from docstrings ----------------------------------------------------------------------------------


async def test_the_description_is_the_docstrings_first_paragraph_on_one_line() -> None:
    def archive(folder: str) -> str:
        """Move a folder to the archive, where it
        stays readable but cannot be changed.

        Implementation note: this calls the storage service twice.
        """
        return folder

    assert (await spec_of(archive)).description == (
        "Move a folder to the archive, where it stays readable but cannot be changed."
    )


async def test_google_style_args_describe_the_parameters() -> None:
    def book(principal: Principal, room: str, hours: int = 1) -> str:
        """Book a meeting room.

        Args:
            principal: Who books it (never shown to the model).
            room (str): The room's name, as shown
                on its door.
            hours: How long.

        Returns:
            A confirmation.
        """
        return room

    spec = await spec_of(book)

    assert spec.description == "Book a meeting room."
    assert spec.parameters["properties"] == {
        "room": {"type": "string", "description": "The room's name, as shown on its door."},
        "hours": {"type": "integer", "default": 1, "description": "How long."},
    }


async def test_numpy_style_parameters_describe_the_parameters() -> None:
    def convert(amount: float, currency: str) -> float:
        """Convert an amount to euros.

        Parameters
        ----------
        amount : float
            How much money,
            in the given currency.
        currency : str
            An ISO 4217 code.

        Returns
        -------
        float
        """
        return amount

    properties = (await spec_of(convert)).parameters["properties"]

    assert properties["amount"]["description"] == "How much money, in the given currency."
    assert properties["currency"]["description"] == "An ISO 4217 code."


async def test_sphinx_style_params_describe_the_parameters() -> None:
    def translate(text: str, language: str) -> str:
        """Translate a text.

        :param text: What to translate.
        :param str language: The target language,
            e.g. 'de'.
        :returns: The translation.
        """
        return text

    spec = await spec_of(translate)

    assert spec.description == "Translate a text."
    assert spec.parameters["properties"]["text"]["description"] == "What to translate."
    assert spec.parameters["properties"]["language"]["description"] == "The target language, e.g. 'de'."


async def test_an_annotation_description_wins_over_the_docstring() -> None:
    def tag(
        first: Annotated[str, Meta(description="From Meta.")],
        second: Annotated[str, "From Annotated."],
        third: str,
    ) -> str:
        """Tag something.

        Args:
            first: From the docstring.
            second: From the docstring.
            third: From the docstring.
        """
        return first

    properties = (await spec_of(tag)).parameters["properties"]

    assert [properties[name]["description"] for name in ("first", "second", "third")] == [
        "From Meta.",
        "From Annotated.",
        "From the docstring.",
    ]


# --- Functions that cannot be tools ------------------------------------------------------------------------------


def no_docstring(x: int) -> int:
    return x


def star_args(*numbers: int) -> int:
    """Sum numbers."""
    return sum(numbers)


def star_kwargs(**options: str) -> int:
    """Count options."""
    return len(options)


def optional_principal(principal: Principal | None, text: str) -> str:
    """Leak a principal choice to the model."""
    return text


def principal_list(principals: list[Principal]) -> str:
    """Let the model pick users."""
    return ""


class Opaque:
    """Something msgspec cannot describe."""


def unsupported(thing: Opaque) -> str:
    """Take something JSON cannot carry."""
    return ""


@pytest.mark.parametrize(
    ("function", "error", "message"),
    [
        (no_docstring, ValueError, "no description"),
        (star_args, TypeError, r"\*numbers"),
        (star_kwargs, TypeError, r"\*\*options"),
        (optional_principal, TypeError, "exactly `Principal`"),
        (principal_list, TypeError, "exactly `Principal`"),
        (unsupported, TypeError, "cannot be described as JSON"),
    ],
)
def test_a_function_that_cannot_be_a_tool_is_refused_when_the_registry_is_built(
    function: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        FunctionToolRegistry([function])


def test_bad_options_and_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        tool(name="two words")
    with pytest.raises(ValueError, match="positive"):
        tool(timeout=0)

    @tool(name="get_weather")
    def other(city: str) -> str:
        """Another weather."""
        return city

    with pytest.raises(ValueError, match="two tools are named 'get_weather'"):
        FunctionToolRegistry([get_weather, other])


# --- The principal -------------------------------------------------------------------------------------------------


async def test_a_principal_parameter_receives_the_caller_and_is_never_in_the_schema() -> None:
    @tool
    async def whoami(me: Principal, greeting: str = "hi") -> dict[str, Any]:
        """Say who is asking."""
        return {"user": me.user_id, "email": me.email, "greeting": greeting}

    @tool
    def also_sync(greeting: str, caller: Annotated[Principal, "ignored"]) -> str:
        """The same, sync, the principal last."""
        return f"{greeting} {caller.user_id}"

    registry = FunctionToolRegistry([whoami, also_sync])
    specs = await registry.list_tools()

    assert [list(spec.parameters["properties"]) for spec in specs] == [["greeting"], ["greeting"]]
    assert await registry.call(ALICE, "whoami", {}) == {"user": "alice", "email": "alice@example.com", "greeting": "hi"}
    assert await registry.call(BOB, "also_sync", {"greeting": "yo"}) == "yo bob"


@pytest.mark.parametrize("smuggled", ["me", "principal", "user_id"])
async def test_a_model_cannot_pass_a_principal_of_its_own(smuggled: str) -> None:
    @tool
    async def whoami(me: Principal) -> str:
        """Say who is asking."""
        return me.user_id

    registry = FunctionToolRegistry([whoami])

    with pytest.raises(ToolError, match=f"unknown argument '{smuggled}'"):
        await registry.call(BOB, "whoami", {smuggled: {"user_id": "alice"}})
    assert await registry.call(BOB, "whoami", {}) == "bob"


# --- Validation -------------------------------------------------------------------------------------------------


@tool
def order(
    sku: Annotated[str, Meta(min_length=1, max_length=8)],
    quantity: Annotated[int, Meta(ge=1, le=99)],
    size: Literal["s", "m", "l"] = "m",
    gift: bool = False,
    address: Address | None = None,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    """Order an item."""
    return {"sku": sku, "quantity": quantity, "size": size, "gift": gift, "address": address, "tags": tags}


INVALID_ORDERS: list[tuple[Any, str]] = [
    ({}, "Invalid arguments for order: sku is required"),
    ({"sku": "A1"}, "Invalid arguments for order: quantity is required"),
    ({"sku": 5, "quantity": 1}, "Invalid arguments for order: sku must be a string, not an integer"),
    ({"sku": "", "quantity": 1}, "Invalid arguments for order: sku must not be empty"),
    (
        {"sku": "A" * 9, "quantity": 1},
        "Invalid arguments for order: sku is too long: it must be at most 8 characters long",
    ),
    ({"sku": "A1", "quantity": "two"}, "Invalid arguments for order: quantity must be an integer, not a string"),
    ({"sku": "A1", "quantity": 1.5}, "Invalid arguments for order: quantity must be an integer, not a number"),
    ({"sku": "A1", "quantity": True}, "Invalid arguments for order: quantity must be an integer, not a boolean"),
    ({"sku": "A1", "quantity": None}, "Invalid arguments for order: quantity must be an integer, not null"),
    ({"sku": "A1", "quantity": 0}, "Invalid arguments for order: quantity must be an integer >= 1 (the minimum)"),
    ({"sku": "A1", "quantity": 100}, "Invalid arguments for order: quantity must be an integer <= 99 (the maximum)"),
    ({"sku": "A1", "quantity": "9" * 5000}, "Invalid arguments for order: quantity is out of range"),
    (
        {"sku": "A1", "quantity": 1, "size": "xl"},
        "Invalid arguments for order: size must be one of 's', 'm', 'l', not 'xl'",
    ),
    (
        {"sku": "A1", "quantity": 1, "gift": "maybe"},
        "Invalid arguments for order: gift must be a boolean, not a string",
    ),
    (
        {"sku": "A1", "quantity": 1, "colour": "red"},
        "Invalid arguments for order: unknown argument 'colour' "
        "(the parameters are: sku, quantity, size, gift, address, tags)",
    ),
    (
        {"sku": "A1", "quantity": 1, "address": {"city": "Rome"}},
        "Invalid arguments for order: address.street is required",
    ),
    (
        {"sku": "A1", "quantity": 1, "address": {"street": 1, "city": "Rome"}},
        "Invalid arguments for order: address.street must be a string, not an integer",
    ),
    (
        {"sku": "A1", "quantity": 1, "tags": ["a", 2]},
        "Invalid arguments for order: tags[1] must be a string, not an integer",
    ),
    (
        {"sku": "A1", "quantity": 1, "tags": "a"},
        "Invalid arguments for order: tags must be an array or null, not a string",
    ),
    (["A1", 1], "Arguments for order must be a JSON object."),
]


@pytest.mark.parametrize(("arguments", "detail"), INVALID_ORDERS)
async def test_bad_arguments_are_a_tool_error_naming_the_parameter(arguments: Any, detail: str) -> None:
    with pytest.raises(ToolError) as raised:
        await FunctionToolRegistry([order]).call(ALICE, "order", arguments)
    assert raised.value.detail == detail


async def test_a_huge_bad_argument_is_not_echoed_back_whole() -> None:
    with pytest.raises(ToolError) as raised:
        await FunctionToolRegistry([order]).call(ALICE, "order", {"sku": "A1", "quantity": 1, "size": "x" * 10_000})
    assert raised.value.detail.startswith("Invalid arguments for order: size must be one of 's', 'm', 'l', not 'xxx")
    assert len(raised.value.detail) <= 240


@pytest.mark.parametrize(
    ("sent", "received"),
    [("3", 3), (" 3 ", 3), (3.0, 3), ("1e1", 10)],
)
async def test_numbers_sent_as_text_or_as_integral_floats_are_read_as_numbers(sent: JsonValue, received: int) -> None:
    result = await FunctionToolRegistry([order]).call(ALICE, "order", {"sku": "A1", "quantity": sent, "gift": " true "})
    assert (result["quantity"], result["gift"]) == (received, True)


async def test_arguments_are_converted_to_the_annotated_types() -> None:
    result = await FunctionToolRegistry([order]).call(
        ALICE, "order", {"sku": "A1", "quantity": 2, "address": {"street": "Via Roma 1", "city": "Rome"}, "tags": ["x"]}
    )
    assert result == {
        "sku": "A1",
        "quantity": 2,
        "size": "m",
        "gift": False,
        "address": {"street": "Via Roma 1", "city": "Rome", "zip_code": None},
        "tags": ["x"],
    }


async def test_an_unknown_tool_is_a_tool_error_listing_the_tools() -> None:
    with pytest.raises(ToolError, match=r"Unknown tool: 'launch'. Available tools: get_weather, order\."):
        await FunctionToolRegistry([get_weather, order]).call(ALICE, "launch", {})


# --- Failures --------------------------------------------------------------------------------------------------------


async def test_a_tool_error_the_function_raises_reaches_the_model_as_it_is() -> None:
    @tool
    async def refuse(order_id: int) -> str:
        """Refuse."""
        raise ToolError(f"Order {order_id} was shipped already; it can no longer be cancelled.")

    with pytest.raises(ToolError, match=r"^Order 5 was shipped already; it can no longer be cancelled.$"):
        await FunctionToolRegistry([refuse]).call(ALICE, "refuse", {"order_id": 5})


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_any_other_exception_is_a_generic_tool_error_and_logged(
    sync: bool, caplog: pytest.LogCaptureFixture
) -> None:
    def crash_sync(text: str) -> str:
        """Crash."""
        raise KeyError("secret internal detail")

    async def crash_async(text: str) -> str:
        """Crash."""
        raise KeyError("secret internal detail")

    crash = tool(name="crash")(crash_sync if sync else crash_async)
    with caplog.at_level(logging.ERROR, logger="chatcore.tools"), pytest.raises(ToolError) as raised:
        await FunctionToolRegistry([crash]).call(ALICE, "crash", {"text": "x"})

    assert raised.value.detail == "tool crash failed unexpectedly"
    assert "secret" not in raised.value.detail
    [record] = [r for r in caplog.records if r.name == "chatcore.tools"]
    assert record.getMessage() == "tool crash raised"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], KeyError)


async def test_chatcore_errors_other_than_tool_errors_pass_through_for_the_service() -> None:
    @tool
    async def save(text: str) -> str:
        """Save."""
        raise StoreUnavailable()

    with pytest.raises(StoreUnavailable):
        await FunctionToolRegistry([save]).call(ALICE, "save", {"text": "x"})


async def test_a_result_that_is_not_json_is_a_generic_tool_error() -> None:
    @tool
    def handle(text: str) -> object:
        """Return something JSON cannot carry."""
        return threading.Lock()

    with pytest.raises(ToolError, match=r"^tool handle failed unexpectedly$"):
        await FunctionToolRegistry([handle]).call(ALICE, "handle", {"text": "x"})


async def test_an_async_tool_past_its_timeout_is_a_tool_error_and_is_cancelled() -> None:
    cancelled = asyncio.Event()

    @tool(timeout=0.05)
    async def hang() -> str:
        """Never answer."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    with pytest.raises(ToolError, match=r"^tool hang timed out after 0.05s$"):
        await FunctionToolRegistry([hang]).call(ALICE, "hang", {})
    assert cancelled.is_set()


async def test_a_sync_tool_past_its_timeout_is_a_tool_error_while_its_thread_finishes() -> None:
    release, finished = threading.Event(), threading.Event()

    @tool(timeout=0.05)
    def block() -> str:
        """Block until released."""
        release.wait(timeout=30)
        finished.set()
        return "late"

    with pytest.raises(ToolError, match=r"^tool block timed out after 0.05s$"):
        await FunctionToolRegistry([block]).call(ALICE, "block", {})
    assert not finished.is_set()
    release.set()
    assert await asyncio.to_thread(finished.wait, 30)


async def test_a_timeout_error_the_tool_raises_itself_is_not_its_timeout() -> None:
    @tool(timeout=30)
    async def upstream() -> str:
        """Call a slow upstream."""
        raise TimeoutError("upstream did not answer")

    with pytest.raises(ToolError, match=r"^tool upstream failed unexpectedly$"):
        await FunctionToolRegistry([upstream]).call(ALICE, "upstream", {})


# --- Sync functions in a worker thread ----------------------------------------------------------------------------


async def test_a_sync_function_runs_in_a_worker_thread_and_leaves_the_loop_free() -> None:
    loop_thread = threading.get_ident()
    loop_ran = threading.Event()

    @tool
    def wait_for_the_loop() -> dict[str, Any]:
        """Wait until the event loop has run something else meanwhile."""
        return {"thread": threading.get_ident(), "loop_ran": loop_ran.wait(timeout=30)}

    async def meanwhile() -> None:
        loop_ran.set()

    call = asyncio.create_task(FunctionToolRegistry([wait_for_the_loop]).call(ALICE, "wait_for_the_loop", {}))
    await asyncio.sleep(0)
    await meanwhile()
    result = await call

    assert result["thread"] != loop_thread
    assert result["loop_ran"] is True


async def test_an_async_function_runs_on_the_loop() -> None:
    @tool
    async def where() -> int:
        """Say which thread runs this."""
        return threading.get_ident()

    assert await FunctionToolRegistry([where]).call(ALICE, "where", {}) == threading.get_ident()


async def test_bound_methods_and_callable_objects_are_tools_too() -> None:
    class Counter:
        def __init__(self) -> None:
            self.count = 0

        async def bump(self, by: int = 1) -> int:
            """Bump the counter."""
            self.count += by
            return self.count

    class Echo:
        """Echo the text."""

        def __call__(self, text: str) -> str:
            return text

    counter = Counter()
    registry = FunctionToolRegistry([counter.bump, tool(name="echo")(Echo())])

    assert await registry.call(ALICE, "bump", {"by": 2}) == 2
    assert await registry.call(ALICE, "echo", {"text": "hi"}) == "hi"
    assert [spec.description for spec in await registry.list_tools()] == ["Bump the counter.", "Echo the text."]


# --- Results --------------------------------------------------------------------------------------------------------


class Shipment(msgspec.Struct):
    id: uuid.UUID
    items: list[LineItem]
    sent_at: datetime.datetime


@dataclasses.dataclass
class Receipt:
    total: float
    category: Category
    tags: frozenset[str]
    address: Address


async def test_dataclasses_structs_and_other_values_become_json() -> None:
    shipment_id = uuid.UUID("12345678-1234-5678-1234-567812345678")

    @tool
    def ship() -> Shipment:
        """Ship."""
        return Shipment(shipment_id, [LineItem("A1", 2)], datetime.datetime(2026, 5, 1, 12, tzinfo=datetime.UTC))

    @tool
    async def receipt() -> Receipt:
        """Receipt."""
        return Receipt(9.5, Category.BOOKS, frozenset({"gift"}), Address("Via Roma 1", "Rome"))

    @tool
    async def numbers() -> dict[int, list[int]]:
        """Numbers."""
        return {1: [1], 2: [2, 2]}

    registry = FunctionToolRegistry([ship, receipt, numbers])

    shipped = await registry.call(ALICE, "ship", {})
    assert shipped == {
        "id": "12345678-1234-5678-1234-567812345678",
        "items": [{"sku": "A1", "quantity": 2}],
        "sent_at": "2026-05-01T12:00:00Z",
    }
    assert await registry.call(ALICE, "receipt", {}) == {
        "total": 9.5,
        "category": "books",
        "tags": ["gift"],
        "address": {"street": "Via Roma 1", "city": "Rome", "zip_code": None},
    }
    assert await registry.call(ALICE, "numbers", {}) == {"1": [1], "2": [2, 2]}
    for name in ("ship", "receipt", "numbers"):
        json.dumps(await registry.call(ALICE, name, {}))


# --- Properties: the schema and the validation agree ----------------------------------------------------------------


@tool
def everything(
    me: Principal,
    text: str,
    count: Annotated[int, Meta(ge=0, le=1000)],
    ratio: float = 0.5,
    flag: bool = False,
    mode: Literal["a", "b"] = "a",
    category: Category | None = None,
    tags: list[Annotated[str, Meta(max_length=5)]] | None = None,
    limits: dict[str, int] | None = None,
    address: Address | None = None,
    size: Dimensions | None = None,
    item: LineItem | None = None,
    note: Annotated[str, Meta(max_length=10)] | UnsetType = UNSET,
) -> dict[str, Any]:
    """Take every kind of parameter and give back what it received."""
    received = {
        "text": text,
        "count": count,
        "ratio": ratio,
        "flag": flag,
        "mode": mode,
        "category": category,
        "tags": tags,
        "limits": limits,
        "address": address,
        "size": size,
        "item": item,
    }
    if note is not UNSET:
        received["note"] = note
    return {"user": me.user_id, "received": received}


EVERYTHING = FunctionToolRegistry([everything])
EVERYTHING_SCHEMA = asyncio.run(EVERYTHING.list_tools())[0].parameters
VALIDATOR = Draft202012Validator(EVERYTHING_SCHEMA)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
small_text = st.text(max_size=12)
well_typed: dict[str, st.SearchStrategy[Any]] = {
    "text": small_text,
    "count": st.integers(-5, 1005),
    "ratio": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**6), 10**6),
    "flag": st.booleans(),
    "mode": st.sampled_from(["a", "b", "c"]),
    "category": st.none() | st.sampled_from(["books", "games", "films"]),
    "tags": st.none() | st.lists(st.text(max_size=7), max_size=3),
    "limits": st.none() | st.dictionaries(small_text, st.integers(-9, 9), max_size=3),
    "address": st.none()
    | st.fixed_dictionaries({"street": small_text, "city": small_text}, optional={"zip_code": st.none() | small_text}),
    "size": st.none() | st.fixed_dictionaries({"width": st.floats(-1e6, 1e6), "height": st.integers(0, 10)}),
    "item": st.none() | st.fixed_dictionaries({"sku": small_text}, optional={"quantity": st.integers(-1, 3)}),
    "note": st.text(max_size=12),
}
REQUIRED = ("text", "count")
arguments = st.one_of(
    # Mostly the right types (some values out of their bounds or enums)...
    st.fixed_dictionaries(
        {name: well_typed[name] for name in REQUIRED},
        optional={name: strategy for name, strategy in well_typed.items() if name not in REQUIRED},
    ),
    # ...or any JSON in any parameter, and parameters the tool does not have.
    st.fixed_dictionaries(
        {},
        optional={name: strategy | json_values for name, strategy in well_typed.items()}
        | {"unexpected": json_values, "user_id": st.text(max_size=4)},
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arguments)
def test_what_the_schema_allows_is_accepted_and_what_is_accepted_the_schema_allows(sent: dict[str, Any]) -> None:
    try:
        result, refusal = asyncio.run(EVERYTHING.call(BOB, "everything", sent)), None
    except ToolError as error:
        result, refusal = None, error.detail
    if refusal is not None:
        assert not VALIDATOR.is_valid(sent), f"the schema allows {sent!r} but the call failed: {refusal}"
        return
    assert result["user"] == "bob"
    received = {key: value for key, value in result["received"].items() if value is not None}
    assert VALIDATOR.is_valid(received), f"the function received {received!r}, which the schema refuses"
    for key in ("text", "count", "ratio", "flag", "mode", "category", "tags", "limits", "note"):
        if key in sent and VALIDATOR.is_valid(sent):
            assert received.get(key) == sent[key], key


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Span(msgspec.Struct):
    start: Point
    end: Point
    label: str | None = None


@settings(max_examples=100, deadline=None)
@given(st.from_type(Span))
def test_any_value_of_the_annotated_type_sent_as_json_fits_the_schema_and_arrives_unchanged(span: Span) -> None:
    received: list[Span] = []

    @tool
    def draw(span: Span) -> None:
        """Draw a span."""
        received.append(span)

    registry = FunctionToolRegistry([draw])
    [spec] = asyncio.run(registry.list_tools())
    sent: Mapping[str, JsonValue] = {"span": msgspec.to_builtins(span)}

    assert Draft202012Validator(spec.parameters).is_valid(sent)
    asyncio.run(registry.call(ALICE, "draw", sent))
    assert received == [span]
