"""CHATCORE_SHUTDOWN_GRACE reaches the streamed turns' own shutdown wait, not only uvicorn's."""

from __future__ import annotations

import pytest

from chatcore.streamed_turns import StreamPolicy, TurnStreamer
from tests.integration.conftest import AppClient

pytestmark = pytest.mark.integration


async def test_the_apps_streamed_turns_wait_the_configured_grace_at_shutdown(app_client: AppClient) -> None:
    async with app_client(shutdown_grace_seconds=7.5) as client:
        streamer: TurnStreamer = client.app.state.streamer
        assert streamer.policy.shutdown_seconds == 7.5


async def test_without_the_setting_they_wait_the_default(app_client: AppClient) -> None:
    async with app_client() as client:
        streamer: TurnStreamer = client.app.state.streamer
        assert streamer.policy.shutdown_seconds == StreamPolicy().shutdown_seconds == 30.0
