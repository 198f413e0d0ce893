"""The built-in tools an ``llm_agent`` may name in ``ai_agents.tool_names``.

A tool is a name, a description, a pydantic input model (its JSON schema is what the
model sees) and an async handler. Handlers read through short ``ctx.connection()``
blocks and never write: a write is buffered in :class:`PendingWrites` and applied by
the run's ``AgentResult.commit`` hook, inside the transaction that completes the task.
A retried task therefore never duplicates what a failed attempt "saved".

Input the model got wrong (schema violations, an unknown company) goes back to it as
an ``is_error`` tool result so it can correct itself; anything else a handler raises
(a database outage) propagates and fails the attempt like any other error.

Tenancy: a tool sees only the agent's organization (``ctx.agent.org_id``), because a
prompt, or text injected into a page the model read, may ask for anything. In this
schema companies are organization data, not a shared register: ``companies.org_id``
says whose they are (an import loads the default organization's; the opportunity bot
adds search hits to its stream's organization and searches only those), so every
company read is filtered by it. Streams are filtered by ``streams.org_id``, and stream
items through their stream. ``save_insight`` names only the organization's own stream
and company and writes the agent's ``org_id``. Another organization's stream or company
gets the same answer as one that does not exist ("no stream with id ..."), so the
tools do not even reveal that it exists.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar
from uuid import UUID

import psycopg
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agents.llm import ToolOutcome
from agents.store import llm as store
from runner.api import AgentContext, FailPermanently, describe_validation_error

if TYPE_CHECKING:
    from anthropic.types import ToolParam

__all__ = [
    "BUILTIN_TOOLS",
    "MAX_INSIGHTS_PER_RUN",
    "BoundTool",
    "PendingWrites",
    "ToolError",
    "ToolRegistry",
    "ToolSpec",
]

MAX_INSIGHTS_PER_RUN: Final = 50
_COMPANY_NUMBER = re.compile(r"^[A-Z0-9]{2}[0-9]{6}$")

A = TypeVar("A", bound=BaseModel)


class ToolError(Exception):
    """A failure the model should be told about (it can fix its input and try again)."""


@dataclasses.dataclass(slots=True)
class PendingWrites:
    """Rows the tools asked to write during one attempt, applied only if it completes."""

    insights: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.insights)

    def effects_since(self, buffered: int) -> dict[str, Any] | None:
        """The insights buffered after the first ``buffered``, as JSON (a tool call's
        effects, journaled with its result), or None."""
        added = self.insights[buffered:]
        if not added:
            return None
        return {"insights": json.loads(json.dumps(added, default=_json_value))}

    def restore(self, effects: Any, *, task_id: UUID, execution_id: UUID) -> None:
        """Buffer again the insights of a journaled call (from :meth:`effects_since`),
        as this attempt's: a replayed ``save_insight`` is not run twice, and what it
        saved still commits with the task, once."""
        if not isinstance(effects, Mapping):
            return
        for insight in effects.get("insights", ()):
            row = dict(insight)
            for key in ("org_id", "stream_id", "company_id"):
                if row.get(key) is not None:
                    row[key] = UUID(str(row[key]))
            row["task_id"], row["execution_id"] = task_id, execution_id
            self.insights.append(row)

    async def commit(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The ``AgentResult.commit`` hook: runs in the finishing transaction."""
        await store.insert_insights(conn, self.insights)


