"""The `agent-runner` commands the business agents bring: ``demo`` and
``import-companies``.

They reach the CLI through the entry-point group ``agent_runner.commands``
(pyproject.toml) and use the engine only through :class:`runner.api.CommandHost`.
This module is imported by every `agent-runner` invocation, to build the parser, so
the work (the demo, the importer) is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from runner.api import AgentCommand, CommandFailed, CommandHost, add_json_flag, positive_int

# -- demo --------------------------------------------------------------------------------


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", dest="RUNNER_DATA_DIR",
                        help="where the embedded Postgres keeps its data (no DATABASE_URL)")
    parser.add_argument("--online", action="store_true",
                        help="use ANTHROPIC_API_KEY / COMPANIES_HOUSE_API_KEY if set (default: "
                        "offline, nothing leaves the machine)")
    parser.add_argument("--timeout", type=positive_int, default=180,
                        help="seconds to wait for the workflow (default 180)")
    add_json_flag(parser)


def run_demo_command(args: argparse.Namespace, host: CommandHost) -> int:
    from agents import demo

    # The daemon's routine INFO lines would drown the stage lines; problems still show.
    host.configure_logging(at_least="WARNING")
    with host.database_for_daemon(host.say) as database:
        if not database.embedded:
            host.say("using DATABASE_URL; migrating it first")
            host.migrate(database.url)
        try:
            report = demo.run_demo(host, database.url, progress=host.say, online=args.online,
                                   timeout=args.timeout)
        except demo.DemoFailed as exc:
            raise CommandFailed(f"demo failed: {exc}") from None
        # The embedded server's URI holds no secret (a local socket, trust auth); the
        # user's own DATABASE_URL may hold a password and is never echoed.
        report["database"] = {"embedded": database.embedded,
                              "url": database.url if database.embedded else None}
    if args.json:
        host.print_json(report)
    else:
        _print_demo_report(host, report)
    return 0


def _print_demo_report(host: CommandHost, report: dict[str, Any]) -> None:
    stream, summary, run = report["stream"], report["summary"], report["workflow_run"]
    print(f"stream: {stream['name']}  ({stream['id']})")
    print(f"workflow run {run['id']} {run['status']} in {run['seconds']:.1f} s "
          f"({report['mode']} mode; {report['seconds']:.1f} s in all)")
    print(f"items: {summary['items']}  qualified (>= "
          f"{stream['target_metrics'].get('min_quality_score', '-')}): {summary['qualified']}  "
          f"average score: {summary['avg_quality_score'] or '-'}  enriched: "
          f"{summary['enriched']}")
    print("  by priority: " + "  ".join(
        f"{band}={summary[band]}" for band in ("critical", "high", "medium", "low")))
    progress = report.get("progress")
    if progress:
        target = f" of a target of {progress['target']}" if progress["target"] else ""
        print(f"progress: {progress['items']} items{target}, {progress['enriched']} "
              f"enriched, {progress['scored']} scored, {progress['qualified']} qualified; "
              f"critical {progress['critical']}, high {progress['high']}, medium "
              f"{progress['medium']}, low {progress['low']}; last run "
              f"{progress['last_run_status'] or '-'}")
    leads = report.get("leads") or []
    if leads:
        print(f"\nleads: {summary['critical']} critical and {summary['high']} high; the best "
              "of them, with the reasons for their scores:")
    else:
        print("\nleads: no critical or high lead")
    for lead in leads:
        print(f"  {lead['position']}. {lead['name']} ({lead['company_number']}, "
              f"{lead['town'] or '-'}): {lead['priority']} {lead['quality_score']}")
        for reason in lead["reasons"]:
            print(f"       - {reason}")
    print(f"\ntop {len(report['top_companies'])} companies:")
    rows = [{**company, "key_signals": ", ".join(company["key_signals"]) or "-"}
            for company in report["top_companies"]]
    host.print_table(rows, ["position", "name", "town", "quality_score", "priority",
                            "key_signals"])
    _print_insights(report.get("insights") or [])
    scout = report.get("scout")
    if scout:
        output = scout.get("output") or {}
        print(f"\nscout ({scout['agent_name']}): {scout['status']}; checked "
              f"{output.get('companies_checked', '-')} companies, found "
              f"{output.get('signals_found', '-')} signals, "
              f"{output.get('signals_above_threshold', '-')} at or above its threshold, "
              f"wrote {output.get('insights_created', '-')} insights")
    print("\nagents:")
    rows = [{**agent, "duration": f"{(agent['duration_ms'] or 0) / 1000:.2f} s",
             "llm_cost_usd": f"{agent['cost_usd']:.4f}" if agent["llm_calls"] else "-"}
            for agent in report["agents"]]
    host.print_table(rows, ["agent_name", "agent_type", "status", "executions", "duration",
                            "llm_calls", "llm_cost_usd"])
    if report["agents"]:
        last = report["agents"][-1]["task_id"]
        print(f"\nmore: `agent-runner show {last}` (a task, its executions, logs and the "
              "run's tree), `agent-runner agents`, `agent-runner tasks`")
    database = report.get("database") or {}
    if database.get("embedded"):
        # The other commands need DATABASE_URL; the embedded server is stopped by now.
        print("the embedded Postgres is stopped and keeps its data: to look around, start "
              "it with `agent-runner run` and use the DATABASE_URL it prints")


#: Scout signals listed one by one in the report; the rest are counted.
_SIGNALS_SHOWN = 10


def _print_insights(insights: list[dict[str, Any]]) -> None:
    print(f"\ninsights: {len(insights)}" + ("" if insights else " (none)"))
    signals = [i for i in insights if i["kind"] == "signal"]
    for insight in insights:
        if insight["kind"] != "signal":
            print(f"  [{insight['kind']}] {insight['title']}")
    for insight in signals[:_SIGNALS_SHOWN]:
        strength = (insight["metadata"].get("signal") or {}).get("strength")
        shown = f" (strength {strength:.2f})" if isinstance(strength, int | float) else ""
        print(f"  [signal] {insight['title']}{shown}")
    if len(signals) > _SIGNALS_SHOWN:
        print(f"  ... and {len(signals) - _SIGNALS_SHOWN} more signals "
              "(SELECT * FROM stream_insights)")


DEMO = AgentCommand(
    help="migrate, load demo companies, run discovery -> enrichment -> scoring and a "
    "signal scout, print the scored stream",
    description="Seed 004's examples end to end, offline: loads a few thousand synthetic "
    "companies (only into an empty companies table), serves their websites from a "
    "local server on 127.0.0.1 and generates their filing histories, creates a NEW "
    "stream on every run (SaaS + FinTech, UK + Ireland, 10-500 employees, find 50, min "
    "quality 4.0), reuses the demo-* agents, runs the workflow and then the signal "
    "scout in-process, and prints the stream's progress, its critical and high leads "
    "with their reasons, the top companies, the insights and per-agent figures. "
    "Without DATABASE_URL it uses the embedded Postgres under RUNNER_DATA_DIR. While it "
    "runs, its daemon also works any other pending task of that database.",
    add_arguments=_demo_arguments,
    run=run_demo_command,
)


# -- import-companies --------------------------------------------------------------------


def _import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE.csv")
    add_json_flag(parser)


def run_import_companies(args: argparse.Namespace, host: CommandHost) -> int:
    """Exit 0 once the file was read, even when some rows were rejected (they are
    listed, with their line numbers, and the good rows are loaded): a five-million-row
    register file always has a few. Exit 1 when the file cannot be read or is not a
    BasicCompanyData CSV (then nothing was written)."""
    from agents.companies_import import CompaniesFileError, import_companies

    url = host.database_url()
    with host.connect():
        pass  # fail early, with the usual messages, on connection or schema trouble
    host.say(f"importing {args.file}")
    try:
        # tqdm draws the bar on stderr; stdout keeps only the report.
        report = asyncio.run(import_companies(url, args.file, progress=True))
    except CompaniesFileError as exc:
        raise CommandFailed(f"{args.file}: {exc}") from None
    except OSError as exc:
        raise CommandFailed(f"cannot read {args.file}: {exc.strerror or exc}") from None
    if args.json:
        host.print_json(report.as_dict())
        return 0
    print(f"imported {report.path}: {report.rows_read:,} rows in {report.seconds:.1f} s "
          f"({report.rows_per_second:,.0f} rows/s)")
    print(f"  inserted   {report.inserted:,}\n  updated    {report.updated:,}\n"
          f"  unchanged  {report.unchanged:,}\n  rejected   {report.rejected:,}")
    if report.rejects:
        shown = len(report.rejects)
        more = f" (the first {shown})" if shown < report.rejected else ""
        print(f"rejected rows{more}:")
        for reject in report.rejects:
            print(f"  line {reject.line}: {reject.reason}")
    return 0


IMPORT_COMPANIES = AgentCommand(
    help="load a Companies House BasicCompanyData CSV (progress bar on stderr)",
    description="Load a Companies House BasicCompanyData CSV. Exit 0 when the file "
    "was read, even if some rows were rejected (they are listed with their line "
    "numbers); exit 1 when the file cannot be read or its header is not "
    "BasicCompanyData's.",
    add_arguments=_import_arguments,
    run=run_import_companies,
)
