"""The enrichment agent (seed 004 ``EnrichmentAgent``): adds Companies House data, the
website's technology stack and social presence, an employee-growth estimate and buying
signals to every company of a stream that is not enriched yet.

Input ``{"stream_id": uuid}``. Output (CONTRACT.md) ``{items_updated, enriched_count}``
plus ``not_found_count`` (Companies House has no such company), ``failed_count``
(a company whose enrichment failed: Companies House kept failing after its retries, or
an unexpected error), ``website_errors`` (websites that could not be read: timeout,
too large a redirect chain, not HTML, ...; the company is still enriched from the other
sources), ``reused_count`` (companies enriched recently for another stream, copied
without new calls) and ``mode`` (``online`` | ``offline``).

One company never fails the run: each is enriched on its own and its failure is
counted. Two things do end the run, because they are not about one company:

* Companies House refusing the key (401/403): the task fails permanently and every
  item stays ``pending``, so fixing the key and re-running picks them all up;
* every company failing with Companies House unavailable: the task is retried later
  (``RetryLater``), again with the items still ``pending``.

Insight: a run that finds buying signals writes one ``stream_insights`` row (``kind =
'buying_signals'``) in its commit hook: how many companies show signals, by type, and
each company's signals with their evidence. Once per workflow run, or per task outside
one (its ``dedupe_key`` is the run's).

Exactly-once: stream items and companies are read in short ``ctx.connection()`` blocks
before any HTTP call; every write goes through the commit hook, inside the transaction
that completes the task, and a stream item is only written while still ``pending``.

Modes
-----
*Online* (``COMPANIES_HOUSE_API_KEY`` set): company profile and officers from the
Companies House API; websites are fetched.

*Offline* (no key): no Companies House calls. What the local register row (the bulk
"BasicCompanyData" import) already holds is used: the employee estimate from the
accounts category, the industry from the SIC texts, buying signals from outstanding
charges and the incorporation date. Websites are **not** fetched in offline mode unless
the agent's configuration says ``"fetch_websites": true``: a deployment without a key
is taken to be one without outbound network (the demo runs like that), so it must not
reach out to remote hosts by default. ``"fetch_websites": false`` turns fetching off in
online mode too.

*LLM website summary* (``ANTHROPIC_API_KEY`` set, in either mode): when a page was
fetched, its visible text (title, meta description and body text, cut to
``llm_judgements.MAX_WEBSITE_CHARS``) goes to ``llm_judgements.summarise_website``; its
industry and description become ``industry_description`` ("industry: description",
instead of the SIC texts) and its signals are added with ``source: "llm"``. A failure
about one company (an answer that stays invalid, an unexpected error) is logged and
that company keeps the rule-based description; an API outage (``RetryLater``) or a
refused key or model (``FailPermanently``) ends the attempt, with every item still
``pending``. Without a key nothing is sent and the outputs are the rule-based ones.

Configuration (``ai_agents.configuration``, all optional)::

    {"concurrency": 8, "fetch_websites": null, "max_items": 1000, "reuse_days": 7,
     "llm_summaries": true,
     "website": {"deadline_seconds": 10, "max_bytes": 1048576, "max_redirects": 5},
     "companies_house": {"max_attempts": 4, "backoff_base_seconds": 0.5,
                         "backoff_max_seconds": 8, "max_rate_limit_wait_seconds": 60,
                         "request_timeout_seconds": 15}}

Heuristics
----------
*Employee estimate* — the size band the last accounts filed imply (the Companies
Act 2006 thresholds, as tabulated in ``agents.taxonomy.SIZE_BANDS`` so that discovery,
scoring and enrichment agree; the API's ``micro-entity`` spelling is mapped to the bulk
file's ``MICRO ENTITY``), never below the number of active officers. Without a known
band: three people per active officer, else unknown.

*Employee growth (percent a year)* — officers are the only headcount series the
register publishes, so their net change stands in for staff growth. With ``N`` active
officers now, ``A`` appointed and ``R`` resigned in the last 365 days, the count a
year ago was ``N - A + R`` and growth is ``(N - then) / then``; a company with no
officers a year ago and some now counts as +100 %. Clamped to [-50, +100]. Without
officer data (offline mode) growth is unknown (NULL). Only the first page of officers
(100, newest first) is read. A hiring website is *not* folded in: it is its own
buying signal, and the scoring agent already turns growth >= 10 % into one, so adding
it here would count the same evidence twice.

*Buying signals* — JSON objects ``{type, strength, source, detail, agent:
"enrichment_agent", ...}``. Counted by the scoring agent as external signals:
``hiring`` (careers page or job board linked from the website), ``new_officers``
(appointments in the last 12 months: new decision makers) and ``tech_adoption``
(e-commerce, marketing automation, chat, payment, analytics or A/B-testing tools in
use). The company's stored filing history (``company_filings``: what the scout read
from Companies House, or the demo's generated histories) adds ``funding_round`` (a
share allotment, ``SH01``, processed in the last 12 months; strength as the scout's,
``agents/signals.py``) and, when no officer list was fetched (offline), ``new_officers``
from the appointments it records in the last 12 months. Recorded for the reader but
named as the scoring agent's own rules (``outstanding_charges``,
``recent_incorporation``), which it re-derives and does not count twice. A run replaces
its own earlier entries (``agent`` tag) and keeps other agents' entries.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any, ClassVar, Final, Literal
from uuid import UUID

import httpx
import psycopg
from pydantic import BaseModel, ConfigDict, Field

from agents import llm as llm_api
from agents import taxonomy
from agents.companies_house import (
    CompaniesHouseClient,
    CompaniesHouseError,
    CompaniesHouseRejected,
    CompaniesHouseUnavailable,
    CompanyProfile,
    NotFound,
    OfficerList,
    RetryPolicy,
)
from agents.llm import InvalidModelAnswer, LLMSession, has_api_key
from agents.llm_judgements import (
    MAX_WEBSITE_CHARS,
    BuyingSignal,
    WebsiteSummary,
    summarise_website,
)
from agents.signals import FilingRecord, filing_signal
from agents.signals import Signal as FilingSignal
from agents.store import enrichment as store
from agents.store import filings as filings_store
from agents.store import insights as insight_store
from agents.website import (
    DEFAULT_MAX_BYTES,
    PageAnalysis,
    WebsiteError,
    analyse_page,
    fetch_page,
    website_client,
    website_url,
)
from runner.api import (
    AgentContext,
    AgentOutcomeError,
    AgentResult,
    FailPermanently,
    RetryLater,
    agent_configuration,
)

__all__ = [
    "EnrichmentAgent",
    "EnrichmentConfig",
    "EnrichmentInput",
    "buying_signals",
    "estimate_employee_growth",
    "estimate_employees",
    "industry_description",
    "is_one_company_llm_failure",
    "visible_text",
]

USER_AGENT: Final = "agent-runner-enrichment/0.1 (company research; one page per site)"
INSIGHT_KIND: Final = "buying_signals"
#: Companies named in the insight's body (its metadata keeps up to 100).
_INSIGHT_COMPANIES: Final = 30
#: Most failures named in ``results_summary`` (the counts are always complete).
_SUMMARY_FAILURES: Final = 20


class EnrichmentInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream_id: UUID


class WebsiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deadline_seconds: float = Field(default=10.0, gt=0, le=120)
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1024, le=16 * 1024 * 1024)
    max_redirects: int = Field(default=5, ge=0, le=20)
    # Off by default: see agents.website.fetch_page (untrusted addresses).
    allow_private_addresses: bool = False


class CompaniesHouseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=4, ge=1, le=10)
    backoff_base_seconds: float = Field(default=0.5, ge=0, le=60)
    backoff_max_seconds: float = Field(default=8.0, ge=0, le=300)
    max_rate_limit_wait_seconds: float = Field(default=60.0, ge=0, le=600)
    request_timeout_seconds: float = Field(default=15.0, gt=0, le=120)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            backoff_base=self.backoff_base_seconds,
            backoff_max=self.backoff_max_seconds,
            max_rate_limit_wait=self.max_rate_limit_wait_seconds,
            request_timeout=self.request_timeout_seconds,
        )


class EnrichmentConfig(BaseModel):
    # Unknown keys are ignored: the seed's agents carry free-form configuration.
    model_config = ConfigDict(extra="ignore")

    concurrency: int = Field(default=8, ge=1, le=64)
    #: None: fetch websites only in online mode (see the module docstring).
    fetch_websites: bool | None = None
    max_items: int = Field(default=1000, ge=1, le=100_000)
    #: A company enriched (or found missing) this recently, for any stream, is reused.
    reuse_days: float = Field(default=7.0, ge=0, le=3650)
    #: Summarise fetched pages with the model when ANTHROPIC_API_KEY is set.
    llm_summaries: bool = True
    website: WebsiteConfig = WebsiteConfig()
    companies_house: CompaniesHouseConfig = CompaniesHouseConfig()


# Heuristics (pure: the tests call them directly) ----------------------------------------

_PEOPLE_PER_OFFICER: Final = 3
_GROWTH_BOUNDS: Final = (-50.0, 100.0)
_TECH_SIGNAL_CATEGORIES: Final = frozenset({
    "ecommerce", "marketing_automation", "chat", "payment", "analytics", "ab_testing",
})


def estimate_employees(accounts_category: str | None, active_officers: int | None) -> int | None:
    """Headcount from the accounts size band (bulk-file or API spelling), floored at the
    number of active officers."""
    base = None
    if accounts_category:
        base = taxonomy.category_estimate(accounts_category.replace("-", " ").upper())
    if base is None:
        return active_officers * _PEOPLE_PER_OFFICER if active_officers else None
    if base == 0:
        return 0  # dormant: directors of a dormant company employ nobody
    return max(base, active_officers or 0)


def estimate_employee_growth(officers: OfficerList | None, *, today: date) -> Decimal | None:
    """Percent a year, from the officers' net change over the last 365 days."""
    if officers is None:
        return None
    year_ago = today - timedelta(days=365)
    appointed = sum(1 for o in officers.items if o.appointed_on and o.appointed_on > year_ago)
    resigned = sum(1 for o in officers.items if o.resigned_on and o.resigned_on > year_ago)
    now = officers.active_count
    then = now - appointed + resigned
    if then <= 0:
        pct = 100.0 if now > 0 else 0.0
    else:
        pct = (now - then) / then * 100.0
    low, high = _GROWTH_BOUNDS
    return Decimal(str(round(min(high, max(low, pct)), 1)))


