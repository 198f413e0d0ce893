"""The agent types this runner can run, found through entry points.

An agent type is a plugin (CONTRACT.md, "Agent types are plugins"): an installed
distribution registers it in the entry-point group ``agent_runner.agents``, under the
type's name, pointing at its class::

    [project.entry-points."agent_runner.agents"]
    echo_agent = "echo_plugin:EchoAgent"

This project registers its own five types the same way (pyproject.toml); the engine
imports no agent module by name.

Loading is forgiving, on purpose. A plugin that fails to import, is not an agent class,
cannot be instantiated, or whose entry name differs from its class's ``agent_type`` is
logged (event ``agent_plugin_rejected``, with its name and the error), kept in
:attr:`Registry.rejected`, and left out; every other type loads. One broken package
installed beside the runner must not stop a daemon from running all the others. Its
tasks then fail when claimed, like those of any type this daemon lacks
(:class:`UnknownAgentType`), and ``agent-runner migrate`` prints the rejection.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from pydantic import BaseModel, ValidationError

from runner.api import Agent, describe_validation_error
from runner.errors import InvalidPayload, UnknownAgentType
from runner.store.agent_types import AgentTypeRow

__all__ = [
    "AGENTS_GROUP",
    "InvalidPayload",
    "Registry",
    "UnknownAgentType",
    "load_registry",
]

#: The entry-point group agent types are registered in (name = ``agent_type``).
AGENTS_GROUP: Final = "agent_runner.agents"

# agent_type is a Prometheus label value and the key of ``agent_types`` (whose CHECK
# has the same pattern).
_AGENT_TYPE_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

logger = logging.getLogger("runner.plugins")


class PluginRejected(Exception):
    """Why one entry point did not yield an agent (logged, never raised to callers)."""


class Registry:
    """The loaded agents by ``agent_type``. Tests build one from instances; the daemon
    and the CLI get theirs from :func:`load_registry`."""

    def __init__(
        self,
        agents: Iterable[Agent],
        *,
        origins: Mapping[str, tuple[str, str | None]] | None = None,
        rejected: Mapping[str, str] | None = None,
    ) -> None:
        self._agents = {agent.agent_type: agent for agent in agents}
        #: agent_type -> (entry point value, distribution) for types loaded from one.
        self._origins = dict(origins or {})
        #: Entry-point name -> why it was left out.
        self.rejected: Mapping[str, str] = dict(rejected or {})

    def get(self, agent_type: str) -> Agent:
        try:
            return self._agents[agent_type]
        except KeyError:
            pass
        if agent_type in self.rejected:
            raise UnknownAgentType(f"the plugin for agent_type {agent_type!r} could not be "
                                   f"loaded: {self.rejected[agent_type]}")
        raise UnknownAgentType(
            f"no implementation for agent_type {agent_type!r} "
            f"(known: {', '.join(sorted(self._agents))})"
        )

    def types(self) -> list[str]:
        return sorted(self._agents)

    def validate(self, agent_type: str, payload: Mapping[str, Any]) -> BaseModel:
        """The agent's input model, or :class:`InvalidPayload` naming the fields."""
        model = self.get(agent_type).Input
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            problems = describe_validation_error(exc, root="payload")
            raise InvalidPayload(f"invalid payload: {problems}") from None

    def agent_type_rows(self) -> list[AgentTypeRow]:
        """What ``agent_types`` records of each loaded type
        (:mod:`runner.store.agent_types`). Which keys of a workflow run a step gets
        follows from the fields its ``Input`` model declares."""
        rows = []
        for agent_type in self.types():
            agent = self._agents[agent_type]
            cls = type(agent)
            module, distribution = self._origins.get(
                agent_type, (f"{cls.__module__}:{cls.__qualname__}", None))
            fields = agent.Input.model_fields
            rows.append(AgentTypeRow(
                agent_type=agent_type, module=module, distribution=distribution,
                takes_stream_id="stream_id" in fields,
                takes_goal_context="goal_context" in fields,
            ))
        return rows


def load_registry(group: str = AGENTS_GROUP) -> Registry:
    """Every agent type installed in ``group``; broken plugins are logged and skipped
    (see the module's docstring). Entry points are read in name order, so when two
    distributions claim one name the choice is stable: the first one loaded wins and
    the other is rejected."""
    agents: list[Agent] = []
    origins: dict[str, tuple[str, str | None]] = {}
    rejected: dict[str, str] = {}
    for entry in sorted(importlib.metadata.entry_points(group=group),
                        key=lambda e: (e.name, e.value)):
        distribution = _distribution(entry)
        try:
            if entry.name in origins:
                raise PluginRejected(
                    f"agent_type {entry.name!r} is already provided by "
                    f"{origins[entry.name][0]}")
            agent = _instantiate(entry)
        except PluginRejected as exc:
            rejected[entry.name] = str(exc)
            logger.error("agent_plugin_rejected", extra={
                "agent_type": entry.name, "plugin": entry.value,
                "distribution": distribution, "error": str(exc)})
            continue
        agents.append(agent)
        origins[entry.name] = (entry.value, distribution)
    return Registry(agents, origins=origins, rejected=rejected)


#: The name the tests and older callers use.


def _instantiate(entry: importlib.metadata.EntryPoint) -> Agent:
    if not _AGENT_TYPE_NAME.match(entry.name):
        raise PluginRejected(
            f"agent_type {entry.name!r} must be 1-63 lower-case letters, digits or "
            "underscores, starting with a letter")
    try:
        loaded = entry.load()
    except Exception as exc:  # whatever an import raises, it is the plugin's problem
        raise PluginRejected(f"cannot import {entry.value}: {exc!r}") from exc
    if not isinstance(loaded, type):
        raise PluginRejected(f"{entry.value} is not a class")
    declared = getattr(loaded, "agent_type", None)
    if declared != entry.name:
        raise PluginRejected(
            f"entry point {entry.name!r} names {entry.value}, whose agent_type is "
            f"{declared!r}: the entry point's name must equal the class's agent_type")
    model = getattr(loaded, "Input", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise PluginRejected(f"{entry.value}.Input is not a pydantic model")
    if not callable(getattr(loaded, "run", None)):
        raise PluginRejected(f"{entry.value} has no run(ctx, payload) method")
    try:
        agent: Agent = loaded()
    except Exception as exc:
        raise PluginRejected(f"cannot instantiate {entry.value}: {exc!r}") from exc
    return agent


def _distribution(entry: importlib.metadata.EntryPoint) -> str | None:
    dist = entry.dist
    if dist is None:
        return None
    return f"{dist.metadata['Name']} {dist.version}"
