"""Schemathesis over the app's own OpenAPI schema, in-process: no 5xx, and every response as documented.

Each operation gets a bounded, derandomized run. Cases carry a valid bearer token for
one fixed user, and for about half of them the path's ``user_id`` is set to that user,
so the chat operation is exercised past authentication (bodies, conversation ids) as
well as refused for other users (403). The checks fail on any 5xx, on a status the
schema does not declare for the operation, and on a body or content type that does not
match the declared response.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chatcore.entrypoints.container import build_container
from chatcore.entrypoints.http.app import create_app
from chatcore.entrypoints.settings import RateLimit, Settings

from .conftest import SECRET, auth

pytestmark = pytest.mark.integration

USER = "fuzz-user"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed_app(postgres_url: str) -> Litestar:
    """The production app (offline agent, PostgreSQL) with a rate limit too high to trip during the run."""
    settings = Settings(database_url=postgres_url, auth_secret=SECRET, rate_limit=RateLimit(100_000, "minute"))
    return create_app(build_container(settings))


@pytest.fixture(scope="module")
def api_schema(fuzzed_app: Litestar) -> Iterator[schemathesis.BaseSchema]:
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", fuzzed_app)
    try:
        yield schema
    finally:
        asgi.shutdown_lifespans()  # schemathesis started the app's lifespan: stop it (engine disposed) now


FUZZ_SETTINGS = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)


def fuzz(operation: APIOperation, mode: GenerationMode) -> None:
    """Run the checks on ``mode`` (valid or invalid) requests for ``operation``."""

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(mode), own_path=st.booleans())
    def run(case: schemathesis.Case, own_path: bool) -> None:
        if own_path and "user_id" in (case.path_parameters or {}):
            case.path_parameters = {**(case.path_parameters or {}), "user_id": USER}
        case.call_and_validate(headers=auth(USER), checks=CHECKS)

    run()


def test_the_api_answers_every_generated_request_as_its_schema_says(
    api_schema: schemathesis.BaseSchema, subtests: pytest.Subtests
) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert "POST /api/{user_id}/chat" in {operation.label for operation in operations}
    for operation in operations:
        modes = [GenerationMode.POSITIVE]
        if operation.path_parameters or operation.body:  # something to get wrong
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            with subtests.test(msg=f"{operation.label} ({mode.value})"):
                fuzz(operation, mode)