def industry_description(sic_texts: Sequence[str], sic_codes: Sequence[str]) -> str | None:
    """``"62012 - Business and domestic software development"`` -> the words; SIC codes
    alone when the texts are missing."""
    words = [text.split(" - ", 1)[-1].strip() for text in sic_texts if text.strip()]
    if words:
        return "; ".join(words)
    if sic_codes:
        return "SIC " + ", ".join(sic_codes)
    return None


def buying_signals(
    item: store.PendingItem,
    *,
    profile: CompanyProfile | None,
    officers: OfficerList | None,
    page: PageAnalysis | None,
    today: date,
    filings: Sequence[FilingRecord] = (),
) -> list[dict[str, Any]]:
    signals: list[dict[str, Any]] = []

    def add(kind: str, strength: str, source: str, detail: str, **extra: Any) -> None:
        signals.append({"type": kind, "strength": float(strength), "source": source,
                        "detail": detail, "agent": store.AGENT_TAG, **extra})

    if page is not None and page.hiring_links:
        add("hiring", "0.4", "website", f"careers page linked: {page.hiring_links[0]}",
            links=list(page.hiring_links[:5]))
    if officers is not None:
        year_ago = today - timedelta(days=365)
        recent = sorted(o.appointed_on for o in officers.items
                        if o.appointed_on and o.appointed_on > year_ago
                        and o.resigned_on is None)
        if recent:
            add("new_officers", "0.3", "companies_house",
                f"{len(recent)} officer appointment(s) in the last 12 months",
                count=len(recent), latest=recent[-1].isoformat())
    cutoff = today - timedelta(days=365)
    filed: list[tuple[FilingRecord, FilingSignal]] = []
    for record in filings:
        classified = filing_signal(record, today) if record.filed_on > cutoff else None
        if classified is not None:
            filed.append((record, classified))
    funding = [pair for pair in filed if pair[1].type == "funding_round"]
    if funding:
        latest, allotment = funding[0]  # newest first
        add("funding_round", str(allotment.strength), "companies_house",
            f"{len(funding)} share allotment(s) in the last 12 months; latest "
            f"{latest.filed_on.isoformat()}", count=len(funding),
            latest=latest.filed_on.isoformat(), transaction_id=latest.transaction_id)
    appointed = [pair[0] for pair in filed if pair[1].type == "officer_change"
                 and pair[1].facts.get("change") == "appointed"]
    if officers is None and appointed:
        add("new_officers", "0.3", "companies_house",
            f"{len(appointed)} officer appointment(s) in the last 12 months (filing "
            "history)", count=len(appointed), latest=appointed[0].filed_on.isoformat())
    if page is not None:
        tools = [d.name for d in page.detections if d.category in _TECH_SIGNAL_CATEGORIES]
        if tools:
            add("tech_adoption", "0.2", "website", "uses " + ", ".join(tools),
                technologies=tools)
    outstanding = item.mortgages_outstanding or 0
    if outstanding > 0:
        add("outstanding_charges", "0.2", "register",
            f"{outstanding} outstanding charge(s) registered", count=outstanding)
    incorporated = (profile.date_of_creation if profile is not None else None) \
        or item.incorporation_date
    if incorporated is not None and incorporated > today - timedelta(days=730):
        add("recent_incorporation", "0.3",
            "companies_house" if profile is not None else "register",
            f"incorporated on {incorporated.isoformat()}")
    return signals


