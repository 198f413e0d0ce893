"""The scout agent (seed 004, example 2): watches companies for buying signals and
writes one insight per new signal strong enough to read.

Configuration (``ai_agents.configuration``)::

    {"signals": ["job_posting", "funding_round"],   # which to look for (default: all)
     "threshold": 0.7,                              # 0..1: weaker signals are not written
     "stream_id": null,                             # watch this stream only
     "lookback_days": 365, "max_companies": 500, "concurrency": 4,
     "fetch_websites": null,
     "website": {"deadline_seconds": 10, ...},      # as the enrichment agent's
     "companies_house": {"max_attempts": 4, ...}}

Payload: ``{}`` or ``{"stream_id": uuid}`` (a manual run for one stream; it overrides
the configuration's). Output: ``{companies_checked, signals_found, insights_created}``
plus ``signals_above_threshold``, ``companies_failed`` and ``mode``. ``signals_found``
counts every signal of the configured types in the lookback window, whatever its
strength; ``insights_created`` is what this run wrote (a second run over the same
filings and pages writes none, so it reports 0).

What it watches: the stream named by the payload or the configuration; else the
streams the agent is actively assigned to; else every company of its organization.
At most ``max_companies`` per run (stream items best placed first; otherwise the most
recently enriched companies first). A run makes up to three requests per company (one
filing history, a home page, a careers page), ``concurrency`` at a time: size
``max_companies`` to the agent's ``timeout_seconds`` (and to Companies House's 600
requests per five minutes, which the client paces).

Where signals come from (types and strengths: ``agents/signals.py``):

* Companies House (``COMPANIES_HOUSE_API_KEY`` set): the first page (100 newest
  filings) of ``GET /company/{number}/filing-history`` through the agents' client
  (basic auth, rate-limit pacing, bounded retries). The filings read are kept in
  ``company_filings``.
* Offline (no key): the filings stored in ``company_filings`` (read online before, or
  loaded, as the demo does), and the register row's dates (last accounts made up,
  previous names' change dates) for the categories the stored history does not cover.
* The company website (``job_posting``): its home page through the bounded fetcher
  (``agents/website.py``), then the first careers or jobs page it links to, read for
  openings (``agents/careers.py``). Websites are fetched online, offline only with
  ``"fetch_websites": true`` (a keyless deployment is taken to have no outbound
  network, as for the enrichment agent).

Filings older than ``lookback_days`` are not signals at all: a company's whole history
would otherwise become insights at a low threshold.

Insights: one ``stream_insights`` row (``kind = 'signal'``) per signal at or above the
threshold, per watched stream the company is in (``stream_id`` NULL when watching all
companies), titled "<company>: <signal>", with the strength, source and evidence in
``metadata``. Its ``dedupe_key`` names the scope, the company and the signal's source key
(the filing's transaction id; the careers page and its openings), so the same filing or
page is never written twice, across runs, retries and concurrent scouts. All writes are
in the commit hook, inside the transaction that completes the task.

One company's failure (a website that cannot be read, Companies House failing for it
after its retries) is counted in ``companies_failed`` and logged; Companies House
refusing the key fails the task permanently, and Companies House unavailable for every
company retries it later.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any, ClassVar, Final
from uuid import UUID

import httpx
import psycopg
from pydantic import BaseModel, ConfigDict, Field

from agents import signals as rules
from agents.careers import job_openings
from agents.companies_house import (
    CompaniesHouseClient,
    CompaniesHouseError,
    CompaniesHouseRejected,
    CompaniesHouseUnavailable,
    NotFound,
)
from agents.enrichment_agent import CompaniesHouseConfig, WebsiteConfig
from agents.signals import FilingRecord, Signal, SignalType
from agents.store import filings as filings_store
from agents.store import insights as insight_store
from agents.store import scout as store
from agents.website import WebsiteError, analyse_page, fetch_page, website_client, website_url
from runner.api import (
    AgentContext,
    AgentResult,
    FailPermanently,
    RetryLater,
    agent_configuration,
)

__all__ = ["ScoutAgent", "ScoutConfig", "ScoutInput", "insight_for"]

USER_AGENT: Final = "agent-runner-scout/0.1 (company research; home and careers page)"
INSIGHT_KIND: Final = "signal"
_FILING_TYPES: Final = frozenset(rules.SIGNAL_TYPES) - {"job_posting"}
_SUMMARY_PROBLEMS: Final = 20


class ScoutInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream_id: UUID | None = None


class ScoutConfig(BaseModel):
    # Unknown keys are ignored: the seed's agents carry free-form configuration.
    model_config = ConfigDict(extra="ignore")

    signals: list[SignalType] = Field(default_factory=lambda: list(rules.SIGNAL_TYPES),
                                      min_length=1)
    threshold: float = Field(default=0.7, ge=0, le=1)
    stream_id: UUID | None = None
    lookback_days: int = Field(default=365, ge=1, le=3650)
    max_companies: int = Field(default=500, ge=1, le=100_000)
    concurrency: int = Field(default=4, ge=1, le=32)
    #: None: websites only online (module docstring).
    fetch_websites: bool | None = None
    website: WebsiteConfig = WebsiteConfig()
    companies_house: CompaniesHouseConfig = CompaniesHouseConfig()


@dataclasses.dataclass(slots=True)
class _Finding:
    company: store.WatchedCompany
    signals: list[Signal] = dataclasses.field(default_factory=list)
    filings: list[FilingRecord] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    ch_unavailable: bool = False


@dataclasses.dataclass(slots=True)
class _Run:
    ctx: AgentContext
    config: ScoutConfig
    wanted: frozenset[str]
    today: dt.date
    since: dt.date
    ch: CompaniesHouseClient | None
    web: httpx.AsyncClient | None
    stored: dict[UUID, list[FilingRecord]]
    gate: asyncio.Semaphore
    abort: CompaniesHouseRejected | None = None


def insight_for(
    signal: Signal, company: store.WatchedCompany, stream_id: UUID | None, *,
    org_id: UUID, task_id: UUID, execution_id: UUID,
) -> insight_store.Insight:
    """The ``stream_insights`` row of one signal in one scope."""
    scope = str(stream_id) if stream_id is not None else "org"
    strength = f"{signal.strength:.2f}"
    body = (f"{signal.detail}.\nSignal: {signal.type.replace('_', ' ')}, strength "
            f"{strength} (source: {signal.source.replace('_', ' ')}).\n"
            f"Company: {company.name} ({company.company_number}).")
    return insight_store.Insight(
        kind=INSIGHT_KIND,
        title=f"{company.name}: {signal.title}",
        dedupe_key=f"signal:{scope}:{company.company_id}:{signal.source_key}",
        task_id=task_id, execution_id=execution_id, org_id=org_id, stream_id=stream_id,
        company_id=company.company_id, body=body,
        metadata={"signal": signal.as_json(), "company_number": company.company_number,
                  "company_name": company.name},
    )


class ScoutAgent:
    agent_type: ClassVar[str] = "scout_agent"
    Input: ClassVar[type[BaseModel]] = ScoutInput

    async def run(self, ctx: AgentContext, payload: ScoutInput) -> AgentResult:
        config = agent_configuration(ctx.agent, ScoutConfig)
        org_id = ctx.agent.org_id
        stream_id = payload.stream_id or config.stream_id
        wanted = frozenset(config.signals)
        today = dt.datetime.now(dt.UTC).date()
        since = today - dt.timedelta(days=config.lookback_days)
        async with ctx.connection() as conn:
            if stream_id is not None:
                if not await store.org_stream_exists(conn, org_id, stream_id):
                    raise FailPermanently(f"stream_id: no stream with id {stream_id}")
                streams = [stream_id]
            else:
                streams = await store.assigned_streams(conn, org_id, ctx.agent.id)
            companies = await store.watched_companies(conn, org_id, streams,
                                                      config.max_companies)
            stored = await filings_store.stored_filings(
                conn, [c.company_id for c in companies], since) \
                if wanted & _FILING_TYPES else {}

        key = ctx.settings.companies_house_api_key
        online = key is not None and bool(key.get_secret_value())
        fetch_websites = online if config.fetch_websites is None else config.fetch_websites
        use_web = fetch_websites and "job_posting" in wanted
        ch = CompaniesHouseClient(
            ctx.http, api_key=key, base_url=ctx.settings.companies_house_base_url,
            observe=ctx.observe_http_call, policy=config.companies_house.policy(),
        ) if online and key is not None and wanted & _FILING_TYPES else None
        web = website_client(max_connections=config.concurrency, user_agent=USER_AGENT) \
            if use_web else None
        run = _Run(ctx=ctx, config=config, wanted=wanted, today=today, since=since, ch=ch,
                   web=web, stored=stored, gate=asyncio.Semaphore(config.concurrency))
        try:
            findings = list(await asyncio.gather(*(self._scout(run, c) for c in companies)))
        finally:
            if web is not None:
                await web.aclose()
        if run.abort is not None:
            raise FailPermanently(
                f"Companies House refused the API key (HTTP {run.abort.status_code}: "
                f"{run.abort.api_message}); no insight was written")
        unavailable = [f for f in findings if f.ch_unavailable]
        if unavailable and len(unavailable) == len(findings):
            raise RetryLater(f"Companies House unavailable for all {len(findings)} "
                             f"companies: {unavailable[0].problems[0]}")

        threshold = config.threshold
        insights = [
            insight_for(signal, finding.company, scope, org_id=org_id, task_id=ctx.task_id,
                        execution_id=ctx.execution_id)
            for finding in findings for signal in finding.signals
            if signal.strength >= threshold for scope in finding.company.streams
        ]
        to_store = [filings_store.StoredFiling(f.company.company_id, filing)
                    for f in findings for filing in f.filings]
        found = sum(len(f.signals) for f in findings)
        above = sum(1 for f in findings for s in f.signals if s.strength >= threshold)
        failed = sum(1 for f in findings if f.problems)
        mode = "online" if online else "offline"
        output = {"companies_checked": len(findings), "signals_found": found,
                  "signals_above_threshold": above, "companies_failed": failed,
                  "mode": mode}
        ctx.add_metrics(companies_checked=len(findings), signals_found=found)
        await ctx.log(
            f"checked {len(findings)} companies ({mode}): {found} signals, {above} at or "
            f"above {threshold:g}; {failed} companies with problems",
            level="success", **output,
        )

        async def commit(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
            await filings_store.store_filings(conn, to_store)
            written = await insight_store.insert_insights(conn, insights)
            return {"insights_created": len(written)}

        problems = [{"company_number": f.company.company_number, "problems": f.problems}
                    for f in findings if f.problems]
        summary = {"mode": mode, "streams": [str(s) for s in streams],
                   "signals": sorted(wanted), "threshold": threshold,
                   "websites_fetched": web is not None,
                   "problems": problems[:_SUMMARY_PROBLEMS]}
        return AgentResult(output=output, commit=commit, summary=summary)

    # One company ---------------------------------------------------------------------

    async def _scout(self, run: _Run, company: store.WatchedCompany) -> _Finding:
        finding = _Finding(company)
        async with run.gate:
            if run.abort is not None:
                return finding
            if run.wanted & _FILING_TYPES:
                await self._filings(run, finding)
            if run.web is not None:
                await self._careers(run, finding)
        finding.signals = [s for s in finding.signals if s.type in run.wanted]
        return finding

    async def _filings(self, run: _Run, finding: _Finding) -> None:
        company = finding.company
        filings: Sequence[FilingRecord]
        if run.ch is not None:
            try:
                history = await run.ch.get_filing_history(company.company_number)
            except CompaniesHouseRejected as exc:
                if exc.status_code in (401, 403):
                    run.abort = exc
                    return
                await self._problem(run, finding, str(exc))
                return
            except CompaniesHouseUnavailable as exc:
                finding.ch_unavailable = True
                await self._problem(run, finding, str(exc))
                return
            except CompaniesHouseError as exc:
                await self._problem(run, finding, str(exc))
                return
            if isinstance(history, NotFound):
                return  # no filing history (or no such company): no filing signals
            filings = [
                FilingRecord(item.transaction_id, item.category, item.type, item.filed_on,
                             item.description, item.description_values)
                for item in history.items if item.transaction_id and item.filed_on
            ]
            finding.filings = list(filings)
        else:
            filings = run.stored.get(company.company_id, [])
            covered = frozenset(s.type for f in filings
                                if (s := rules.filing_signal(f, run.today)) is not None)
            finding.signals += [
                s for s in rules.register_signals(
                    accounts_last_made_up=company.accounts_last_made_up,
                    previous_names=company.previous_names, today=run.today,
                    covered=covered)
                if s.observed_on is None or s.observed_on >= run.since
            ]
        for filing in filings:
            if filing.filed_on < run.since:
                continue
            signal = rules.filing_signal(filing, run.today)
            if signal is not None:
                finding.signals.append(signal)

    async def _careers(self, run: _Run, finding: _Finding) -> None:
        assert run.web is not None
        url = website_url(finding.company.website)
        if url is None:
            return
        site = run.config.website
        bounds: dict[str, Any] = {
            "deadline": site.deadline_seconds, "max_bytes": site.max_bytes,
            "max_redirects": site.max_redirects, "observe": run.ctx.observe_http_call,
            "allow_private_addresses": site.allow_private_addresses,
        }
        try:
            home = await fetch_page(run.web, url, **bounds)
        except WebsiteError as exc:
            await self._problem(run, finding, f"website {exc.kind}: {exc}")
            return
        links = analyse_page(home).hiring_links
        if not links:
            return
        careers = links[0]
        try:
            page = await fetch_page(run.web, careers, **bounds)
        except WebsiteError as exc:
            await run.ctx.log(f"careers page of {finding.company.company_number} not "
                              f"readable: {exc}", level="warning",
                              company_number=finding.company.company_number)
            finding.signals.append(rules.job_posting_signal(careers, [], run.today,
                                                            page_read=False))
            return
        openings = job_openings(page.html)
        finding.signals.append(rules.job_posting_signal(page.final_url, openings, run.today,
                                                        page_read=True))

    async def _problem(self, run: _Run, finding: _Finding, problem: str) -> None:
        finding.problems.append(problem)
        await run.ctx.log(f"scouting {finding.company.company_number}: {problem}",
                          level="warning", company_number=finding.company.company_number)
