"""``agent-runner demo``: seed 004's "Discovery -> Enrichment -> Scoring" example, end to end.

What it does, in order (each stage is announced through ``progress``, which the CLI
sends to stderr):

1. Demo companies: when the ``companies`` table is empty, a synthetic
   BasicCompanyData file (``agents/companies_generator.py``, fixed seed, so every demo
   sees the same companies) is written to a temporary directory and loaded with the
   real importer. When the table already holds companies they are used as they are:
   synthetic rows must never overwrite a real register import (the importer upserts
   by company number), and on a re-run the demo's own companies are already there.
   The companies it loaded are the demo's: each gets a demo website address
   (``agents/demo_sites.py``).
2. A local, bundled source of enrichment: a small HTTP server on 127.0.0.1 serves the
   demo companies' websites (technology stacks, social profiles, careers pages with
   openings) for the length of the run, and their filing histories are generated
   (``companies_generator.filing_history``, relative to today) into
   ``company_filings``, where the enrichment agent and the scout read them offline.
   The demo's enrichment agent and scout are configured to fetch websites and to
   allow these private (loopback) addresses.
3. The goal of the seed's example (SaaS + FinTech, UK + Ireland, 10-500 employees,
   find 50, minimum quality 4.0) becomes a **new stream on every run**, so re-running
   on the same database works and earlier results stay as they were. The agents
   (``demo-opportunity-bot``, ``demo-enrichment-agent``, ``demo-scoring-agent`` and
   ``demo-signal-scout``) are created on the first run and reused afterwards; the first
   three are assigned to the stream with discovery -> enrichment -> scoring
   dependencies and the workflow is triggered (``trigger_stream_workflow``): the
   database enqueues each next step when its parent completes.
4. An in-process daemon (the CLI's :meth:`runner.api.CommandHost.run_daemon`:
   concurrency 3, metrics on an ephemeral port so it never collides with a running
   daemon) works the queue until the workflow run completes or fails, then runs the
   scout (seed 004's example 2) over the new stream, or stops when ``timeout`` passes.
   Like any daemon it works every pending task of the database while it runs, not only
   the demo's.
5. The report: the stream's progress, its critical and high leads with the reasons
   for their scores, its top companies, its insights (the agents' and the scout's) and
   each agent's execution figures.

Offline by default: the Anthropic and Companies House keys are dropped from the
daemon's settings, so the agents run in their offline modes and nothing leaves the
machine; ``online=True`` keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg

from agents.demo_sites import serve_demo_sites
from agents.lead_reasons import lead_reasons
from agents.signals import FilingRecord
from agents.store import demo as admin
from agents.store import filings as filings_store
from runner.api import CommandHost, InProcessDaemon

DEMO_SEED = 7
DEMO_ROWS = 4000
# The generator's snapshot date: fixed, so the same seed gives the same file forever.
DEMO_AS_OF = dt.date(2024, 6, 1)

GOAL_CRITERIA: dict[str, Any] = {
    "industry": ["SaaS", "FinTech"],
    "location": ["UK", "Ireland"],
    "employee_count": {"min": 10, "max": 500},
}
TARGET_METRICS: dict[str, Any] = {"companies_to_find": 50, "min_quality_score": 4.0}

#: The demo's websites are on 127.0.0.1, which website fetches refuse by default.
_DEMO_WEBSITES: dict[str, Any] = {
    "fetch_websites": True,
    "website": {"allow_private_addresses": True, "deadline_seconds": 5},
}
#: The workflow's agents in execution order (each depends on the previous), then the
#: scout, which is not part of the workflow: it runs once the workflow is done.
DEMO_AGENTS: tuple[admin.DemoAgent, ...] = (
    admin.DemoAgent("demo-opportunity-bot", "opportunity_bot", "primary", {}),
    # reuse_days 0: each run reads this run's sites, not an earlier run's findings.
    admin.DemoAgent("demo-enrichment-agent", "enrichment_agent", "enrichment",
                    {**_DEMO_WEBSITES, "reuse_days": 0}),
    admin.DemoAgent("demo-scoring-agent", "scoring_agent", "scoring", {}),
    # Seed 004's example 2, with officer changes too, over the demo's stream.
    admin.DemoAgent("demo-signal-scout", "scout_agent", None, {
        "signals": ["job_posting", "funding_round", "officer_change"], "threshold": 0.7,
        **_DEMO_WEBSITES}),
)
SCOUT = DEMO_AGENTS[-1].name
TOP_LEADS = 10

DEFAULT_TIMEOUT_SECONDS = 180.0
TOP_COMPANIES = 10
_WATCH_INTERVAL_SECONDS = 0.2
# Nothing should be in flight once the run is done; an interrupted demo hands its work
# back quickly.
_MAX_SHUTDOWN_GRACE_SECONDS = 5.0

Progress = Callable[[str], None]


class DemoFailed(Exception):
    """The demo could not finish; the message says why and what to do."""


def run_demo(
    host: CommandHost,
    conninfo: str,
    *,
    progress: Progress,
    online: bool = False,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """Run the demo against the (migrated) database at ``conninfo``; returns the report
    (JSON-ready apart from Decimal, datetime and UUID values)."""
    started = time.monotonic()
    companies = _ensure_companies(conninfo, progress)
    today = dt.datetime.now(dt.UTC).date()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        demo_companies = admin.demo_companies(conn)
        _load_filing_histories(conn, demo_companies, today, progress)
    sites = {c.company_number: (c.name, c.sic_codes) for c in demo_companies}
    with serve_demo_sites(sites, seed=DEMO_SEED, today=today) as base_url:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            admin.point_demo_websites(conn, base_url)
            progress(f"serving {len(sites):,} demo company websites at {base_url}")
            progress("creating the stream (SaaS + FinTech, UK + Ireland, 10-500 employees, "
                     "find 50, min quality 4.0) and assigning the three agents")
            try:
                setup = admin.start_demo_workflow(
                    conn,
                    stream_name=f"Demo: SaaS + FinTech in UK & Ireland "
                                f"({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC)",
                    goal_criteria=GOAL_CRITERIA,
                    target_metrics=TARGET_METRICS,
                    agents=DEMO_AGENTS,
                )
            except admin.DemoSetupError as exc:
                raise DemoFailed(str(exc)) from None
        for note in setup.notes:
            progress(note)
        progress(f"triggered workflow run {setup.run_id}")

        run_started = time.monotonic()
        scout_task = asyncio.run(_work_until_done(
            host, conninfo, setup, progress, online=online, within=timeout))
        run_seconds = time.monotonic() - run_started

    with psycopg.connect(conninfo, autocommit=True) as conn:
        report = admin.demo_report(conn, setup.stream_id, setup.run_id, top=TOP_COMPANIES)
        report["progress"] = admin.stream_progress(conn, setup.stream_id)
        report["leads"] = _leads(admin.stream_leads(conn, setup.stream_id))
        report["insights"] = admin.stream_insights(conn, setup.stream_id)
        report["scout"] = admin.task_progress(conn, scout_task)
    report["companies"] = companies
    report["workflow_run"]["seconds"] = round(run_seconds, 2)
    report["mode"] = "online" if online else "offline"
    report["seconds"] = round(time.monotonic() - started, 2)
    return report


def _leads(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leads to show, best first: the best critical ones and the best high ones
    (:data:`TOP_LEADS` in all, high ones given at least a few places), each with the
    reasons for its score instead of the raw details."""
    critical = [row for row in rows if row["priority"] == "critical"]
    high = [row for row in rows if row["priority"] != "critical"]
    keep_high = min(len(high), max(TOP_LEADS - len(critical), TOP_LEADS // 3))
    shown = critical[:TOP_LEADS - keep_high] + high[:keep_high]
    leads = []
    for row in shown:
        reasons = lead_reasons(row["score_details"], row["buying_signals"],
                               enrichment_quality=row["enrichment_quality"],
                               data_completeness=row["data_completeness"])
        leads.append({key: row[key] for key in (
            "position", "name", "company_number", "town", "quality_score", "priority")}
            | {"reasons": reasons})
    return leads


# -- 2. the local source of enrichment ---------------------------------------------------


def _load_filing_histories(
    conn: psycopg.Connection[Any], companies: list[admin.DemoCompany], today: dt.date,
    progress: Progress,
) -> None:
    """The generator's filing histories of the demo companies, as of today."""
    generator = _generator()
    filings = [
        filings_store.StoredFiling(company.id, FilingRecord(
            item["transaction_id"], item["category"], item["type"],
            dt.date.fromisoformat(item["date"]), item["description"],
            item["description_values"]))
        for company in companies
        for item in generator.filing_history(
            company.company_number, incorporated=company.incorporation_date,
            accounts_category=company.accounts_category,
            accounts_last_made_up=company.accounts_last_made_up,
            conf_stmt_last_made_up=company.conf_stmt_last_made_up,
            sic_codes=company.sic_codes, as_of=today, seed=DEMO_SEED)
    ]
    loaded = filings_store.replace_generated_filings(conn, filings)
    progress(f"generated {loaded:,} filings for {len(companies):,} demo companies "
             f"(filing histories as of {today.isoformat()})")


# -- 1. demo companies -----------------------------------------------------------------


def _ensure_companies(conninfo: str, progress: Progress) -> dict[str, Any]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        present = admin.company_count(conn)
    if present:
        progress(f"using the {present:,} companies already in the database "
                 "(demo companies are only loaded into an empty table)")
        return {"loaded": False, "present": present, "import": None}
    generator = _generator()
    from agents.companies_import import CompaniesFileError, import_companies

    with tempfile.TemporaryDirectory(prefix="agent-runner-demo-") as scratch:
        path = Path(scratch) / "BasicCompanyData-demo.csv"
        progress(f"generating {DEMO_ROWS:,} demo companies (BasicCompanyData format, "
                 f"seed {DEMO_SEED})")
        with path.open("w", encoding="utf-8", newline="") as out:
            generator.generate(out, DEMO_ROWS, seed=DEMO_SEED, as_of=DEMO_AS_OF)
        progress("importing them")
        try:
            report = asyncio.run(import_companies(conninfo, path))
        except CompaniesFileError as exc:  # the generator and importer disagree: a bug
            raise DemoFailed(f"the demo companies file was refused: {exc}") from None
    progress(f"imported {report.inserted:,} companies in {report.seconds:.1f} s")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        admin.claim_demo_companies(conn)
        present = admin.company_count(conn)
    return {"loaded": True, "present": present, "import": report.as_dict()}


def _generator() -> ModuleType:
    """The BasicCompanyData generator (shipped in the wheel as agents.companies_generator)."""
    from agents import companies_generator

    return companies_generator


# -- 4. the daemon ---------------------------------------------------------------------


async def _work_until_done(
    host: CommandHost, conninfo: str, setup: admin.DemoSetup, progress: Progress, *,
    online: bool, within: float,
) -> str:
    """Run the workflow, then the scout over its stream; returns the scout's task id."""
    deadline = time.monotonic() + within
    scout_task = ""
    async with host.run_daemon(conninfo, offline=not online, concurrency=3,
                               max_shutdown_grace=_MAX_SHUTDOWN_GRACE_SECONDS) as daemon:
        interrupted = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, interrupted.set)
        try:
            outcome = await _watch(conninfo, setup.run_id, progress, daemon, interrupted,
                                   within=within)
            if outcome is None:
                scout_task = await asyncio.to_thread(_enqueue_scout, conninfo,
                                                     setup.stream_id)
                progress(f"scout ({SCOUT}): watching the stream's companies for job "
                         "postings, funding rounds and officer changes")
                outcome = await _watch_task(conninfo, scout_task, progress, daemon,
                                            interrupted, within=deadline - time.monotonic())
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            daemon.request_stop()
            exit_code = await daemon.wait()
    if outcome is not None:
        raise DemoFailed(outcome)
    if exit_code != 0:
        raise DemoFailed(f"the demo's daemon stopped with exit code {exit_code}; "
                         "see the messages above")
    return scout_task


def _enqueue_scout(conninfo: str, stream_id: str) -> str:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return admin.enqueue_task(conn, SCOUT, {"stream_id": stream_id})


async def _watch_task(
    conninfo: str,
    task_id: str,
    progress: Progress,
    daemon: InProcessDaemon,
    interrupted: asyncio.Event,
    *,
    within: float,
) -> str | None:
    """Follow one task as :func:`_watch` follows the run."""
    deadline = time.monotonic() + within
    announced = ""
    conn = await asyncio.to_thread(_connect, conninfo)
    with conn:
        while True:
            state = await asyncio.to_thread(admin.task_progress, conn, task_id)
            line = _step_line(state)
            if line != announced:
                announced = line
                progress(line)
            if state["status"] == "completed":
                return None
            if state["status"] in ("failed", "cancelled"):
                return (f"the scout's task {task_id} {state['status']}: {state['note']} "
                        f"(see `agent-runner show {task_id}`)")
            if not daemon.running:
                return "the demo's daemon stopped before the scout finished"
            if interrupted.is_set():
                return "interrupted; unfinished work was handed back to the queue"
            if time.monotonic() > deadline:
                return (f"the scout did not finish in time ({state['status']}); it is still "
                        "queued: `agent-runner run` finishes it")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(interrupted.wait(), _WATCH_INTERVAL_SECONDS)


async def _watch(
    conninfo: str,
    run_id: str,
    progress: Progress,
    daemon: InProcessDaemon,
    interrupted: asyncio.Event,
    *,
    within: float,
) -> str | None:
    """Follow the run, announcing each step's changes; None when it completed, else
    why the demo must stop."""
    deadline = time.monotonic() + within
    announced: dict[str, str] = {}
    conn = await asyncio.to_thread(_connect, conninfo)
    with conn:
        while True:
            state = await asyncio.to_thread(admin.workflow_progress, conn, run_id)
            for step in state["steps"]:
                line = _step_line(step)
                if announced.get(step["agent_name"]) != line:
                    announced[step["agent_name"]] = line
                    progress(line)
            if state["status"] == "completed":
                return None
            if state["status"] == "failed":
                failed = [s["task_id"] for s in state["steps"] if s["status"] == "failed"]
                where = f"`agent-runner show {failed[0]}`" if failed else "`agent-runner tasks`"
                return f"workflow run {run_id} failed: {state['error_message']} (see {where})"
            if not daemon.running:
                return "the demo's daemon stopped before the workflow finished"
            if interrupted.is_set():
                return "interrupted; unfinished work was handed back to the queue"
            if time.monotonic() > deadline:
                waiting = ", ".join(f"{s['agent_name']} {s['status']}" for s in state["steps"])
                return (f"the workflow did not finish within {within:.0f} s ({waiting}); "
                        f"it is still queued: `agent-runner run` finishes it")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(interrupted.wait(), _WATCH_INTERVAL_SECONDS)


def _connect(conninfo: str) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo, autocommit=True)


_STAGES = {"opportunity_bot": "discovery", "enrichment_agent": "enrichment",
           "scoring_agent": "scoring", "scout_agent": "scout"}


def _step_line(step: dict[str, Any]) -> str:
    stage = _STAGES.get(step["agent_type"], step["agent_type"])
    line = f"{stage} ({step['agent_name']}): {step['status']}"
    if step["status"] == "completed" and step["output"]:
        figures = ", ".join(f"{k} {v}" for k, v in step["output"].items()
                            if isinstance(v, int | float) and not isinstance(v, bool))
        line += f" in {step['duration_ms'] / 1000:.1f} s" if step["duration_ms"] else ""
        line += f" ({figures})" if figures else ""
    elif step["status"] == "not_started" and step["note"]:
        line = f"{stage} ({step['agent_name']}): {step['note']}"  # "not started: why"
    elif step["note"] and step["status"] not in ("pending", "processing", "waiting"):
        line += f": {step['note']}"
    return line
