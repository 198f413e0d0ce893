"""NUL characters never reach Postgres (issue 9, item 5): text and jsonb written through
a storable connection (runner.store.text.make_storable, which the pools' configure
calls) lose them, so an attempt whose error, log line, output or business rows carry one
is recorded normally instead of failing its finish and being re-run by rescue."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import psycopg
import pytest
from psycopg.types.json import Json, Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from agents.enrichment_agent import EnrichmentAgent
from agents.llm import RetryPolicy
from runner.api import AgentContext, AgentResult, FailPermanently, RetryLater
from runner.outcomes import Outcome
from runner.plugins import Registry
from runner.store.text import make_storable
from tests.harness import run_task_inline, task_state, test_settings
from tests.standins.anthropic_api import AnthropicStandIn, text
from tests.standins.websites import WebsitesStandIn, running_websites

Conn = psycopg.Connection[tuple[Any, ...]]


def _enqueue(conn: Conn, agent_type: str = "noop", configuration: Any = None) -> str:
    conn.execute(
        "INSERT INTO ai_agents (name, agent_type, configuration) VALUES ('x', %s, %s)",
        (agent_type, json.dumps(configuration or {})),
    )
    row = conn.execute("SELECT enqueue_agent_task('x')").fetchone()
    assert row
    return str(row[0])


# The boundary itself ------------------------------------------------------------------


def test_postgres_refuses_nul_without_the_boundary(conn: Conn) -> None:
    with pytest.raises(psycopg.DataError):
        conn.execute("SELECT %s::text", ("a\x00b",))
    with pytest.raises(psycopg.DataError):
        conn.execute("SELECT %s::jsonb", (Jsonb({"k": "a\x00b"}),))


def test_every_str_and_json_dumper_drops_nul(conn: Conn) -> None:
    make_storable(conn)
    row = conn.execute(
        "SELECT %s::text, %b::text, %t::text, %s::varchar, %s::name, %s::text[], %b::text[],"
        " %s, %b, %s",
        ("a\x00b", "c\x00d", "e\x00f", "g\x00", "\x00h", ["i\x00", None, "j"], ["k\x00"],
         Jsonb({"l\x00": ["m\x00", 1, {"n": "\x00"}]}), Jsonb("o\x00"), Json(["p\x00"])),
    ).fetchone()
    assert row == ("ab", "cd", "ef", "g", "h", ["i", None, "j"], ["k"],
                   {"l": ["m", 1, {"n": ""}]}, "o", ["p"])


def test_copy_with_declared_types_drops_nul(conn: Conn) -> None:
    make_storable(conn)
    conn.execute("CREATE TEMP TABLE copied (t text, v varchar, j jsonb)")
    with conn.cursor() as cur, cur.copy("COPY copied FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["text", "varchar", "jsonb"])
        copy.write_row(("a\x00", "b\x00", Jsonb({"c": "d\x00"})))
    assert conn.execute("SELECT * FROM copied").fetchall() == [("a", "b", {"c": "d"})]


def test_a_backslash_before_u0000_is_kept(conn: Conn) -> None:
    """The JSON is cleaned as values, not as text: a literal ``\\u0000`` (backslash,
    then ``u0000``) in a string is legitimate content and stays."""
    make_storable(conn)
    literal = "path\\u0000end"
    assert conn.execute("SELECT %s", (Jsonb({"v": literal}),)).fetchone() == ({"v": literal},)


# Test agents ----------------------------------------------------------------------------


class _AnyInput(BaseModel):
    pass


class _FailingAgent:
    agent_type: ClassVar[str] = "noop"
    Input: ClassVar[type[BaseModel]] = _AnyInput

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def run(self, ctx: AgentContext, payload: Any) -> AgentResult:
        raise self.error


class _ChattyAgent:
    """Logs, outputs and summarises text with NULs in keys and values."""

    agent_type: ClassVar[str] = "noop"
    Input: ClassVar[type[BaseModel]] = _AnyInput

    async def run(self, ctx: AgentContext, payload: Any) -> AgentResult:
        await ctx.log("fetched\x00 page", level="warning", url="http://x/\x00", **{"k\x00": 1})
        return AgentResult(output={"text": "hello\x00 world", "items\x00": ["a\x00", 2]},
                           summary={"note": "\x00"})


class _InsightAgent:
    """Writes business rows through its commit hook, as agents/tools.py does."""

    agent_type: ClassVar[str] = "noop"
    Input: ClassVar[type[BaseModel]] = _AnyInput

    async def run(self, ctx: AgentContext, payload: Any) -> AgentResult:
        async def commit(aconn: psycopg.AsyncConnection[Any]) -> None:
            await aconn.execute(
                "INSERT INTO stream_insights (task_id, kind, title, body, metadata) "
                "VALUES (%s, 'note', %s, %s, %s)",
                (ctx.task_id, "Title\x00", "Body\x00 text", Jsonb({"src\x00": "web\x00"})),
            )
            await aconn.execute(
                "INSERT INTO agent_task_logs (task_id, message, metadata) VALUES (%s, %s, %s)",
                (ctx.task_id, "side\x00 effect", Jsonb({"tags": ["\x00x"]})),
            )

        return AgentResult(output={"ok": True}, commit=commit)


# Attempts -------------------------------------------------------------------------------


async def test_a_retryable_error_with_nul_is_recorded_as_a_retry(
    conn: Conn, pool: AsyncConnectionPool
) -> None:
    task_id = _enqueue(conn)
    registry = Registry([_FailingAgent(RetryLater("upstream said \x00bad\x00"))])
    assert await run_task_inline(pool, task_id, registry=registry) is Outcome.RETRY
    status, retry_count, _, error = task_state(conn, task_id)
    assert (status, retry_count, error) == ("pending", 1, "upstream said bad")
    assert conn.execute(
        "SELECT status, error_message FROM agent_executions WHERE task_id = %s", (task_id,)
    ).fetchall() == [("failed", "upstream said bad")]


async def test_a_permanent_error_with_nul_fails_the_task_with_the_message(
    conn: Conn, pool: AsyncConnectionPool
) -> None:
    task_id = _enqueue(conn)
    registry = Registry([_FailingAgent(FailPermanently("no\x00 way"))])
    assert await run_task_inline(pool, task_id, registry=registry) is Outcome.FAILED
    status, retry_count, _, error = task_state(conn, task_id)
    assert (status, retry_count, error) == ("failed", 0, "no way")


async def test_an_unexpected_exception_with_nul_is_recorded(
    conn: Conn, pool: AsyncConnectionPool
) -> None:
    task_id = _enqueue(conn)
    registry = Registry([_FailingAgent(ValueError("bad\x00 value"))])
    assert await run_task_inline(pool, task_id, registry=registry) is Outcome.RETRY
    error = task_state(conn, task_id)[3]
    assert "bad value" in error and "\x00" not in error


async def test_log_output_and_summary_with_nul_complete(
    conn: Conn, pool: AsyncConnectionPool
) -> None:
    task_id = _enqueue(conn)
    assert await run_task_inline(pool, task_id, registry=Registry([_ChattyAgent()])) \
        is Outcome.COMPLETED
    status, _, output, error = task_state(conn, task_id)
    assert (status, output, error) == (
        "completed", {"text": "hello world", "items": ["a", 2]}, None)
    assert conn.execute(
        "SELECT output_data, results_summary FROM agent_executions WHERE task_id = %s",
        (task_id,),
    ).fetchone() == ({"text": "hello world", "items": ["a", 2]}, {"note": ""})
    logs = conn.execute(
        "SELECT log_type, message, metadata FROM agent_task_logs WHERE task_id = %s "
        "AND message LIKE 'fetched%%'", (task_id,),
    ).fetchall()
    assert len(logs) == 1
    log_type, message, metadata = logs[0]
    assert (log_type, message) == ("warning", "fetched page")
    assert metadata["url"] == "http://x/" and metadata["k"] == 1


async def test_business_rows_of_a_commit_hook_are_stored_without_nul(
    conn: Conn, pool: AsyncConnectionPool
) -> None:
    task_id = _enqueue(conn)
    assert await run_task_inline(pool, task_id, registry=Registry([_InsightAgent()])) \
        is Outcome.COMPLETED
    assert conn.execute(
        "SELECT title, body, metadata FROM stream_insights WHERE task_id = %s", (task_id,)
    ).fetchall() == [("Title", "Body text", {"src": "web"})]
    assert conn.execute(
        "SELECT metadata FROM agent_task_logs WHERE task_id = %s AND message = 'side effect'",
        (task_id,),
    ).fetchall() == [({"tags": ["x"]},)]


# The enrichment agent reading a page with NULs ------------------------------------------

FAST = RetryPolicy(
    rate_limit_max_wait=2.0, rate_limit_budget=5.0, rate_limit_default_wait=0.05,
    transient_retries=2, backoff_base=0.01, backoff_max=0.05, request_timeout=10.0,
)
WEBSITE = {"deadline_seconds": 2.0, "allow_private_addresses": True}


@pytest.fixture(scope="module")
def sites() -> Iterator[WebsitesStandIn]:
    with running_websites() as standin:
        yield standin


def _company_in_stream(conn: Conn, website: str) -> uuid.UUID:
    row = conn.execute(
        "INSERT INTO companies (company_number, name, website, sic_codes, sic_texts) "
        "VALUES ('07700001', 'NUL LTD', %s, '{62012}', "
        "'{\"62012 - Business and domestic software development\"}') RETURNING id",
        (website,)).fetchone()
    assert row
    stream = conn.execute("INSERT INTO streams (name) VALUES ('nul') RETURNING id").fetchone()
    assert stream
    conn.execute("INSERT INTO stream_items (stream_id, company_id) VALUES (%s, %s)",
                 (stream[0], row[0]))
    return uuid.UUID(str(stream[0]))


def _enqueue_enrichment(conn: Conn, stream: uuid.UUID) -> str:
    conn.execute(
        "INSERT INTO ai_agents (name, agent_type, model, configuration) "
        "VALUES ('enricher', 'enrichment_agent', 'claude-sonnet-4-6', %s)",
        (json.dumps({"fetch_websites": True, "website": WEBSITE}),),
    )
    row = conn.execute("SELECT enqueue_agent_task('enricher', %s::jsonb)",
                       (json.dumps({"stream_id": str(stream)}),)).fetchone()
    assert row
    return str(row[0])


def _signals(conn: Conn) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    row = conn.execute(
        "SELECT c.buying_signals, i.buying_signals, c.industry_description "
        "FROM companies c JOIN stream_items i ON i.company_id = c.id "
        "WHERE c.company_number = '07700001'").fetchone()
    assert row
    return row[0], row[1], row[2]


async def test_enrichment_of_a_page_with_nul_completes_without_it(
    conn: Conn, pool: AsyncConnectionPool, sites: WebsitesStandIn,
) -> None:
    task_id = _enqueue_enrichment(conn, _company_in_stream(conn, sites.site_url("nul")))
    registry = Registry([EnrichmentAgent(llm_policy=FAST)])
    assert await run_task_inline(pool, task_id, registry=registry,
                                 settings=test_settings()) is Outcome.COMPLETED
    status, _, output, error = task_state(conn, task_id)
    assert (status, output["enriched_count"], error) == ("completed", 1, None)
    on_company, on_item, _ = _signals(conn)
    [hiring] = [s for s in on_company if s["type"] == "hiring"]
    careers = sites.site_url("nul") + "careers/"
    assert hiring["detail"] == f"careers page linked: {careers}"
    assert hiring["links"] == [careers]
    assert on_item == on_company


async def test_enrichment_with_the_model_reading_a_page_with_nul(
    conn: Conn, pool: AsyncConnectionPool, sites: WebsitesStandIn,
) -> None:
    """The page's text goes to the model (and into the attempt's journal); the model's
    answer carries NULs too."""
    answer = {"industry": "Craft\x00s", "description": "Hand\x00made goods.",
              "signals": [{"type": "expansion", "detail": "New\x00 site", "strength": "low"}]}
    task_id = _enqueue_enrichment(conn, _company_in_stream(conn, sites.site_url("nul")))
    registry = Registry([EnrichmentAgent(llm_policy=FAST)])
    with AnthropicStandIn() as api:
        api.enqueue(text(json.dumps(answer)))
        settings = test_settings(ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=api.url)
        assert await run_task_inline(pool, task_id, registry=registry,
                                     settings=settings) is Outcome.COMPLETED
        [request] = api.message_requests()
    assert "Hand\x00made goods." in request.body["messages"][0]["content"]
    status, _, output, error = task_state(conn, task_id)
    assert (status, output["enriched_count"], error) == ("completed", 1, None)
    on_company, _, description = _signals(conn)
    assert description == "Crafts: Handmade goods."
    assert [s["detail"] for s in on_company if s["source"] == "llm"] == ["New site"]
    assert conn.execute(
        "SELECT count(*) FROM llm_calls c JOIN agent_executions e ON e.id = c.execution_id "
        "WHERE e.task_id = %s", (task_id,)).fetchone() == (1,)
