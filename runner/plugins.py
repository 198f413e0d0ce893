"""The explicit list of agent implementations the runner knows, by ``agent_type``."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from runner.api import Agent, describe_validation_error

# agent_type -> "module:Class". Adding an agent means adding a line here.
BUILTIN_AGENTS: Mapping[str, str] = {
    "noop": "agents.noop:NoopAgent",
    "llm_agent": "agents.llm_agent:LLMAgent",
    "enrichment_agent": "agents.enrichment_agent:EnrichmentAgent",
    "opportunity_bot": "agents.opportunity_bot:OpportunityBot",
    "scoring_agent": "agents.scoring_agent:ScoringAgent",
}


class UnknownAgentType(LookupError):
    pass


class Registry:
    def __init__(self, agents: Iterable[Agent]) -> None:
        self._agents = {agent.agent_type: agent for agent in agents}

    def get(self, agent_type: str) -> Agent:
        try:
            return self._agents[agent_type]
        except KeyError:
            raise UnknownAgentType(
                f"no implementation for agent_type {agent_type!r} "
                f"(known: {', '.join(sorted(self._agents))})"
            ) from None

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


class InvalidPayload(ValueError):
    pass


def default_registry() -> Registry:
    agents = []
    for target in BUILTIN_AGENTS.values():
        module_name, _, class_name = target.partition(":")
        agent_class = getattr(importlib.import_module(module_name), class_name)
        agents.append(agent_class())
    return Registry(agents)
