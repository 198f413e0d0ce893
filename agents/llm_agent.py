"""``llm_agent``: an agent defined entirely by its ``ai_agents`` row (seed 002).

``model`` picks the model, ``instructions_prompt`` is the system prompt, ``tool_names``
the built-in tools it may call (``agents/tools.py``) and ``max_agent_steps`` caps the
model calls of one run. ``configuration`` may set ``max_tokens`` (per call, default
4096) and ``stream`` (``true`` to stream every call; long outputs stream anyway).

Payload ``{"prompt": "..."}``; output ``{"text", "stop_reason", "steps"}`` where
``text`` is the model's final answer and ``stop_reason`` the API's last one, or
``max_steps`` when the cap ended the run while the model still wanted tools.

Offline behaviour: without ``ANTHROPIC_API_KEY`` the task fails permanently at once
with "no ANTHROPIC_API_KEY configured: ...", calling nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.llm import (
    DEFAULT_MAX_TOKENS,
    NO_API_KEY_MESSAGE,
    RetryPolicy,
    has_api_key,
    run_tool_loop,
)
from agents.tools import BUILTIN_TOOLS, PendingWrites, ToolRegistry
from runner.api import AgentContext, AgentResult, FailPermanently, agent_configuration

#: A prompt is a request, not a document store: 100k characters is ~25k tokens.
MAX_PROMPT_CHARS: Final = 100_000


class LLMInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be blank")
        return value


class LLMAgentConfiguration(BaseModel):
    """The keys of ``ai_agents.configuration`` this agent reads (others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=128_000)
    #: ``None``: stream only long outputs.
    stream: bool | None = None


class LLMAgent:
    agent_type: ClassVar[str] = "llm_agent"
    Input: ClassVar[type[BaseModel]] = LLMInput

    def __init__(
        self, *, tools: ToolRegistry = BUILTIN_TOOLS, policy: RetryPolicy | None = None
    ) -> None:
        self._tools = tools
        self._policy = policy

    async def run(self, ctx: AgentContext, payload: LLMInput) -> AgentResult:
        if not has_api_key(ctx.settings):
            raise FailPermanently(NO_API_KEY_MESSAGE)
        config = agent_configuration(ctx.agent, LLMAgentConfiguration)
        writes = PendingWrites()
        tools = self._tools.bind(ctx.agent.tool_names, ctx, writes)
        result = await run_tool_loop(
            ctx,
            ctx.agent.instructions_prompt or None,
            [{"role": "user", "content": payload.prompt}],
            tools,
            ctx.agent.max_agent_steps,
            max_tokens=config.max_tokens,
            stream=config.stream,
            policy=self._policy,
        )
        output: dict[str, Any] = {
            "text": result.text, "stop_reason": result.stop_reason, "steps": result.steps,
        }
        return AgentResult(
            output=output,
            # Insights saved by tools are written here, with the task's completion, so a
            # failed attempt leaves none behind.
            commit=writes.commit,
            summary={"steps": result.steps, "insights_saved": len(writes.insights)},
        )
