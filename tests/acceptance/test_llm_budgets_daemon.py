"""Issue 12's budget acceptance with the real daemon: a day budget of one agent fits only
some of ten tasks (about $0.02 each against the Anthropic stand-in) run three at a time;
the rest wait for the next UTC day with no retry spent, and raising the budget completes
them within 20 s (the trigger re-queues them; the daemon is woken by the new jobs)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from tests.harness import daemons, query, wait_for_daemons, wait_until
from tests.standins.anthropic_api import AnthropicStandIn, text

pytestmark = pytest.mark.slow

MODEL = "claude-sonnet-4-6"


def test_budget_defers_then_raising_it_completes_the_rest(db_url: str, tmp_path: Path) -> None:
    limit = Decimal("0.10")
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO ai_agents (name, agent_type, model, instructions_prompt, "
            "configuration) VALUES ('analyst', 'llm_agent', %s, 'Be brief.', %s) "
            "RETURNING id", (MODEL, json.dumps({"max_tokens": 1000}))).fetchone()
        assert row
        agent_id = row[0]
        budget = conn.execute(
            "INSERT INTO llm_budgets (agent_id, period, limit_usd) VALUES (%s, 'day', %s) "
            "RETURNING id", (agent_id, limit)).fetchone()
        assert budget
        for _ in range(10):
            conn.execute("SELECT enqueue_agent_task('analyst', %s::jsonb)",
                         (json.dumps({"prompt": "Say done."}),))

    def counts() -> dict[str, int]:
        rows = query(db_url, "SELECT CASE WHEN status = 'pending' AND error_message LIKE "
                             "'budget reached:%%' THEN 'deferred' ELSE status END, count(*) "
                             "FROM agent_tasks GROUP BY 1")
        return {status: count for status, count in rows}

    with AnthropicStandIn(default=text("Done.", input_tokens=6_667), latency=0.05) as api:
        with daemons(db_url, tmp_path, ANTHROPIC_API_KEY="test-key",
                     ANTHROPIC_BASE_URL=api.url, RUNNER_CONCURRENCY="3"):
            wait_for_daemons(db_url, 1)
            wait_until(lambda: counts().get("completed", 0) + counts().get("deferred", 0) == 10,
                       timeout=60, message="every task completed or deferred")
            done = counts()
            assert 3 <= done.get("completed", 0) < 10
            spent = query(db_url, "SELECT coalesce(sum(cost_usd), 0) FROM llm_calls")[0][0]
            assert spent <= limit + Decimal("0.02")
            assert query(db_url, "SELECT max(retry_count), min(scheduled_for) > now() "
                                 "FROM agent_tasks WHERE status = 'pending'")[0] == (0, True)

            query(db_url, "UPDATE llm_budgets SET limit_usd = 1 WHERE id = %s RETURNING id",
                  (budget[0],))
            wait_until(lambda: counts().get("completed", 0) == 10, timeout=20,
                       message="the deferred tasks completed after the raise")
    assert query(db_url, "SELECT count(*) FROM llm_calls")[0][0] == 10
