"""``llm_agent``: an agent defined entirely by its ``ai_agents`` row (seed 002).

``model`` picks the model, ``instructions_prompt`` is the system prompt, ``tool_names``
the built-in tools it may call (``agents/tools.py``) and ``max_agent_steps`` caps the
model calls of one run. ``configuration`` may set ``max_tokens`` (per call, default
4096) and ``stream`` (``true`` to stream every call; long outputs stream anyway).

Payload ``{"prompt": "..."}``; output ``{"text", "stop_reason", "steps"}`` where
``text`` is the model's final answer and ``stop_reason`` the API's last one, or
``max_steps`` when the cap ended the run while the model still wanted tools.

As a step of a stream's workflow run, the agent is told where it stands: the user turn
carries the stream (id, name, description, the run's goal) and the outputs of the steps
it depends on, then the prompt (:func:`prompt_in_context`; docs/workflows.md has an
example). Outside a run the prompt goes to the model as it is.

Offline behaviour: without ``ANTHROPIC_API_KEY`` the task fails permanently at once
with "no ANTHROPIC_API_KEY configured: ...", calling nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.llm import (
    DEFAULT_MAX_TOKENS,
    NO_API_KEY_MESSAGE,
    RetryPolicy,
    has_api_key,
    run_tool_loop,
)
from agents.store import runs as store
from agents.tools import BUILTIN_TOOLS, PendingWrites, ToolRegistry
from runner.api import AgentContext, AgentResult, FailPermanently, agent_configuration

#: A prompt is a request, not a document store: 100k characters is ~25k tokens.
MAX_PROMPT_CHARS: Final = 100_000
#: A parent's output beyond this (as JSON) is cut: the model gets the start and a note.
MAX_PARENT_OUTPUT_CHARS: Final = 20_000


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
        stream = None
        if ctx.workflow_run_id is not None:  # a step of a stream's run: its stream
            async with ctx.connection() as conn:
                stream = await store.run_stream(
                    conn, task_id=ctx.task_id, org_id=ctx.agent.org_id)
        prompt = prompt_in_context(payload.prompt, stream, ctx.parent_outputs)
        result = await run_tool_loop(
            ctx,
            ctx.agent.instructions_prompt or None,
            [{"role": "user", "content": prompt}],
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
            # failed attempt leaves none behind. Nothing saved: no hook, and the finish
            # is one statement instead of a transaction around it.
            commit=writes.commit if writes else None,
            summary={"steps": result.steps, "insights_saved": len(writes.insights)},
        )


def prompt_in_context(
    prompt: str,
    stream: store.RunStream | None,
    parent_outputs: Mapping[str, Mapping[str, Any]],
) -> str:
    """The user turn of a step of a workflow run: the stream, the run's goal and the
    parents' outputs (by agent name), each in its own tag, then the prompt. The text
    is the same on every attempt of the task (keys sorted), so a retry's request
    matches the first one's. Outside a run (no stream, no parents) the prompt as it is.
    """
    if stream is None and not parent_outputs:
        return prompt
    parts: list[str] = []
    if stream is not None:
        parts.append(
            f'You are a step of a workflow run (id {stream.workflow_run_id}) of the stream '
            f'"{stream.name}" (id {stream.stream_id}).'
        )
        if stream.description:
            parts.append(f"<stream_description>\n{stream.description}\n</stream_description>")
        parts.append(f"<stream_goal>\n{_json(stream.goal)}\n</stream_goal>")
    if parent_outputs:
        parts.append("The steps this one depends on completed with these outputs:")
        for name in sorted(parent_outputs):
            output = _json(parent_outputs[name])
            if len(output) > MAX_PARENT_OUTPUT_CHARS:
                output = (f"{output[:MAX_PARENT_OUTPUT_CHARS]}\n[cut: the output is "
                          f"{len(output)} characters of JSON]")
            parts.append(f'<parent_output agent="{_attribute(name)}">\n{output}\n'
                         "</parent_output>")
    parts.append(f"<task>\n{prompt}\n</task>")
    return "\n\n".join(parts)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _attribute(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
