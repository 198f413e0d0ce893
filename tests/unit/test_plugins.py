"""runner.plugins: agent types come from entry points; a broken plugin is left out, the
others load. (A real third-party wheel, installed and run by the daemon, is in
tests/acceptance/test_plugins.py.)"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any, ClassVar
from uuid import UUID

import pytest
from pydantic import BaseModel

from runner.api import AgentContext, AgentResult
from runner.plugins import AGENTS_GROUP, Registry, UnknownAgentType, load_registry

BUILTIN_TYPES = ["enrichment_agent", "llm_agent", "noop", "opportunity_bot", "scoring_agent",
                 "scout_agent"]


class _StreamInput(BaseModel):
    stream_id: UUID
    goal_context: dict[str, Any] | None = None


class StreamAgent:
    agent_type: ClassVar[str] = "stream_thing"
    Input: ClassVar[type[BaseModel]] = _StreamInput

    async def run(self, ctx: AgentContext, payload: Any) -> AgentResult:
        return AgentResult(output={})


class MisnamedAgent(StreamAgent):
    agent_type: ClassVar[str] = "something_else"


class ExplodingAgent(StreamAgent):
    agent_type: ClassVar[str] = "exploding"

    def __init__(self) -> None:
        raise RuntimeError("no configuration file")


NOT_A_CLASS = object()


def _installed(monkeypatch: pytest.MonkeyPatch, **targets: str) -> None:
    """Entry points as if a distribution had registered ``name = module:attr``."""
    points = importlib.metadata.EntryPoints(
        importlib.metadata.EntryPoint(name, value, AGENTS_GROUP)
        for name, value in targets.items())

    def entry_points(**selection: Any) -> importlib.metadata.EntryPoints:
        assert selection == {"group": AGENTS_GROUP}
        return points

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_this_project_registers_its_six_types() -> None:
    registry = load_registry()
    assert registry.types() == BUILTIN_TYPES
    assert registry.rejected == {}
    rows = {row.agent_type: row for row in registry.agent_type_rows()}
    assert rows["noop"].module == "agents.noop:NoopAgent"
    assert rows["noop"].distribution is not None
    assert rows["noop"].distribution.startswith("agent-runner ")
    # What a workflow step is enqueued with follows each Input model (CONTRACT.md).
    assert {name: (row.takes_stream_id, row.takes_goal_context) for name, row in rows.items()} \
        == {"enrichment_agent": (True, False), "llm_agent": (False, False),
            "noop": (False, False), "opportunity_bot": (True, True),
            "scoring_agent": (True, True), "scout_agent": (True, False)}


def test_broken_plugins_are_logged_and_left_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _installed(
        monkeypatch,
        stream_thing=f"{__name__}:StreamAgent",
        misnamed=f"{__name__}:MisnamedAgent",
        exploding=f"{__name__}:ExplodingAgent",
        missing="no_such_module_anywhere:Agent",
        not_a_class=f"{__name__}:NOT_A_CLASS",
        **{"Bad-Name": f"{__name__}:StreamAgent"},
    )
    with caplog.at_level(logging.ERROR, logger="runner.plugins"):
        registry = load_registry()
    assert registry.types() == ["stream_thing"]
    assert set(registry.rejected) == {"misnamed", "exploding", "missing", "not_a_class",
                                      "Bad-Name"}
    assert "the entry point's name must equal the class's agent_type" in \
        registry.rejected["misnamed"]
    assert "'something_else'" in registry.rejected["misnamed"]
    assert "no configuration file" in registry.rejected["exploding"]
    assert "cannot import no_such_module_anywhere:Agent" in registry.rejected["missing"]
    assert "is not a class" in registry.rejected["not_a_class"]
    assert "lower-case" in registry.rejected["Bad-Name"]
    logged = {record.agent_type: record for record in caplog.records  # type: ignore[attr-defined]
              if record.getMessage() == "agent_plugin_rejected"}
    assert set(logged) == set(registry.rejected)
    assert logged["missing"].error == registry.rejected["missing"]  # type: ignore[attr-defined]
    # A task of a type whose plugin is broken says why, not just "unknown".
    with pytest.raises(UnknownAgentType, match=r"'exploding' could not be loaded: .*no config"):
        registry.get("exploding")


def test_rows_of_a_loaded_plugin_name_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, stream_thing=f"{__name__}:StreamAgent")
    (row,) = load_registry().agent_type_rows()
    assert (row.agent_type, row.module, row.takes_stream_id, row.takes_goal_context) == (
        "stream_thing", f"{__name__}:StreamAgent", True, True)


def test_a_registry_built_from_instances_names_their_classes() -> None:
    registry = Registry([StreamAgent()])
    (row,) = registry.agent_type_rows()
    assert row.module == f"{__name__}:StreamAgent" and row.distribution is None
    with pytest.raises(UnknownAgentType, match=r"'noop' \(known: stream_thing\)"):
        registry.get("noop")