Handler = Callable[[AgentContext, PendingWrites, A], Awaitable[Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class ToolSpec(Generic[A]):
    name: str
    description: str
    input_model: type[A]
    handler: Handler[A]

    def definition(self) -> ToolParam:
        schema = self.input_model.model_json_schema()
        schema.pop("title", None)
        return {"name": self.name, "description": self.description, "input_schema": schema}


@dataclasses.dataclass(frozen=True, slots=True)
class BoundTool(Generic[A]):
    """A tool bound to one attempt (its context and write buffer): what the loop runs."""

    spec: ToolSpec[A]
    ctx: AgentContext
    writes: PendingWrites

    @property
    def name(self) -> str:
        return self.spec.name

    def definition(self) -> ToolParam:
        return self.spec.definition()

    async def invoke(self, arguments: Mapping[str, Any]) -> ToolOutcome:
        try:
            args = self.spec.input_model.model_validate(dict(arguments))
        except ValidationError as exc:
            problems = describe_validation_error(exc, root="input", limit=10)
            return ToolOutcome(f"invalid input: {problems}", is_error=True)
        buffered = len(self.writes.insights)
        try:
            result = await self.spec.handler(self.ctx, self.writes, args)
        except ToolError as exc:
            return ToolOutcome(str(exc), is_error=True)
        return ToolOutcome(json.dumps(result, default=_json_value, ensure_ascii=False),
                           effects=self.writes.effects_since(buffered))

    def restore(self, effects: Any) -> None:
        self.writes.restore(effects, task_id=self.ctx.task_id,
                            execution_id=self.ctx.execution_id)


class ToolRegistry:
    def __init__(self, specs: Iterable[ToolSpec[Any]]) -> None:
        self._specs: dict[str, ToolSpec[Any]] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"duplicate tool name {spec.name!r}")
            self._specs[spec.name] = spec

    def names(self) -> list[str]:
        return sorted(self._specs)

    def select(self, names: Sequence[str]) -> list[ToolSpec[Any]]:
        """The named tools, in order; :class:`FailPermanently` naming any unknown one
        (an agent definition that names a missing tool can never run as intended)."""
        unknown = [name for name in names if name not in self._specs]
        if unknown:
            raise FailPermanently(
                f"unknown tool(s) in tool_names: {', '.join(unknown)} "
                f"(available: {', '.join(self.names())})"
            )
        return [self._specs[name] for name in dict.fromkeys(names)]

    def bind(
        self, names: Sequence[str], ctx: AgentContext, writes: PendingWrites
    ) -> list[BoundTool[Any]]:
        return [BoundTool(spec, ctx, writes) for spec in self.select(names)]


def _json_value(value: object) -> object:
    """JSON for what rows hold besides JSON types."""
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime.date):  # datetime too
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _company_number(value: str) -> str:
    """As the register prints it: upper case, numeric ones zero-padded to 8."""
    number = value.strip().upper().replace(" ", "")
    if number.isdigit():
        number = number.zfill(8)
    if not _COMPANY_NUMBER.match(number):
        raise ValueError("a company number is 8 characters: 8 digits, or 2 letters and 6 digits")
    return number


# Inputs --------------------------------------------------------------------------------


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ListCompaniesInput(_Input):
    limit: int = Field(default=20, ge=1, le=50, description="rows to return (max 50)")
    offset: int = Field(default=0, ge=0, le=10_000, description="rows to skip, for paging")


class SearchCompaniesInput(_Input):
    name: str | None = Field(default=None, min_length=2, max_length=160,
                             description="part of the company name (case-insensitive)")
    sic_code: str | None = Field(default=None, pattern=r"^[0-9]{2,5}$",
                                 description="SIC 2007 code or its prefix, e.g. 62 or 62012")
    post_town: str | None = Field(default=None, min_length=2, max_length=80,
                                  description="post town, e.g. LEEDS (exact, any case)")
    limit: int = Field(default=20, ge=1, le=50, description="rows to return (max 50)")

    @model_validator(mode="after")
    def _one_filter(self) -> SearchCompaniesInput:
        if self.name is None and self.sic_code is None and self.post_town is None:
            raise ValueError("give at least one of name, sic_code, post_town")
        return self


class GetCompanyInput(_Input):
    company_number: str = Field(min_length=1, max_length=12,
                                description="Companies House number, e.g. 01234567 or SC123456")


class ListStreamItemsInput(_Input):
    stream_id: UUID
    min_quality_score: float | None = Field(default=None, ge=0, le=5,
                                            description="only items scored at least this (0-5)")
    limit: int = Field(default=25, ge=1, le=100, description="rows to return (max 100)")


class SaveInsightInput(_Input):
    title: str = Field(min_length=1, max_length=300)
    body: str = Field(default="", max_length=20_000)
    kind: str = Field(default="note", pattern=r"^[a-z][a-z0-9_]{0,49}$",
                      description="a short category, e.g. note, opportunity, risk")
    stream_id: UUID | None = Field(default=None, description="the stream it is about, if any")
    company_number: str | None = Field(default=None, max_length=12,
                                       description="the company it is about, if any")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bounded_metadata(self) -> SaveInsightInput:
        if len(json.dumps(self.metadata, default=str)) > 10_000:
            raise ValueError("metadata is larger than 10000 characters of JSON")
        return self


# Handlers ------------------------------------------------------------------------------