class _TextParser(HTMLParser):
    """The words a visitor reads: title, meta description, body text; not scripts,
    styles or templates."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "title":
            self._in_title = True
        elif tag == "meta" and values.get("name", "").lower() == "description":
            self.parts.append(values.get("content", ""))
        elif tag in self._SKIP:
            self._skipping.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif self._skipping and self._skipping[-1] == tag:
            self._skipping.pop()

    def handle_data(self, data: str) -> None:
        if self._in_title or not self._skipping:
            self.parts.append(data)


def visible_text(html: str, limit: int = MAX_WEBSITE_CHARS) -> str:
    """A page's readable text, whitespace collapsed, at most ``limit`` characters."""
    parser = _TextParser()
    try:
        parser.feed(html[:limit * 20])
        parser.close()
    except AssertionError:
        pass  # HTMLParser asserts on a few pathological constructs; keep what was read
    return " ".join(" ".join(parser.parts).split())[:limit]


def is_one_company_llm_failure(exc: Exception) -> bool:
    """Whether a model judgement's failure is about the one company asked about (an
    answer that stayed invalid, an unexpected error), so the agent keeps its
    rule-based result; False for the LLM layer's outcome errors about the API itself
    (``RetryLater`` after an outage, ``FailPermanently`` for a refused key or model),
    which end the attempt. A twice-invalid answer is :class:`InvalidModelAnswer`."""
    if isinstance(exc, InvalidModelAnswer):
        return True
    return not isinstance(exc, AgentOutcomeError)


