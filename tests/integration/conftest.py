"""Fixtures of the integration tests that talk to a model: the Anthropic stand-in, and
settings that point the runner at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runner.settings import Settings
from tests.harness import test_settings
from tests.standins.anthropic_api import AnthropicStandIn


@pytest.fixture
def api() -> Iterator[AnthropicStandIn]:
    """The stand-in with nothing scripted (a module may define its own)."""
    with AnthropicStandIn() as standin:
        yield standin


@pytest.fixture
def settings(api: AnthropicStandIn) -> Settings:
    return test_settings(ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=api.url)