async def _list_companies(
    ctx: AgentContext, writes: PendingWrites, args: ListCompaniesInput
) -> dict[str, Any]:
    async with ctx.connection() as conn:
        rows = await store.search_companies(
            conn, org_id=ctx.agent.org_id, name=None, sic_code=None, post_town=None,
            limit=args.limit, offset=args.offset,
        )
    return {"companies": rows, "count": len(rows), "offset": args.offset}


async def _search_companies(
    ctx: AgentContext, writes: PendingWrites, args: SearchCompaniesInput
) -> dict[str, Any]:
    async with ctx.connection() as conn:
        rows = await store.search_companies(
            conn, org_id=ctx.agent.org_id, name=args.name, sic_code=args.sic_code,
            post_town=args.post_town, limit=args.limit,
        )
    return {"companies": rows, "count": len(rows)}


async def _get_company(
    ctx: AgentContext, writes: PendingWrites, args: GetCompanyInput
) -> dict[str, Any]:
    try:
        number = _company_number(args.company_number)
    except ValueError as exc:
        raise ToolError(str(exc)) from None
    async with ctx.connection() as conn:
        row = await store.get_company(conn, ctx.agent.org_id, number)
    if row is None:
        raise ToolError(f"no company with number {number}")
    return row


async def _list_stream_items(
    ctx: AgentContext, writes: PendingWrites, args: ListStreamItemsInput
) -> dict[str, Any]:
    async with ctx.connection() as conn:
        if not await store.stream_exists(conn, ctx.agent.org_id, args.stream_id):
            raise ToolError(f"no stream with id {args.stream_id}")
        rows = await store.list_stream_items(
            conn, org_id=ctx.agent.org_id, stream_id=args.stream_id,
            min_quality_score=args.min_quality_score, limit=args.limit,
        )
    return {"items": rows, "count": len(rows)}


async def _save_insight(
    ctx: AgentContext, writes: PendingWrites, args: SaveInsightInput
) -> dict[str, Any]:
    if len(writes.insights) >= MAX_INSIGHTS_PER_RUN:
        raise ToolError(f"at most {MAX_INSIGHTS_PER_RUN} insights per run")
    company_id: UUID | None = None
    # Checked now, while the model can still correct them: at commit time a bad id
    # would fail the whole run.
    async with ctx.connection() as conn:
        if args.stream_id is not None and not await store.stream_exists(
            conn, ctx.agent.org_id, args.stream_id
        ):
            raise ToolError(f"no stream with id {args.stream_id}")
        if args.company_number is not None:
            try:
                number = _company_number(args.company_number)
            except ValueError as exc:
                raise ToolError(str(exc)) from None
            company_id = await store.company_id_for_number(conn, ctx.agent.org_id, number)
            if company_id is None:
                raise ToolError(f"no company with number {number}")
    writes.insights.append({
        "org_id": ctx.agent.org_id,
        "stream_id": args.stream_id,
        "company_id": company_id,
        "task_id": ctx.task_id,
        "execution_id": ctx.execution_id,
        "kind": args.kind,
        "title": args.title,
        "body": args.body,
        "metadata": args.metadata,
    })
    return {
        "saved": True,
        "insights_this_run": len(writes.insights),
        "note": "stored when this run completes",
    }


BUILTIN_TOOLS: Final = ToolRegistry([
    ToolSpec(
        "list_companies",
        "List companies in the database, ordered by name, a page at a time.",
        ListCompaniesInput, _list_companies,
    ),
    ToolSpec(
        "search_companies",
        "Find companies by part of their name, by SIC code (or prefix) and/or by post "
        "town. Returns at most 50 rows with their Companies House and enrichment data.",
        SearchCompaniesInput, _search_companies,
    ),
    ToolSpec(
        "get_company",
        "Get one company by its Companies House number, with everything known about it "
        "(SIC codes, size, website, tech stack, buying signals).",
        GetCompanyInput, _get_company,
    ),
    ToolSpec(
        "list_stream_items",
        "List the companies in a stream (a prospecting list), best quality score first, "
        "with their score (0-5) and priority.",
        ListStreamItemsInput, _list_stream_items,
    ),
    ToolSpec(
        "save_insight",
        "Save an insight (a finding worth keeping) about a stream and/or a company. "
        "Saved insights are stored when the run completes.",
        SaveInsightInput, _save_insight,
    ),
])