def llm_signals(signals: Sequence[BuyingSignal]) -> list[dict[str, Any]]:
    """A model's buying signals as this agent's ``buying_signals`` entries."""
    strengths = {"low": 0.1, "medium": 0.2, "high": 0.3}
    return [{"type": s.type, "strength": strengths[s.strength], "source": "llm",
             "detail": s.detail, "level": s.strength, "agent": store.AGENT_TAG}
            for s in signals]


def signals_insight(
    ctx: AgentContext, stream_id: UUID, outcomes: Sequence[_Outcome], dedupe_key: str,
) -> insight_store.Insight:
    """The run's buying signals as one insight: counts by type, then per company."""
    found = [o for o in outcomes if o.item_signals]
    by_type: dict[str, int] = {}
    companies = []
    for outcome in found:
        best: dict[str, dict[str, Any]] = {}
        for entry in outcome.item_signals:
            if isinstance(entry, dict) and isinstance(entry.get("type"), str):
                kept = best.get(entry["type"])
                if kept is None or float(entry.get("strength") or 0) > float(
                        kept.get("strength") or 0):
                    best[entry["type"]] = entry
        for kind in best:
            by_type[kind] = by_type.get(kind, 0) + 1
        companies.append((outcome.item, sorted(
            best.values(), key=lambda e: (-float(e.get("strength") or 0), e["type"]))))
    ranked = sorted(by_type.items(), key=lambda item: (-item[1], item[0]))
    counted = ", ".join(f"{kind.replace('_', ' ')} {n}" for kind, n in ranked)
    enriched = sum(1 for o in outcomes if o.status in ("enriched", "reused"))
    title = f"Buying signals at {len(found)} of {enriched} companies enriched: {counted}"
    lines = [
        f"{item.name} ({item.company_number}): " + "; ".join(
            f"{e['type'].replace('_', ' ')}" + (f" ({e['detail']})" if e.get("detail") else "")
            for e in entries)
        for item, entries in companies[:_INSIGHT_COMPANIES]
    ]
    if len(companies) > _INSIGHT_COMPANIES:
        lines.append(f"... and {len(companies) - _INSIGHT_COMPANIES} more")
    return insight_store.Insight(
        kind=INSIGHT_KIND, title=title, dedupe_key=dedupe_key, task_id=ctx.task_id,
        execution_id=ctx.execution_id, stream_id=stream_id, body="\n".join(lines),
        metadata={
            "companies_with_signals": len(found), "enriched_count": enriched,
            "by_type": dict(ranked),
            "companies": [
                {"company_id": str(item.company_id), "company_number": item.company_number,
                 "name": item.name,
                 "signals": [{k: e.get(k) for k in ("type", "strength", "source", "detail")}
                             for e in entries]}
                for item, entries in companies[:100]],
        },
    )


