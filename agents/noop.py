"""The diagnostic agent, for smoke tests and benchmarks (CONTRACT.md)."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from runner.api import AgentContext, AgentResult, RetryLater


class NoopInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sleep_seconds: float = Field(default=0, ge=0, le=86400)
    fail_times: int = Field(default=0, ge=0, le=1000)


class NoopAgent:
    agent_type: ClassVar[str] = "noop"
    Input: ClassVar[type[BaseModel]] = NoopInput

    async def run(self, ctx: AgentContext, payload: NoopInput) -> AgentResult:
        if payload.sleep_seconds:
            # A plain sleep is cancellable: cancel_agent_task interrupts it at once.
            await asyncio.sleep(payload.sleep_seconds)
        if ctx.attempt <= payload.fail_times:
            raise RetryLater(f"noop: planned failure {ctx.attempt} of {payload.fail_times}")
        return AgentResult(output={"slept": payload.sleep_seconds, "attempt": ctx.attempt})
