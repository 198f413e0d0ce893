"""The LLM agent end to end: real executor, real Postgres, the real ``anthropic`` client
against the Messages API stand-in on 127.0.0.1 (tests/standins/anthropic_api.py)."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any, ClassVar

import anthropic
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from agents.llm import RetryPolicy, text_of
from agents.llm_agent import LLMAgent
from agents.llm_judgements import qualify_company, summarise_website
from agents.prices import CEILING_SUFFIX, load_price_table
from runner.api import AgentContext, AgentResult
from runner.outcomes import Outcome
from runner.plugins import Registry
from runner.settings import Settings
from tests.harness import FAST_LLM_POLICY as FAST
from tests.harness import run_task_inline, task_state, test_settings
from tests.standins.anthropic_api import (
    AnthropicStandIn,
    RecordedRequest,
    Reply,
    api_key_of,
    error,
    stream_error,
    text,
    tool_use,
)

Conn = psycopg.Connection[tuple[Any, ...]]

# Waits in milliseconds, so a test of three retries takes a fraction of a second.
MODEL = "claude-sonnet-4-6"
LEDGER_KEYS = {"input_tokens", "output_tokens", "cache_creation_input_tokens",
               "cache_read_input_tokens", "llm_calls", "cost_usd"}


def _registry(policy: RetryPolicy = FAST) -> Registry:
    return Registry([LLMAgent(policy=policy)])


def _llm_agent(
    conn: Conn, *, name: str = "analyst", tools: tuple[str, ...] = ("get_company", "save_insight"),
    max_steps: int = 5, model: str = MODEL, configuration: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO ai_agents (name, agent_type, model, instructions_prompt, tool_names, "
        "max_agent_steps, configuration) VALUES (%s, 'llm_agent', %s, %s, %s, %s, %s)",
        (name, model, "You are a UK B2B market analyst. Be brief.", list(tools), max_steps,
         json.dumps(configuration or {})),
    )


def _enqueue(conn: Conn, prompt: str = "What does company 1234567 do?",
             name: str = "analyst") -> str:
    row = conn.execute(
        "SELECT enqueue_agent_task(%s, %s::jsonb)", (name, json.dumps({"prompt": prompt}))
    ).fetchone()
    assert row
    return str(row[0])


_task = task_state


def _ledger(conn: Conn, task_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT c.*, e.attempt FROM llm_calls c JOIN agent_executions e "
            "ON e.id = c.execution_id WHERE c.task_id = %s ORDER BY e.attempt, c.call_index",
            (task_id,),
        )
        return cur.fetchall()


def _metrics(conn: Conn, task_id: str) -> list[dict[str, Any]]:
    return [row[0] for row in conn.execute(
        "SELECT metrics FROM agent_executions WHERE task_id = %s ORDER BY attempt", (task_id,)
    ).fetchall()]


def _add_company(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO companies (company_number, name, post_town, sic_codes, sic_texts, "
        "status, employee_estimate, website) VALUES ('01234567', 'ACME SOFTWARE LTD', "
        "'LEEDS', '{62012}', '{\"62012 - Business and domestic software development\"}', "
        "'Active', 45, 'https://acme.example')"
    )


def _tool_results(request: RecordedRequest) -> list[dict[str, Any]]:
    last = request.body["messages"][-1]
    assert last["role"] == "user"
    return [block for block in last["content"] if block["type"] == "tool_result"]


# The tool loop ------------------------------------------------------------------------


async def test_model_calls_a_tool_gets_the_result_and_answers(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _add_company(conn)
    _llm_agent(conn)
    api.enqueue(
        tool_use("get_company", {"company_number": "1234567"}, id="toolu_acme",
                 say="Let me look it up."),
        text("ACME SOFTWARE LTD builds business software in Leeds."),
    )
    task_id = _enqueue(conn)

    outcome = await run_task_inline(pool, task_id, registry=_registry(), settings=settings)

    assert outcome is Outcome.COMPLETED
    status, retry_count, output, _ = _task(conn, task_id)
    assert (status, retry_count) == ("completed", 0)
    assert output == {"text": "ACME SOFTWARE LTD builds business software in Leeds.",
                      "stop_reason": "end_turn", "steps": 2}

    first, second = api.message_requests()
    for request in (first, second):
        assert api_key_of(request.headers) == "test-key"
        assert request.headers["anthropic-version"]
        assert request.body["model"] == MODEL
        # Prompt caching: the system prompt is one block marked ephemeral, and so is
        # the last tool definition (which caches all the tools before it).
        assert request.body["system"] == [{
            "type": "text", "text": "You are a UK B2B market analyst. Be brief.",
            "cache_control": {"type": "ephemeral"},
        }]
        tools = request.body["tools"]
        assert [tool["name"] for tool in tools] == ["get_company", "save_insight"]
        assert tools[-1]["cache_control"] == {"type": "ephemeral"}
        assert all("cache_control" not in tool for tool in tools[:-1])
        assert tools[0]["input_schema"]["required"] == ["company_number"]
    assert first.body["messages"] == [
        {"role": "user", "content": "What does company 1234567 do?"}]
    # The assistant's tool_use turn goes back verbatim, then the tool's result.
    assistant = second.body["messages"][1]
    assert assistant["role"] == "assistant"
    assert assistant["content"][1] == {"type": "tool_use", "id": "toolu_acme",
                                       "name": "get_company",
                                       "input": {"company_number": "1234567"}}
    [result] = _tool_results(second)
    assert result["tool_use_id"] == "toolu_acme" and "is_error" not in result
    company = json.loads(result["content"])
    assert company["name"] == "ACME SOFTWARE LTD" and company["sic_codes"] == ["62012"]

    # One ledger row per call, priced from prices.json, summed into the metrics.
    rows = _ledger(conn, task_id)
    assert [(r["call_index"], r["stop_reason"]) for r in rows] == [(1, "tool_use"),
                                                                   (2, "end_turn")]
    assert rows[0]["cache_creation_input_tokens"] > 0 == rows[0]["cache_read_input_tokens"]
    assert rows[1]["cache_read_input_tokens"] == rows[0]["cache_creation_input_tokens"]
    assert rows[1]["cache_creation_input_tokens"] == 0
    table = load_price_table()
    for row in rows:
        assert row["model"] == MODEL and row["price_version"] == table.version
        assert row["request_id"].startswith("req_standin_")
        assert row["duration_ms"] >= 0
        expected = table.price(
            MODEL, input_tokens=row["input_tokens"], output_tokens=row["output_tokens"],
            cache_creation_input_tokens=row["cache_creation_input_tokens"],
            cache_read_input_tokens=row["cache_read_input_tokens"],
        )
        assert row["cost_usd"] == expected.cost_usd > 0
    [metrics] = _metrics(conn, task_id)
    assert LEDGER_KEYS <= set(metrics)
    assert metrics["llm_calls"] == 2
    for key in LEDGER_KEYS - {"llm_calls", "cost_usd"}:
        assert metrics[key] == sum(row[key] for row in rows)
    assert Decimal(str(metrics["cost_usd"])) == sum(row["cost_usd"] for row in rows)

    logs = conn.execute(
        "SELECT log_type, message FROM agent_task_logs WHERE task_id = %s AND log_type "
        "LIKE 'tool%%'", (task_id,)
    ).fetchall()
    assert logs == [("tool_success", "tool get_company: ok")]


async def test_tool_errors_go_back_to_the_model(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _llm_agent(conn)
    api.enqueue(
        tool_use("get_company", {"company_number": "99999999"}),
        tool_use("get_company", {"number": "1"}),
        tool_use("delete_everything", {}),
        text("I could not find that company."),
    )
    task_id = _enqueue(conn)
    assert await run_task_inline(pool, task_id, registry=_registry(),
                                 settings=settings) is Outcome.COMPLETED
    results = [_tool_results(request)[0] for request in api.message_requests()[1:]]
    assert all(result["is_error"] is True for result in results)
    assert results[0]["content"] == "no company with number 99999999"
    assert "company_number: Field required" in results[1]["content"]
    assert results[2]["content"] == "unknown tool 'delete_everything'"


async def test_company_and_stream_read_tools(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _add_company(conn)
    conn.execute(
        "INSERT INTO companies (company_number, name, post_town, sic_codes) VALUES "
        "('SC123456', 'BRAVO_DATA LTD', 'Edinburgh', '{63110}'), "
        "('02345678', 'CHARLIE 100% BAKERY LTD', 'Leeds', '{10710}')"
    )
    stream = conn.execute("INSERT INTO streams (name) VALUES ('s') RETURNING id").fetchone()
    assert stream
    conn.execute(
        "INSERT INTO stream_items (stream_id, company_id, quality_score, priority, position) "
        "SELECT %s, id, score, prio, pos FROM companies JOIN (VALUES "
        "('01234567', 4.6, 'critical', 1), ('SC123456', 3.2, 'medium', 2), "
        "('02345678', 1.0, 'low', 3)) AS v(number, score, prio, pos) "
        "ON v.number = company_number", (stream[0],),
    )
    _llm_agent(conn, tools=("list_companies", "search_companies", "list_stream_items"),
               max_steps=10)
    api.enqueue(
        tool_use("list_companies", {"limit": 2}),
        tool_use("search_companies", {"post_town": "leeds", "sic_code": "62"}),
        tool_use("search_companies", {"name": "100%"}),
        tool_use("search_companies", {}),
        tool_use("list_stream_items", {"stream_id": str(stream[0]), "min_quality_score": 3}),
        text("Two strong prospects."),
    )
    task_id = _enqueue(conn)

    assert await run_task_inline(pool, task_id, registry=_registry(),
                                 settings=settings) is Outcome.COMPLETED

    results = [_tool_results(request)[0] for request in api.message_requests()[1:]]
    listed, by_town_and_sic, by_literal_name, unfiltered, items = results

    def names(result: dict[str, Any], key: str = "companies") -> list[str]:
        return [row["name"] for row in json.loads(result["content"])[key]]

    assert names(listed) == ["ACME SOFTWARE LTD", "BRAVO_DATA LTD"]
    assert names(by_town_and_sic) == ["ACME SOFTWARE LTD"]
    # % and _ in a name are literal characters, not wildcards.
    assert names(by_literal_name) == ["CHARLIE 100% BAKERY LTD"]
    assert unfiltered["is_error"] and "at least one of name, sic_code, post_town" in \
        unfiltered["content"]
    scored = json.loads(items["content"])["items"]
    assert [(i["name"], i["quality_score"], i["priority"]) for i in scored] == [
        ("ACME SOFTWARE LTD", 4.6, "critical"), ("BRAVO_DATA LTD", 3.2, "medium")]


async def test_max_steps_stops_the_loop_with_the_last_text(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _add_company(conn)
    _llm_agent(conn, max_steps=2)
    api.enqueue(
        tool_use("get_company", {"company_number": "01234567"}, say="Checking the register."),
        tool_use("get_company", {"company_number": "01234567"}, say="Checking once more."),
        text("never sent"),
    )
    task_id = _enqueue(conn)

    assert await run_task_inline(pool, task_id, registry=_registry(),
                                 settings=settings) is Outcome.COMPLETED

    assert _task(conn, task_id)[2] == {
        "text": "Checking once more.", "stop_reason": "max_steps", "steps": 2}
    assert len(api.message_requests()) == 2 and api.pending == 1
    # The capped step's tool call was not run: nothing would have read its result.
    tool_logs = conn.execute(
        "SELECT count(*) FROM agent_task_logs WHERE task_id = %s AND log_type = "
        "'tool_success'", (task_id,)
    ).fetchone()
    assert tool_logs == (1,)
    assert _metrics(conn, task_id)[0]["llm_calls"] == 2


# Retry policy --------------------------------------------------------------------------


async def test_rate_limit_waits_retry_after_without_spending_a_task_retry(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _llm_agent(conn, tools=())
    api.enqueue(error(429, "rate_limit_error", "Number of request tokens has exceeded your "
                      "per-minute rate limit", retry_after="1"),
                text("Done."))
    task_id = _enqueue(conn)

    began = time.monotonic()
    outcome = await run_task_inline(pool, task_id, registry=_registry(), settings=settings)
    elapsed = time.monotonic() - began

    assert outcome is Outcome.COMPLETED
    assert _task(conn, task_id)[:2] == ("completed", 0)
    assert 1.0 <= elapsed < 5.0
    first, second = api.message_requests()
    assert second.received_at - first.received_at >= 1.0
    assert conn.execute("SELECT count(*) FROM agent_executions WHERE task_id = %s",
                        (task_id,)).fetchone() == (1,)
    assert len(_ledger(conn, task_id)) == 1  # a refused request costs nothing
    [(message,)] = conn.execute(
        "SELECT message FROM agent_task_logs WHERE task_id = %s AND log_type = 'warning'",
        (task_id,)).fetchall()
    assert "rate_limit_error" in message and "retrying in 1.00 s" in message


async def test_rate_limit_wait_is_capped_and_bounded(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _llm_agent(conn, tools=())
    policy = RetryPolicy(rate_limit_max_wait=0.2, rate_limit_budget=0.5,
                         backoff_base=0.01, backoff_max=0.05)
    # Each retry-after of an hour is cut to 0.2 s; the third would pass the 0.5 s
    # budget, so the attempt hands the task back to the retry machinery instead.
    api.enqueue(*[error(429, "rate_limit_error", "slow down", retry_after="3600")] * 3)
    task_id = _enqueue(conn)

    began = time.monotonic()
    outcome = await run_task_inline(pool, task_id, registry=_registry(policy), settings=settings)

    assert time.monotonic() - began < 3
    assert outcome is Outcome.RETRY
    status, retry_count, _, message = _task(conn, task_id)
    assert (status, retry_count) == ("pending", 1)
    assert "429 rate_limit_error: slow down" in message
    assert len(api.message_requests()) == 3
    # The task's next attempt waits out the (capped) retry-after.
    row = conn.execute(
        "SELECT scheduled_for - now() > interval '0.1 seconds' FROM agent_tasks WHERE id = %s",
        (task_id,)).fetchone()
    assert row == (True,)


async def test_spend_limit_429_is_not_retried(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _llm_agent(conn, tools=())
    api.enqueue(error(429, "rate_limit_error", "You have reached your monthly spend limit",
                      error_code="enforced_spend_limit_reached"))
    task_id = _enqueue(conn)
    outcome = await run_task_inline(pool, task_id, registry=_registry(), settings=settings)
    assert outcome is Outcome.FAILED
    assert "monthly spend limit" in _task(conn, task_id)[3]
    assert len(api.message_requests()) == 1


async def test_overloaded_is_retried_then_succeeds(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _llm_agent(conn, tools=())
    api.enqueue(error(529, "overloaded_error", "Overloaded"),
                error(529, "overloaded_error", "Overloaded"),
                text("Fine now."))
    task_id = _enqueue(conn)

    outcome = await run_task_inline(pool, task_id, registry=_registry(), settings=settings)

    assert outcome is Outcome.COMPLETED
    status, retry_count, output, _ = _task(conn, task_id)
    assert (status, retry_count, output["text"]) == ("completed", 0, "Fine now.")
    assert len(api.message_requests()) == 3
    assert _metrics(conn, task_id)[0]["llm_calls"] == 1


async def test_bad_request_fails_permanently_with_the_api_message(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _llm_agent(conn, tools=())
    api.enqueue(error(400, "invalid_request_error",
                      "max_tokens: 200000 > 128000, which is the maximum allowed"))
    task_id = _enqueue(conn)

    outcome = await run_task_inline(pool, task_id, registry=_registry(), settings=settings)

    assert outcome is Outcome.FAILED
    status, retry_count, _, message = _task(conn, task_id)
    assert (status, retry_count) == ("failed", 0)
    assert "Anthropic API 400 invalid_request_error: max_tokens: 200000 > 128000" in message
    assert "request-id req_standin_" in message
    assert len(api.message_requests()) == 1
    assert _ledger(conn, task_id) == []


async def test_server_errors_past_the_retries_fail_the_attempt_not_the_task(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _llm_agent(conn, tools=())
    api.enqueue(*[error(500, "api_error", "Internal server error")] * 3)
    task_id = _enqueue(conn)
    outcome = await run_task_inline(pool, task_id, registry=_registry(), settings=settings)
    assert outcome is Outcome.RETRY
    status, retry_count, _, message = _task(conn, task_id)
    assert (status, retry_count) == ("pending", 1)
    assert "500 api_error: Internal server error" in message and "after 3 tries" in message


async def test_retried_task_keeps_each_attempts_ledger_and_saves_insights_once(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _add_company(conn)
    _llm_agent(conn)
    stream = conn.execute("INSERT INTO streams (name) VALUES ('Leeds software') "
                          "RETURNING id").fetchone()
    assert stream
    insight = {"title": "ACME is hiring", "body": "Three developer roles open.",
               "kind": "opportunity", "company_number": "01234567",
               "stream_id": str(stream[0]), "metadata": {"source": "website"}}
    # Attempt 1: one good call (the model saves an insight), then a 500 storm.
    api.enqueue(tool_use("save_insight", insight),
                *[error(500, "api_error", "Internal server error")] * 3)
    task_id = _enqueue(conn, "Find signals for ACME and save them.")
    assert await run_task_inline(pool, task_id, registry=_registry(),
                                 settings=settings) is Outcome.RETRY
    # Nothing of attempt 1 reached the insights table; its cost did reach the ledger.
    assert conn.execute("SELECT count(*) FROM stream_insights").fetchone() == (0,)
    assert len(_ledger(conn, task_id)) == 1

    # Attempt 2 replays the first turn and its save_insight from the journal (durable
    # turns: not paid, not run again), then makes the failed call again and completes.
    api.enqueue(text("Saved one insight."))
    assert await run_task_inline(pool, task_id, registry=_registry(),
                                 settings=settings) is Outcome.COMPLETED

    assert _task(conn, task_id)[:2] == ("completed", 1)
    rows = _ledger(conn, task_id)
    assert [(r["attempt"], r["call_index"]) for r in rows] == [(1, 1), (2, 1)]
    first, second = _metrics(conn, task_id)
    assert (first["llm_calls"], second["llm_calls"], second["llm_replayed_calls"]) == (1, 1, 1)
    assert Decimal(str(first["cost_usd"])) == rows[0]["cost_usd"]
    assert Decimal(str(second["cost_usd"])) == rows[1]["cost_usd"]
    saved = conn.execute(
        "SELECT i.title, i.body, i.kind, i.metadata, i.stream_id = s.id, c.company_number, "
        "e.attempt FROM stream_insights i JOIN streams s ON true "
        "JOIN companies c ON c.id = i.company_id JOIN agent_executions e "
        "ON e.id = i.execution_id WHERE i.task_id = %s", (task_id,)
    ).fetchall()
    assert saved == [("ACME is hiring", "Three developer roles open.", "opportunity",
                      {"source": "website"}, True, "01234567", 2)]


# Streaming -------------------------------------------------------------------------------


async def test_streamed_calls_run_the_same_loop_and_ledger(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _add_company(conn)
    _llm_agent(conn, configuration={"stream": True, "max_tokens": 32000})
    api.enqueue(
        stream_error("overloaded_error", "Overloaded"),  # fails after the 200: retried
        tool_use("get_company", {"company_number": "01234567"}, id="toolu_s1"),
        text("A long report about ACME SOFTWARE LTD. " * 20),
    )
    task_id = _enqueue(conn)

    assert await run_task_inline(pool, task_id, registry=_registry(),
                                 settings=settings) is Outcome.COMPLETED

    output = _task(conn, task_id)[2]
    assert output == {"text": "A long report about ACME SOFTWARE LTD. " * 20,
                      "stop_reason": "end_turn", "steps": 2}
    requests = api.message_requests()
    assert len(requests) == 3
    assert all(r.body["stream"] is True and r.body["max_tokens"] == 32000 for r in requests)
    # The streamed tool_use (assembled from input_json_delta pieces) ran and went back.
    assert _tool_results(requests[2])[0]["tool_use_id"] == "toolu_s1"
    rows = _ledger(conn, task_id)
    assert len(rows) == 2
    assert rows[1]["output_tokens"] > 100 and rows[1]["cache_read_input_tokens"] > 0
    assert all(row["request_id"].startswith("req_standin_") for row in rows)


# Configuration and offline behaviour -----------------------------------------------------


async def test_without_api_key_the_task_fails_permanently_offline(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn
) -> None:
    _llm_agent(conn)
    task_id = _enqueue(conn)
    outcome = await run_task_inline(pool, task_id, registry=_registry(),
                                    settings=test_settings(ANTHROPIC_BASE_URL=api.url))
    assert outcome is Outcome.FAILED
    status, retry_count, _, message = _task(conn, task_id)
    assert (status, retry_count) == ("failed", 0)
    assert message.startswith("no ANTHROPIC_API_KEY configured")
    assert api.requests == []


async def test_unknown_tool_names_fail_permanently_naming_them(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _llm_agent(conn, tools=("get_company", "teleport", "read_minds"))
    task_id = _enqueue(conn)
    outcome = await run_task_inline(pool, task_id, registry=_registry(), settings=settings)
    assert outcome is Outcome.FAILED
    message = _task(conn, task_id)[3]
    assert "unknown tool(s) in tool_names: teleport, read_minds" in message
    assert api.requests == []


@pytest.mark.parametrize("payload", ['{"prompt": ""}', '{"prompt": "   "}', "{}",
                                     '{"prompt": "hi", "temperature": 1}'])
async def test_bad_payloads_fail_permanently(
    conn: Conn, pool: AsyncConnectionPool, settings: Settings, payload: str
) -> None:
    _llm_agent(conn)
    row = conn.execute("SELECT enqueue_agent_task('analyst', %s::jsonb)", (payload,)).fetchone()
    assert row
    outcome = await run_task_inline(pool, row[0], registry=_registry(), settings=settings)
    assert outcome is Outcome.FAILED
    assert "prompt" in _task(conn, str(row[0]))[3] or "temperature" in _task(conn, str(row[0]))[3]


async def test_unknown_model_is_priced_at_the_ceiling_and_flagged(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _llm_agent(conn, tools=(), model="claude-unreleased-9")
    api.enqueue(text("Hello."))
    task_id = _enqueue(conn)
    assert await run_task_inline(pool, task_id, registry=_registry(),
                                 settings=settings) is Outcome.COMPLETED
    [row] = _ledger(conn, task_id)
    assert row["price_version"] == load_price_table().version + CEILING_SUFFIX
    warning = conn.execute(
        "SELECT message FROM agent_task_logs WHERE task_id = %s AND log_type = 'warning'",
        (task_id,)).fetchone()
    assert warning and "not in the price table" in warning[0]


async def test_deprecated_model_is_flagged_in_the_task_log(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    # The schema's default model; anthropic 2.10.0 lists it as deprecated.
    _llm_agent(conn, tools=(), model="claude-sonnet-4-5")
    api.enqueue(text("Hello."))
    task_id = _enqueue(conn)
    with pytest.warns(DeprecationWarning, match="claude-sonnet-4-5"):
        outcome = await run_task_inline(pool, task_id, registry=_registry(), settings=settings)
    assert outcome is Outcome.COMPLETED
    warning = conn.execute(
        "SELECT message FROM agent_task_logs WHERE task_id = %s AND log_type = 'warning'",
        (task_id,)).fetchone()
    assert warning and "deprecated by Anthropic and reaches end of life" in warning[0]


# Helpers for the business agents ---------------------------------------------------------


class _JudgeInput(BaseModel):
    what: str


class _JudgingAgent:
    """Stands in for a business agent that asks the model for a judgement."""

    agent_type: ClassVar[str] = "scoring_agent"
    Input: ClassVar[type[BaseModel]] = _JudgeInput

    async def run(self, ctx: AgentContext, payload: _JudgeInput) -> AgentResult:
        if payload.what == "qualify":
            company = {"company_number": "01234567", "name": "ACME SOFTWARE LTD",
                       "post_town": "LEEDS", "sic_codes": ["62012"], "employee_estimate": 45,
                       "id": "not for the model", "website": None}
            goal = {"industry": "software", "location": "Leeds",
                    "employee_count": {"min": 10, "max": 200}}
            result = await qualify_company(ctx, company, goal, policy=FAST)
            return AgentResult(output=result.model_dump())
        summary = await summarise_website(ctx, "ACME builds CRM software. We are hiring!",
                                          policy=FAST)
        return AgentResult(output=summary.model_dump())


def _judge(conn: Conn, what: str) -> str:
    conn.execute("INSERT INTO ai_agents (name, agent_type, model) VALUES "
                 "('judge', 'scoring_agent', %s) ON CONFLICT DO NOTHING", (MODEL,))
    row = conn.execute("SELECT enqueue_agent_task('judge', %s::jsonb)",
                       (json.dumps({"what": what}),)).fetchone()
    assert row
    return str(row[0])


async def test_qualify_company_parses_and_validates_the_answer(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    answer = {"qualified": True, "fit_score": 0.82, "reasons": ["Software, in Leeds"],
              "buying_signals": [{"type": "hiring", "detail": "45 staff and growing",
                                  "strength": "high"}]}
    # The first answer is not valid (fit_score out of range): one correction turn.
    api.enqueue(text('{"qualified": true, "fit_score": 7}'),
                text("Here you go:\n```json\n" + json.dumps(answer) + "\n```"))
    task_id = _judge(conn, "qualify")

    outcome = await run_task_inline(pool, task_id, registry=Registry([_JudgingAgent()]),
                                    settings=settings)

    assert outcome is Outcome.COMPLETED
    assert _task(conn, task_id)[2] == answer
    first, second = api.message_requests()
    prompt = first.body["messages"][0]["content"]
    assert '"name": "ACME SOFTWARE LTD"' in prompt and "Leeds" in prompt
    assert "not for the model" not in prompt and '"website"' not in prompt
    assert first.body["system"][0]["cache_control"] == {"type": "ephemeral"}
    correction = second.body["messages"][-1]["content"]
    assert "fit_score" in correction and "only the JSON" in correction
    assert _metrics(conn, task_id)[0]["llm_calls"] == 2


async def test_judgement_that_stays_invalid_retries_the_task(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    api.enqueue(text("I think it fits."), text("Definitely a fit!"))
    task_id = _judge(conn, "qualify")
    outcome = await run_task_inline(pool, task_id, registry=Registry([_JudgingAgent()]),
                                    settings=settings)
    assert outcome is Outcome.RETRY
    assert "not a valid QualifyResult: no JSON object" in _task(conn, task_id)[3]


async def test_summarise_website(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    answer = {"industry": "Software", "description": "ACME builds CRM software.",
              "signals": [{"type": "hiring", "detail": "Says it is hiring", "strength": "medium"}]}
    api.enqueue(text(json.dumps(answer)))
    task_id = _judge(conn, "website")
    assert await run_task_inline(pool, task_id, registry=Registry([_JudgingAgent()]),
                                 settings=settings) is Outcome.COMPLETED
    assert _task(conn, task_id)[2] == answer
    [request] = api.message_requests()
    assert request.body["messages"][0]["content"].startswith("Website text:\nACME builds")


# The stand-in itself (what the benchmark relies on) --------------------------------------


async def test_standin_latency_and_default_reply() -> None:
    def echo(body: dict[str, Any]) -> Reply:
        return text(f"echo: {body['messages'][-1]['content']}")

    with AnthropicStandIn(latency=0.3, default=echo) as standin:
        async with anthropic.AsyncAnthropic(api_key="k", base_url=standin.url,
                                            max_retries=0) as client:
            began = time.monotonic()
            message = await client.messages.create(
                model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "ping"}])
            assert time.monotonic() - began >= 0.3
    assert text_of(message) == "echo: ping"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