# The agent -------------------------------------------------------------------------------

Status = Literal["enriched", "not_found", "failed", "reused", "aborted"]


@dataclasses.dataclass(slots=True)
class _Outcome:
    item: store.PendingItem
    status: Status
    company: store.CompanyUpdate | None = None
    item_signals: list[Any] = dataclasses.field(default_factory=list)
    item_status: store.ItemStatus = "enriched"
    website_error: str | None = None
    error: str | None = None
    ch_unavailable: bool = False
    summarised: bool = False


@dataclasses.dataclass(slots=True)
class _Run:
    """One attempt's shared state."""

    ctx: AgentContext
    config: EnrichmentConfig
    ch: CompaniesHouseClient | None
    web: httpx.AsyncClient | None
    today: date
    now: datetime
    semaphore: asyncio.Semaphore
    llm: LLMSession | None = None
    #: Each company's stored filings of the last 12 months, newest first.
    filings: dict[UUID, list[FilingRecord]] = dataclasses.field(default_factory=dict)
    abort: CompaniesHouseRejected | None = None
    #: An LLM outage or refusal: the remaining companies are skipped, the run ends.
    llm_abort: Exception | None = None


class EnrichmentAgent:
    agent_type: ClassVar[str] = "enrichment_agent"
    Input: ClassVar[type[BaseModel]] = EnrichmentInput

    def __init__(self, *, llm_policy: llm_api.RetryPolicy | None = None) -> None:
        #: The model calls' retry policy (tests pass short waits); None: the default.
        self._llm_policy = llm_policy

    async def run(self, ctx: AgentContext, payload: EnrichmentInput) -> AgentResult:
        config = _config(ctx)
        async with ctx.connection() as conn:
            if not await store.stream_exists(conn, payload.stream_id):
                raise FailPermanently(f"stream_id: no stream with id {payload.stream_id}")
            items = await store.pending_items(conn, payload.stream_id, config.max_items)
            filings = await filings_store.stored_filings(
                conn, [item.company_id for item in items],
                datetime.now(UTC).date() - timedelta(days=365))

        key = ctx.settings.companies_house_api_key
        online = key is not None and bool(key.get_secret_value())
        fetch_websites = online if config.fetch_websites is None else config.fetch_websites
        mode = "online" if online else "offline"
        if not items:
            return AgentResult(output=_output([], mode))

        now = datetime.now(UTC)
        ch = None
        if online and key is not None:
            ch = CompaniesHouseClient(
                ctx.http, api_key=key, base_url=ctx.settings.companies_house_base_url,
                observe=ctx.observe_http_call, policy=config.companies_house.policy(),
            )
        # Websites get a client of their own (agents.website.website_client: no proxy,
        # no cookie jar, no kept connections), its pool sized to our concurrency.
        web = website_client(
            max_connections=config.concurrency, user_agent=USER_AGENT,
        ) if fetch_websites else None
        llm = LLMSession(ctx, policy=self._llm_policy) \
            if web is not None and config.llm_summaries and has_api_key(ctx.settings) else None
        run = _Run(ctx=ctx, config=config, ch=ch, web=web, today=now.date(), now=now,
                   semaphore=asyncio.Semaphore(config.concurrency), llm=llm, filings=filings)
        try:
            outcomes = list(await asyncio.gather(*(self._enrich(run, item) for item in items)))
        finally:
            if web is not None:
                await web.aclose()

        if run.abort is not None:
            raise FailPermanently(
                f"Companies House refused the API key (HTTP {run.abort.status_code}: "
                f"{run.abort.api_message}); no item was changed"
            )
        if run.llm_abort is not None:
            raise run.llm_abort
        failed = [o for o in outcomes if o.status == "failed"]
        if failed and len(failed) == len(outcomes) and all(o.ch_unavailable for o in failed):
            raise RetryLater(f"Companies House unavailable for all {len(failed)} companies: "
                             f"{failed[0].error}")

        output = _output(outcomes, mode)
        ctx.add_metrics(
            companies_enriched=output["enriched_count"],
            companies_not_found=output["not_found_count"],
            companies_failed=output["failed_count"],
            website_errors=output["website_errors"],
        )
        await ctx.log(
            f"enriched {output['enriched_count']} of {len(outcomes)} companies "
            f"({output['not_found_count']} not found, {output['failed_count']} failed, "
            f"{output['website_errors']} website errors, mode {mode})",
            level="success", stream_id=str(payload.stream_id),
        )
        companies = [o.company for o in outcomes if o.company is not None]
        updates = [store.ItemUpdate(o.item.item_id, o.item_status, o.item_signals)
                   for o in outcomes]

        async def commit(conn: psycopg.AsyncConnection[Any]) -> None:
            await store.write_enrichment(conn, companies, updates)
            if any(o.item_signals for o in outcomes):
                key = await insight_store.run_key(conn, INSIGHT_KIND, ctx.task_id)
                await insight_store.insert_insights(conn, [signals_insight(
                    ctx, payload.stream_id, outcomes, key)])

        problems = [
            {"company_number": o.item.company_number, "error": o.error or o.website_error}
            for o in outcomes if o.error or o.website_error
        ]
        summary = {"mode": mode, "websites_fetched": fetch_websites,
                   "llm_summaries": sum(1 for o in outcomes if o.summarised),
                   "problems": problems[:_SUMMARY_FAILURES]}
        return AgentResult(output=output, commit=commit, summary=summary)

    async def _enrich(self, run: _Run, item: store.PendingItem) -> _Outcome:
        async with run.semaphore:
            if run.abort is not None or run.llm_abort is not None:
                return _Outcome(item, "aborted")
            try:
                return await self._enrich_one(run, item)
            except CompaniesHouseRejected as exc:
                if exc.status_code in (401, 403):
                    run.abort = exc
                    return _Outcome(item, "aborted")
                return await self._failed(run, item, str(exc))
            except CompaniesHouseUnavailable as exc:
                outcome = await self._failed(run, item, str(exc))
                outcome.ch_unavailable = True
                return outcome
            except CompaniesHouseError as exc:
                return await self._failed(run, item, str(exc))
            except Exception as exc:
                # One company's bug must not sink the stream; it is counted and logged.
                return await self._failed(run, item, f"{type(exc).__name__}: {exc}")

    async def _failed(self, run: _Run, item: store.PendingItem, error: str) -> _Outcome:
        await run.ctx.log(f"enrichment failed for {item.company_number}: {error}",
                          level="warning", company_number=item.company_number)
        return _Outcome(item, "failed", company=store.CompanyUpdate(item.company_id, "error"),
                        item_status="failed", error=error)

    async def _enrich_one(self, run: _Run, item: store.PendingItem) -> _Outcome:
        reused = _reuse(run, item)
        if reused is not None:
            return reused

        profile: CompanyProfile | None = None
        officers: OfficerList | None = None
        if run.ch is not None:
            found = await run.ch.get_profile(item.company_number)
            if isinstance(found, NotFound):
                return _Outcome(item, "not_found",
                                company=store.CompanyUpdate(item.company_id, "not_found"),
                                item_status="not_found")
            profile = found
            listed = await run.ch.get_officers(item.company_number)
            officers = None if isinstance(listed, NotFound) else listed

        page: PageAnalysis | None = None
        page_text = ""
        website_error: str | None = None
        url = website_url(item.website)
        if run.web is not None and url is not None:
            site = run.config.website
            try:
                fetched = await fetch_page(
                    run.web, url, deadline=site.deadline_seconds, max_bytes=site.max_bytes,
                    max_redirects=site.max_redirects, observe=run.ctx.observe_http_call,
                    allow_private_addresses=site.allow_private_addresses,
                )
                page = analyse_page(fetched)
                page_text = visible_text(fetched.html)
            except WebsiteError as exc:
                website_error = f"website {exc.kind}: {exc}"

        accounts_category = item.accounts_category
        if profile is not None and profile.accounts and profile.accounts.last_accounts:
            accounts_category = profile.accounts.last_accounts.type or accounts_category
        active = officers.active_count if officers is not None else None
        signals = buying_signals(item, profile=profile, officers=officers, page=page,
                                 today=run.today, filings=run.filings.get(item.company_id, ()))
        description = industry_description(
            item.sic_texts, profile.sic_codes if profile is not None else item.sic_codes)
        summarised = False
        if run.llm is not None and page_text:
            summary = await self._summarise(run, item, page_text)
            if summary is None and run.llm_abort is not None:
                return _Outcome(item, "aborted")
            if summary is not None:
                description = f"{summary.industry}: {summary.description}"
                signals += llm_signals(summary.signals)
                summarised = True
        company = store.CompanyUpdate(
            company_id=item.company_id,
            status="enriched",
            employee_estimate=estimate_employees(accounts_category, active),
            employee_growth_pct=estimate_employee_growth(officers, today=run.today),
            tech_stack=page.tech_stack if page is not None else None,
            social_score=Decimal(str(page.social_score)) if page is not None else None,
            officers_count=active,
            ch_profile=profile.model_dump(mode="json", exclude_unset=True)
            if profile is not None else None,
            industry_description=description,
            buying_signals=signals,
        )
        return _Outcome(item, "enriched", company=company, item_signals=signals,
                        website_error=website_error, summarised=summarised)

    async def _summarise(
        self, run: _Run, item: store.PendingItem, text: str
    ) -> WebsiteSummary | None:
        """The model's summary of the page, or None: a failure about this company is
        logged; an outage or refusal is kept in ``run.llm_abort`` for the run to raise."""
        try:
            return await summarise_website(run.ctx, text, session=run.llm)
        except Exception as exc:
            if not is_one_company_llm_failure(exc):
                run.llm_abort = exc
                return None
            await run.ctx.log(
                f"LLM website summary failed for {item.company_number}; keeping the "
                f"rule-based description: {exc}", level="warning",
                company_number=item.company_number,
            )
            return None


def _config(ctx: AgentContext) -> EnrichmentConfig:
    return agent_configuration(ctx.agent, EnrichmentConfig)


def _reuse(run: _Run, item: store.PendingItem) -> _Outcome | None:
    if run.config.reuse_days <= 0 or item.enriched_at is None:
        return None
    if item.enriched_at < run.now - timedelta(days=run.config.reuse_days):
        return None
    if item.enrichment_status == "enriched":
        return _Outcome(item, "reused", item_signals=list(item.buying_signals))
    if item.enrichment_status == "not_found" and run.ch is not None:
        return _Outcome(item, "not_found", item_status="not_found")
    return None


def _output(outcomes: Sequence[_Outcome], mode: str) -> dict[str, Any]:
    def count(*statuses: Status) -> int:
        return sum(1 for o in outcomes if o.status in statuses)

    enriched = count("enriched", "reused")
    not_found = count("not_found")
    failed = count("failed")
    return {
        "items_updated": enriched + not_found + failed,
        "enriched_count": enriched,
        "not_found_count": not_found,
        "failed_count": failed,
        "website_errors": sum(1 for o in outcomes if o.website_error),
        "reused_count": count("reused"),
        "mode": mode,
    }
