"""agent-runner: run business-intelligence agents as background tasks on PostgreSQL.

Exit codes: 0 success, 1 the operation failed (the reason on stderr), 2 usage error.

Settings come from environment variables (and a .env file); every flag of `run` can also
be set by its variable (--concurrency by RUNNER_CONCURRENCY, and so on), and flags win.
Commands that talk to PostgreSQL need DATABASE_URL (a libpq URI such as
postgresql://user@host/dbname), except `run` and `demo`, which start an embedded
PostgreSQL under RUNNER_DATA_DIR instead and say so on stderr.

Read commands take --json (one JSON document on stdout). Where --payload (or --config,
--criteria, --targets) takes a JSON object, @FILE reads it from a file and - from
standard input.

Getting started: `agent-runner agents create`, `agent-runner streams create`,
`agent-runner streams assign`, then `agent-runner enqueue` the stream's first agent (its
dependents follow) or `agent-runner streams trigger`; `agent-runner COMMAND --help` for
each command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import importlib.metadata
import json
import logging
import os
import signal
import sys
import threading
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import psycopg

from runner.api import (
    COMMANDS_GROUP,
    AgentCommand,
    DaemonDatabase,
    add_json_flag,
    positive_int,
)
from runner.errors import (
    CommandFailed,
    DatabaseUnreachable,
    EmbeddedPostgresError,
    SchemaError,
    UsageError,
)
from runner.migrate import check_schema_current, migrate
from runner.plugins import InvalidPayload, Registry, UnknownAgentType, load_registry
from runner.redaction import Redactor
from runner.settings import Settings, SettingsError, load_settings
from runner.store import agent_types
from runner.store import journal as journal_store
from runner.store import operator as admin
from runner.store.text import make_storable

if TYPE_CHECKING:
    from runner.daemon import Daemon

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        message = f"priority must be an integer 1-10, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not 1 <= value <= 10:
        raise argparse.ArgumentTypeError(f"priority must be between 1 and 10, got {value}")
    return value


def _json_option(flag: str) -> Callable[[str], dict[str, Any]]:
    """An argparse ``type``: a JSON object given inline, as ``@FILE`` (read from the
    file) or as ``-`` (read from standard input). JSON never starts with ``@``."""

    def parse(text: str) -> dict[str, Any]:
        source, where = text, ""
        if text == "-":
            source, where = sys.stdin.read(), " (standard input)"
        elif text.startswith("@"):
            where = f" ({text[1:]})"
            try:
                with open(text[1:], encoding="utf-8") as file:
                    source = file.read()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise argparse.ArgumentTypeError(
                    f"{flag} {text}: cannot read the file: {reason}") from None
        try:
            value = json.loads(source)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"{flag}{where} is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{flag}{where} must be a JSON object")
        return value

    return parse


_json_object = _json_option("--payload")


def _timestamp(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--at must be ISO 8601, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _json_value(value: Any) -> Any:
    # Scores and costs are numeric columns: give JSON readers numbers, not strings.
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def _print_json(document: Any) -> None:
    json.dump(document, sys.stdout, default=_json_value, indent=2)
    sys.stdout.write("\n")


# -- database --------------------------------------------------------------------------


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    raise UsageError(
        "DATABASE_URL is not set (only `run` and `demo` start an embedded Postgres); "
        "set it to a libpq URI such as postgresql://user@host/dbname"
    )


def _connect(settings: Settings) -> psycopg.Connection[Any]:
    url = database_url(settings)
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise CommandFailed(f"cannot connect to the database: {exc}".strip()) from None
    make_storable(conn)
    try:
        # One clear message instead of "relation ... does not exist" further on.
        check_schema_current(conn)
    except SchemaError as exc:
        conn.close()
        raise CommandFailed(str(exc)) from None
    return conn


@contextlib.contextmanager
def _database_for_daemon(settings: Settings, say: Callable[[str], None]) -> Iterator[str]:
    """``DATABASE_URL``, or the embedded Postgres under ``RUNNER_DATA_DIR``: started
    (or joined, when another agent-runner already runs it), migrated, and stopped on
    the way out if this process started it. ``say`` tells the operator which."""
    if settings.database_url:
        yield settings.database_url
        return
    from runner.embedded_pg import start_embedded_postgres

    data_dir = settings.data_dir.expanduser().resolve()
    say(f"DATABASE_URL is not set: starting the embedded Postgres in {data_dir} "
        "(set DATABASE_URL to use your own server)")
    try:
        server = start_embedded_postgres(data_dir)
    except EmbeddedPostgresError as exc:
        raise CommandFailed(str(exc)) from None
    try:
        if not server.owns_server:
            say("joined the embedded Postgres another agent-runner process started")
        applied = migrate(server.url)
        if applied:
            say(f"migrated the embedded database ({len(applied)} migrations)")
        # Local socket, trust auth: no secret in it, and the other commands need it.
        say(f"while this runs, other commands reach it with DATABASE_URL='{server.url}'")
        yield server.url
    finally:
        try:
            server.stop()
        except EmbeddedPostgresError as exc:
            say(f"warning: {exc}")
        else:
            if server.owns_server:
                say("stopped the embedded Postgres")


def _say(message: str) -> None:
    """A progress line for the operator: stderr, so stdout stays the command's output."""
    print(f"agent-runner: {message}", file=sys.stderr, flush=True)


def _configure_logging(settings: Settings, level: str | None = None) -> None:
    """Log lines on stderr, with every secret the settings hold redacted."""
    from runner import logs

    logs.configure(settings.log_format, level or settings.log_level,
                   redact=Redactor.from_settings(settings))


# -- commands --------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    # A plugin that fails to load is logged (agent_plugin_rejected, with its error).
    _configure_logging(settings)
    url = database_url(settings)
    applied = migrate(url)
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print("schema is up to date")
    registry = load_registry()
    _register_agent_types(url, registry)
    _say(f"agent types: {', '.join(registry.types()) or '(none installed)'}")
    return EXIT_OK


def _register_agent_types(url: str, registry: Registry) -> None:
    """Record the registry's types in ``agent_types``, so that agents of every type it
    provides can be created (``migrate``, and each daemon at start)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        agent_types.refresh_sync(conn, registry.agent_type_rows())


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from runner.daemon import Daemon

    _configure_logging(settings)
    warn_if_root(settings, os.geteuid())
    # Through the log, so that RUNNER_LOG_FORMAT=json output stays one JSON per line.
    # The daemon waits for a database that is not up yet (RUNNER_DB_OUTAGE_LIMIT), then
    # refuses a schema that does not fit this build before it registers.
    with _database_for_daemon(settings, logging.getLogger("runner.cli").info) as url:
        return asyncio.run(Daemon(settings, url).run())


ROOT_HINT = (
    "the daemon needs no privileges: run it as a dedicated system user, as "
    "systemd/agent-runner.service does (User=agent-runner; create the user with "
    "`useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "
    "agent-runner`; README, Deployment)"
)


def warn_if_root(settings: Settings, euid: int) -> bool:
    """One ``running_as_root`` warning when the daemon runs as root against its own
    ``DATABASE_URL``: an agent or a library bug would then act with every privilege
    on the host. (Without it, the embedded Postgres already runs as an unprivileged
    user of its own: runner.embedded_pg.)"""
    if euid != 0 or not settings.database_url:
        return False
    logging.getLogger("runner.cli").warning("running_as_root", extra={"hint": ROOT_HINT})
    return True


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    # A plugin that fails to load is logged (agent_plugin_rejected, with its error).
    _configure_logging(settings)
    with _connect(settings) as conn:
        agent = admin.find_agent(conn, args.agent)
        if agent is None:
            raise CommandFailed(f"unknown agent: {args.agent}")
        try:
            # Loads every agent (most of a second): only enqueue and the daemon need them.
            load_registry().validate(agent["agent_type"], args.payload)
        except (InvalidPayload, UnknownAgentType) as exc:
            raise CommandFailed(str(exc)) from None
        task_id = admin.enqueue(conn, str(agent["id"]), args.payload, args.priority, args.at)
        run = admin.task_workflow_run(conn, task_id)
    print(task_id)
    if run is not None:
        _say(f"the task starts run {run['id']} of stream {run['stream_name']}: the agents "
             "after it in the stream follow when it completes")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        if not admin.retry(conn, args.task_id):
            raise CommandFailed(
                f"task {args.task_id} is not failed or cancelled (or does not exist)")
    print(f"task {args.task_id} re-queued")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        if not admin.cancel(conn, args.task_id):
            raise CommandFailed(
                f"task {args.task_id} is not pending or processing (or does not exist)")
    print(f"task {args.task_id} cancellation requested")
    return EXIT_OK


def cmd_tasks(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        rows = admin.list_tasks(conn, status=args.status, agent=args.agent, limit=args.limit)
    if args.json:
        _print_json(rows)
    else:
        _print_table(rows, ["id", "agent_name", "status", "priority", "retry_count", "created_at"])
    return EXIT_OK


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        document = admin.show_task(conn, args.task_id)
        transcript = (journal_store.transcript(conn, args.task_id)
                      if document is not None and args.transcript else None)
    if document is None:
        raise CommandFailed(f"no task {args.task_id}")
    if transcript is not None:
        document["transcript"] = _shown_transcript(transcript, Redactor.from_settings(settings))
    if args.json:
        _print_json(document)
        return EXIT_OK
    task = document["task"]
    for key, value in task.items():
        print(f"{key:>22}: {_readable(value)}")
    print("\nexecutions:")
    _print_table(document["executions"],
                 ["attempt", "status", "started_at", "duration_ms", "llm_calls", "cost_usd",
                  "error_message"])
    workflow = document["workflow"]
    if workflow is not None:
        run = workflow["run"]
        print(f"\nworkflow run {workflow['run_id']} ({run['status'] if run else 'deleted'}):")
        for line in _workflow_tree(workflow["steps"], current=task["id"]):
            print("  " + line)
    print("\nlogs:")
    _print_table(document["logs"], ["created_at", "log_type", "message"])
    if transcript is not None:
        print("\ntranscript:")
        _print_transcript(document["transcript"])
    return EXIT_OK


#: A transcript string longer than this is shown cut, with a note of its length.
TRANSCRIPT_MAX_CHARS = 4096


def _trimmed(value: Any) -> Any:
    """``value`` with every string over :data:`TRANSCRIPT_MAX_CHARS` cut, with a note."""
    if isinstance(value, str) and len(value) > TRANSCRIPT_MAX_CHARS:
        return (f"{value[:TRANSCRIPT_MAX_CHARS]} ...[truncated: {len(value)} characters "
                "in all]")
    if isinstance(value, list):
        return [_trimmed(item) for item in value]
    if isinstance(value, dict):
        return {key: _trimmed(item) for key, item in value.items()}
    return value


def _shown_transcript(rows: Sequence[Mapping[str, Any]], redact: Redactor) -> list[Any]:
    """The ``llm_transcript`` rows as shown: secrets redacted (the daemon stores them
    scrubbed already; this also covers rows written before a key was configured) and
    oversized blobs trimmed."""
    shown = []
    for row in rows:
        text = redact(json.dumps(dict(row), default=_json_value, ensure_ascii=False))
        shown.append(_trimmed(json.loads(text)))
    return shown


def _print_transcript(rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        print("  (none)")
        return
    attempt = None
    for row in rows:
        if row["attempt"] != attempt:
            attempt = row["attempt"]
            print(f"  attempt {attempt}:")
        mark = "  [replayed]" if row["replayed"] else ""
        if row["role"] == "assistant":
            print(f"    step {row['step']} model: {row['input_tokens']} in / "
                  f"{row['output_tokens']} out tokens, ${row['cost_usd']}, "
                  f"{row['duration_ms']} ms{mark}")
            for block in row["content"] or []:
                if block.get("type") == "text":
                    print(f"      text: {block.get('text', '')}")
                elif block.get("type") == "tool_use":
                    print(f"      tool call {block.get('name')}: "
                          f"{json.dumps(block.get('input'), ensure_ascii=False)}")
                else:
                    print(f"      {block.get('type')}")
        else:
            error = " (error)" if isinstance(row["content"], dict) and \
                row["content"].get("is_error") else ""
            print(f"    step {row['step']} tool {row['tool_name']}{error}: "
                  f"{row['duration_ms']} ms{mark}")
            print(f"      input: {json.dumps(row['tool_input'], ensure_ascii=False)}")
            print(f"      output: {row['tool_output']}")


def _workflow_tree(steps: Sequence[dict[str, Any]], *, current: Any) -> list[str]:
    """The run's steps as an indented tree, each under its parents (a step with two
    parents appears under both); ``current`` is marked. Steps that have no task yet
    show why (waiting, or the reason they will not start)."""
    children: dict[str, list[dict[str, Any]]] = {}
    names = {step["agent_name"] for step in steps}
    roots = []
    for step in steps:
        parents = [name for name in step["parent_agents"] if name in names]
        if not parents:
            roots.append(step)
        for parent in parents:
            children.setdefault(parent, []).append(step)
    lines: list[str] = []

    def walk(step: dict[str, Any], depth: int, seen: frozenset[str]) -> None:
        mark = "  <- this task" if step["task_id"] == current else ""
        prefix = "   " * (depth - 1) + "└─ " if depth else ""
        detail = f"  {step['task_id']}" if step["task_id"] else ""
        if step["note"] and step["status"] != "completed":
            detail += f"  ({_cell(step['note'])})"
        lines.append(f"{prefix}{step['agent_name']}  {step['status']}{detail}{mark}")
        for child in children.get(step["agent_name"], []):
            if child["agent_name"] not in seen:  # cycles are refused on write; never loop
                walk(child, depth + 1, seen | {child["agent_name"]})

    for root in roots:
        walk(root, 0, frozenset({root["agent_name"]}))
    return lines


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        document = admin.status(conn)
    if args.json:
        _print_json(document)
        return EXIT_OK
    runner = document["runner"]
    print(f"runner: {runner['status']}  (claiming "
          f"{'paused' if document['paused'] else 'enabled'}; {runner['daemons']} live "
          f"daemon(s), {runner['in_flight']}/{runner['max_concurrent_tasks']} slots busy)")
    print("\ndaemons:")
    _print_table(document["daemons"],
                 ["host", "pid", "concurrency", "in_flight", "poll_interval_seconds",
                  "last_heartbeat", "stopping"])
    print("\ntasks:")
    print("  " + "  ".join(f"{k}={v}" for k, v in document["stats"].items()))
    print("\nrecent tasks:")
    _print_table(document["recent_tasks"], ["id", "agent_name", "status", "created_at"])
    return EXIT_OK


# -- logs ------------------------------------------------------------------------------


def cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        if args.task_id and not admin.task_exists(conn, args.task_id):
            raise CommandFailed(f"no task {args.task_id}")
        if args.follow:
            # LISTEN before reading what exists, so that no line falls in between.
            admin.listen_for_logs(conn)
        lines = admin.recent_logs(conn, task_id=args.task_id, limit=args.limit)
        for line in lines:
            _print_log_line(line)
        if not args.follow:
            return EXIT_OK
        sys.stdout.flush()
        _say("following new log lines (Ctrl-C to stop)")
        # Every later line matching the filter has a larger id than the last shown.
        last_id = int(lines[-1]["id"]) if lines else 0
        with _stop_on_signals() as stop:
            while not stop.is_set():
                # A short timeout so a signal is noticed within half a second.
                if not list(conn.notifies(timeout=0.5, stop_after=1)):
                    continue
                for line in admin.logs_after(conn, task_id=args.task_id, after_id=last_id):
                    _print_log_line(line)
                    last_id = int(line["id"])
                sys.stdout.flush()
    return EXIT_OK


def _print_log_line(line: dict[str, Any]) -> None:
    stamp = line["created_at"].strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    task = str(line["task_id"])[:8] if line["task_id"] else "-"
    print(f"{stamp}  {task}  {line['agent_name'] or '-'}  {line['log_type']}: "
          f"{line['message']}")


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM only set an event (STYLE.md 8); the previous handlers come
    back afterwards."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {signum: signal.signal(signum, handler)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


# -- agents and schedules --------------------------------------------------------------


def cmd_agents_list(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        rows = admin.list_agents(conn)
    if args.json:
        _print_json(rows)
    else:
        _print_table(rows, ["name", "agent_type", "is_active", "schedule_cron",
                            "total_executions", "success_rate", "average_execution_time_ms",
                            "last_executed_at"])
    return EXIT_OK


def cmd_agents_show(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        document = admin.show_agent(conn, args.name)
    if document is None:
        raise CommandFailed(f"unknown agent: {args.name}")
    if args.json:
        _print_json(document)
        return EXIT_OK
    for key, value in document["agent"].items():
        print(f"{key:>26}: {_readable(value)}")
    print("\nstreams:")
    _print_table(document["assignments"], ["stream_name", "assignment_role", "execution_order",
                                           "is_active", "total_executions", "last_executed_at"])
    print("\nrecent tasks:")
    _print_table(document["recent_tasks"], ["id", "status", "trigger", "created_at"])
    return EXIT_OK


def cmd_agents_enable(args: argparse.Namespace, settings: Settings) -> int:
    return _set_agent_active(args, settings, active=True)


def cmd_agents_disable(args: argparse.Namespace, settings: Settings) -> int:
    return _set_agent_active(args, settings, active=False)


def _set_agent_active(args: argparse.Namespace, settings: Settings, *, active: bool) -> int:
    with _connect(settings) as conn:
        changed = admin.set_agent_active(conn, args.name, active)
    if changed is None:
        raise CommandFailed(f"unknown agent: {args.name}")
    name, was_active = changed
    word = "enabled" if active else "disabled"
    if was_active == active:
        print(f"agent {name} was already {word}")
    elif active:
        print(f"agent {name} enabled: new tasks can be enqueued and its schedule fires")
    else:
        # The executor refuses tasks of a disabled agent when it claims them.
        print(f"agent {name} disabled: enqueueing is refused; queued tasks will fail "
              "when claimed; running ones finish")
    return EXIT_OK


def cmd_schedules(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        rows = admin.list_schedules(conn)
    now = dt.datetime.now(dt.UTC)
    for row in rows:
        row["next_fire"] = _next_fire(row["schedule_cron"], row["schedule_timezone"], now) \
            if row["is_active"] else None
    if args.json:
        _print_json(rows)
    else:
        _print_table(rows, ["name", "schedule_cron", "schedule_timezone", "is_active",
                            "next_fire", "last_fire"])
    return EXIT_OK


def _next_fire(cron: str, timezone: str, after: dt.datetime) -> dt.datetime | None:
    """The schedule's next fire time (in its own zone), computed as the daemons'
    scheduler does; None for an expression it rejects."""
    from zoneinfo import ZoneInfo

    from runner.cron import CronError, next_fire_time

    try:
        fire = next_fire_time(cron, timezone, after)
    except CronError:
        # Written before validation existed: it must not break the listing.
        return None
    return None if fire is None else fire.astimezone(ZoneInfo(timezone))


# -- creating agents; streams and their workflows --------------------------------------


def _cron_expression(text: str) -> str:
    """An argparse ``type``: a schedule in the grammar the database accepts."""
    from runner.cron import cron_problem

    problem = cron_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f'invalid cron expression "{text}": {problem}')
    return text


def _time_zone(text: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(
            f'unknown time zone "{text}" (use a name such as Europe/London or UTC)') from None
    return text


def _tool_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one tool (comma-separated)")
    return list(dict.fromkeys(names))


def _max_steps(text: str) -> int:
    value = positive_int(text)
    if value > 1000:
        raise argparse.ArgumentTypeError(f"--max-steps must be between 1 and 1000, got {value}")
    return value


def _order(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--order must be an integer, got {text!r}") from None


@contextlib.contextmanager
def _refusal_is_failure() -> Iterator[None]:
    """A write the database refuses (an unknown agent type, a dependency cycle, a bad
    schedule...) fails the command with the database's own words; nothing was written."""
    try:
        yield
    except (psycopg.IntegrityError, psycopg.DataError, psycopg.errors.NoDataFound,
            psycopg.errors.RaiseException) as exc:
        detail = exc.diag.message_primary or str(exc)
        raise CommandFailed(detail) from None


def _resolve_agent(conn: psycopg.Connection[Any], name_or_id: str) -> dict[str, Any]:
    agent = admin.find_agent(conn, name_or_id)
    if agent is None:
        raise CommandFailed(f"unknown agent: {name_or_id}")
    return agent


def _resolve_stream(conn: psycopg.Connection[Any], name_or_id: str) -> dict[str, Any]:
    found = admin.find_streams(conn, name_or_id)
    if not found:
        raise CommandFailed(f"unknown stream: {name_or_id}")
    if len(found) > 1 and str(found[0]["id"]) != name_or_id.lower():
        raise CommandFailed(f'{len(found)} streams are named "{name_or_id}"; pass the id of '
                            "the one you mean (agent-runner streams list)")
    return found[0]


def _schedule_text(cron: str | None, timezone: str) -> str:
    if cron is None:
        return "none"
    fire = _next_fire(cron, timezone, dt.datetime.now(dt.UTC))
    return f"{cron} ({timezone}), next fire {fire.isoformat() if fire else 'never'}"


def cmd_agents_create(args: argparse.Namespace, settings: Settings) -> int:
    columns: dict[str, Any] = {}
    for column, value in (("configuration", args.config), ("schedule_cron", args.cron),
                          ("schedule_timezone", args.tz), ("model", args.model),
                          ("instructions_prompt", args.instructions),
                          ("tool_names", args.tools), ("max_agent_steps", args.max_steps)):
        if value is not None:
            columns[column] = value
    with _connect(settings) as conn:
        if admin.find_agent(conn, args.name) is not None:
            raise CommandFailed(f'an agent named "{args.name}" already exists')
        with _refusal_is_failure():
            agent_id = admin.create_agent(conn, name=args.name, agent_type=args.agent_type,
                                          columns=columns)
    print(agent_id)
    note = f"; schedule {_schedule_text(args.cron, args.tz or 'UTC')}" if args.cron else ""
    _say(f"created agent {args.name} ({args.agent_type}){note}")
    return EXIT_OK


def cmd_streams_list(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        rows = admin.list_streams(conn)
    now = dt.datetime.now(dt.UTC)
    for row in rows:
        row["next_fire"] = (_next_fire(row["schedule_cron"], row["schedule_timezone"], now)
                            if row["schedule_cron"] else None)
    if args.json:
        _print_json(rows)
    else:
        _print_table(rows, ["name", "id", "agents", "schedule_cron", "next_fire", "items",
                            "qualified", "last_run_status", "last_run_at"])
    return EXIT_OK


def cmd_streams_create(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        if admin.find_streams(conn, args.name):
            raise CommandFailed(f'a stream named "{args.name}" already exists')
        with _refusal_is_failure():
            stream_id = admin.create_stream(
                conn, name=args.name, description=args.description,
                goal_criteria=args.criteria, target_metrics=args.targets)
    print(stream_id)
    _say(f"created stream {args.name}; next: agent-runner streams assign {args.name} AGENT")
    return EXIT_OK


def cmd_streams_show(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        stream = _resolve_stream(conn, args.stream)
        document = admin.show_stream(conn, str(stream["id"]))
    if document is None:
        raise CommandFailed(f"unknown stream: {args.stream}")
    info = document["stream"]
    info["next_fire"] = (_next_fire(info["schedule_cron"], info["schedule_timezone"],
                                    dt.datetime.now(dt.UTC)) if info["schedule_cron"] else None)
    if args.json:
        _print_json(document)
        return EXIT_OK
    for key in ("id", "name", "description", "goal_criteria", "target_metrics"):
        print(f"{key:>16}: {_readable(info[key])}")
    print(f"{'schedule':>16}: {_schedule_text(info['schedule_cron'], info['schedule_timezone'])}")
    progress = document["progress"]
    target = f" of {progress['target']}" if progress["target"] is not None else ""
    print(f"{'progress':>16}: {progress['items']} items{target}, {progress['enriched']} "
          f"enriched, {progress['scored']} scored, {progress['qualified']} qualified "
          f"(critical {progress['critical']}, high {progress['high']}, medium "
          f"{progress['medium']}, low {progress['low']})")
    print("\nagents (a run starts with those after nothing; each starts when those it "
          "comes after completed):")
    agents = [{**row, "after": ", ".join(row["depends_on"]) or "-"}
              for row in document["agents"]]
    _print_table(agents, ["execution_order", "agent_name", "agent_type", "after",
                          "assignment_role", "is_active", "auto_execute", "total_executions",
                          "last_executed_at"])
    print("\nrecent runs:")
    _print_table(document["runs"], ["id", "trigger", "root_agent", "status", "created_at",
                                    "completed_at", "error_message"])
    if document["scheduled_fires"]:
        print("\nrecent scheduled fires:")
        _print_table(document["scheduled_fires"],
                     ["fire_time", "outcome", "workflow_run_id", "note"])
    return EXIT_OK


def cmd_streams_assign(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        stream = _resolve_stream(conn, args.stream)
        agent = _resolve_agent(conn, args.agent)
        after = [_resolve_agent(conn, name) for name in args.after]
        # The payload a run gives the agent as a step must be one it accepts: refuse now
        # rather than fail every run.
        agent_type, payload = admin.workflow_payload(
            conn, stream_id=str(stream["id"]), agent_id=str(agent["id"]))
        try:
            load_registry().validate(agent_type, payload)
        except InvalidPayload as exc:
            raise CommandFailed(
                f'agent {agent["name"]} ({agent_type}) cannot run as a step of stream '
                f'{stream["name"]}: its payload would be {json.dumps(payload)}, and {exc}'
            ) from None
        except UnknownAgentType as exc:
            _say(f"warning: {exc}; its payload is not checked here")
        with _refusal_is_failure():
            result = admin.assign_agent(
                conn, stream_id=str(stream["id"]), agent_id=str(agent["id"]),
                after=[str(a["id"]) for a in after], order=args.order, role=args.role)
    verb = "assigned" if result["created"] else "updated the assignment of"
    names = ", ".join(a["name"] for a in after)
    print(f"{verb} {agent['name']} to stream {stream['name']} (order "
          f"{result['execution_order']}, {f'after {names}' if names else 'after nothing'})")
    return EXIT_OK


def cmd_streams_trigger(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        stream = _resolve_stream(conn, args.stream)
        with _refusal_is_failure():
            run_id, steps = admin.trigger_stream(conn, str(stream["id"]), args.priority)
    print(run_id)
    started = ", ".join(step["agent_name"] for step in steps if step["task_id"])
    _say(f"started run {run_id} of stream {stream['name']}: {started} enqueued; the agents "
         f"after them follow (agent-runner streams show {stream['name']})")
    return EXIT_OK


def _cron_or_off(text: str) -> str | None:
    """An argparse ``type``: a cron expression, or ``off`` (no schedule)."""
    return None if text.strip().lower() in ("off", "none") else _cron_expression(text)


def cmd_streams_schedule(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        stream = _resolve_stream(conn, args.stream)
        with _refusal_is_failure():
            row = admin.schedule_stream(conn, str(stream["id"]), args.cron, args.tz)
    if row["schedule_cron"] is None:
        print(f"stream {row['name']}: no schedule")
    else:
        print(f"stream {row['name']}: a run at every fire of "
              f"{_schedule_text(row['schedule_cron'], row['schedule_timezone'])}")
    return EXIT_OK


def _add_stream_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    json_help = "a JSON object; @FILE reads it from a file, - from standard input"
    p = sub.add_parser(
        "streams", help="streams and their workflows: list | create | show | assign | "
                        "trigger | schedule")
    _json_flag(p)
    p.set_defaults(handler=cmd_streams_list)
    streams = p.add_subparsers(dest="streams_command", parser_class=_Parser, metavar="ACTION")
    q = streams.add_parser("list", help="every stream with its agents, schedule and progress "
                                        "(default)")
    _json_flag(q, inherited=True)
    q.set_defaults(handler=cmd_streams_list)

    q = streams.add_parser("create", help="create a stream; prints its id")
    q.add_argument("name", help="the stream's name")
    q.add_argument("--criteria", type=_json_option("--criteria"), default={},
                   help="goal criteria, e.g. '{\"industry\": [\"FinTech\"], \"location\": "
                        "[\"UK\"], \"employee_count\": {\"min\": 10, \"max\": 500}}'; "
                        + json_help)
    q.add_argument("--targets", type=_json_option("--targets"), default={},
                   help="target metrics, e.g. '{\"companies_to_find\": 50, "
                        "\"min_quality_score\": 4.0}'; " + json_help)
    q.add_argument("--description", default="", help="what the stream is for")
    q.set_defaults(handler=cmd_streams_create)

    q = streams.add_parser("show", help="one stream: goal, schedule, agents, progress, runs")
    q.add_argument("stream", help="stream name or id")
    _json_flag(q, inherited=True)
    q.set_defaults(handler=cmd_streams_show)

    q = streams.add_parser(
        "assign", help="assign an agent to a stream, after other agents of it",
        description="Assign AGENT to STREAM. With --after, it starts in a run when those "
                    "agents have completed; without, it is where a run starts. Assigning an "
                    "agent again replaces its --after list (and --order / --role if given).")
    q.add_argument("stream", help="stream name or id")
    q.add_argument("agent", help="agent name or id")
    q.add_argument("--after", action="append", default=[], metavar="AGENT",
                   help="an agent of the stream this one waits for (repeat for several)")
    q.add_argument("--order", type=_order, default=None,
                   help="execution_order: orders agents that become ready together "
                        "(default: after the stream's last)")
    q.add_argument("--role", default=None, help="assignment_role, e.g. primary, enrichment, "
                                                "scoring (default primary)")
    q.set_defaults(handler=cmd_streams_assign)

    q = streams.add_parser("trigger", help="start a run of the stream's workflow; prints its id")
    q.add_argument("stream", help="stream name or id")
    q.add_argument("--priority", type=_priority, default=5, help="1-10, higher runs first")
    q.set_defaults(handler=cmd_streams_trigger)

    q = streams.add_parser(
        "schedule", help="run the stream's workflow on a cron schedule ('off' removes it)",
        description="Every fire of CRON starts one run of the stream's workflow, once across "
                    "all daemons; a fire while the previous scheduled run is still going is "
                    "skipped. CRON: 5 fields (minute hour day-of-month month day-of-week) or 6 "
                    "with seconds first; 'off' removes the schedule.")
    q.add_argument("stream", help="stream name or id")
    q.add_argument("cron", metavar="CRON", type=_cron_or_off,
                   help="e.g. '0 9 * * MON-FRI', or off")
    q.add_argument("--tz", type=_time_zone, default=None,
                   help="time zone of the schedule (default: unchanged, UTC at first)")
    q.set_defaults(handler=cmd_streams_schedule)


# -- pause / resume --------------------------------------------------------------------


def cmd_pause(args: argparse.Namespace, settings: Settings) -> int:
    return _set_paused(settings, paused=True)


def cmd_resume(args: argparse.Namespace, settings: Settings) -> int:
    return _set_paused(settings, paused=False)


def _set_paused(settings: Settings, *, paused: bool) -> int:
    with _connect(settings) as conn:
        was_paused = admin.set_paused(conn, paused)
        live = admin.live_daemon_count(conn)
    if was_paused == paused:
        print(f"claiming was already {'paused' if paused else 'enabled'}; nothing changed")
    elif paused:
        print(f"claiming paused: {live} live daemon(s) stop claiming within 2 s; in-flight "
              "tasks finish. `agent-runner resume` restarts claiming.")
    else:
        print(f"claiming resumed: {live} live daemon(s) start claiming within 2 s")
    return EXIT_OK


# -- retention -------------------------------------------------------------------------


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    from runner import retention

    with _connect(settings):  # the schema check, with its clear message
        pass
    report = asyncio.run(retention.prune_database(
        database_url(settings), settings, dry_run=args.dry_run, workers=args.workers))
    if not report.ran:
        raise CommandFailed("another prune is running (a daemon prunes every "
                            "RUNNER_PRUNE_INTERVAL seconds); nothing was removed")
    if args.json:
        _print_json(report.as_json())
        return EXIT_OK
    verb = "would remove" if report.dry_run else "removed"
    print(f"{verb}{' (dry run: nothing was removed)' if report.dry_run else ''}:")
    tasks = ", ".join(f"{status} {count}" for status, count in report.tasks.items())
    for table, count in report.removed.items():
        note = f"  ({tasks})" if table == "agent_tasks" else ""
        print(f"  {table:22s} {count:>10d}{note}")
    print("older than:")
    for kind, cutoff in report.cutoffs.items():
        print(f"  {kind:22s} {cutoff.isoformat() if cutoff else 'kept forever'}")
    if not report.complete:
        print("stopped early (a batch timed out); run again to continue", file=sys.stderr)
    return EXIT_OK


# -- budgets ---------------------------------------------------------------------------


def cmd_budgets(args: argparse.Namespace, settings: Settings) -> int:
    """Every LLM budget with its spend in the current UTC period (CONTRACT.md)."""
    from runner.store import llm as llm_store

    with _connect(settings) as conn:
        rows = llm_store.list_budgets(conn)
    if args.json:
        _print_json(rows)
        return EXIT_OK
    for row in rows:
        row["scope"] = f"agent {row['agent']}" if row["agent"] else "organization"
        row["limit"] = " / ".join(
            part for part in (
                f"${row['limit_usd']}" if row["limit_usd"] is not None else "",
                f"{row['limit_tokens']} tokens" if row["limit_tokens"] is not None else "",
            ) if part)
        row["spent"] = f"${round(row['spent_usd'], 6)} / {row['spent_tokens']} tokens"
        row["reserved"] = f"${round(row['reserved_usd'], 6)}"
    _print_table(rows, ["id", "organization", "scope", "period", "limit", "spent", "reserved",
                        "is_active", "deferred_tasks", "resets_at"])
    return EXIT_OK


# -- webhooks --------------------------------------------------------------------------


def _webhook_url(text: str) -> str:
    from runner.webhooks import url_problem

    problem = url_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"the URL {problem}: {text!r}")
    return text


def _webhook_events(text: str) -> list[str]:
    from runner.webhooks import EVENT_TYPES

    known = ", ".join(EVENT_TYPES)
    events = [event.strip() for event in text.split(",") if event.strip()]
    if not events:
        raise argparse.ArgumentTypeError(f"name at least one event (comma-separated): {known}")
    unknown = [event for event in events if event not in EVENT_TYPES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown event{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"known events: {known}")
    return list(dict.fromkeys(events))


def _webhook_secret(text: str) -> str:
    from runner.webhooks import secret_problem

    problem = secret_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _endpoint_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a webhook endpoint id (a UUID, see `agent-runner webhooks list`): {text!r}"
        ) from None


def cmd_webhooks_list(args: argparse.Namespace, settings: Settings) -> int:
    from runner.settings import redact_url
    from runner.store import webhooks as hooks

    with _connect(settings) as conn:
        rows = hooks.list_endpoints(conn)
    for row in rows:
        row["url"] = redact_url(row["url"])
    if args.json:
        _print_json(rows)
        return EXIT_OK
    for row in rows:
        row["events"] = ",".join(row["events"])
    _print_table(rows, ["id", "url", "events", "is_active", "allow_private", "open_deliveries",
                        "succeeded", "failed_attempts", "last_delivered_at"])
    return EXIT_OK


def cmd_webhooks_add(args: argparse.Namespace, settings: Settings) -> int:
    from runner.settings import redact_url
    from runner.store import webhooks as hooks
    from runner.webhooks import literal_address_problem, new_secret, resolved_address_problem

    shown = redact_url(args.url)
    if not args.allow_private:
        problem = literal_address_problem(args.url)
        if problem is None:
            try:
                problem = asyncio.run(resolved_address_problem(args.url))
            except OSError as exc:
                _say(f"warning: {exc}; every delivery resolves it again, and refuses a "
                     "private or loopback address")
        if problem is not None:
            raise UsageError(
                f"refusing {shown}: {problem}. Pass --allow-private to deliver to a "
                "private or loopback address (a receiver on this host or network)")
    with _connect(settings) as conn:
        row = hooks.add_endpoint(conn, url=args.url, events=args.events,
                                 secret=args.secret or new_secret(),
                                 allow_private=args.allow_private)
    row["url"] = redact_url(row["url"])
    if args.json:
        _print_json(row)
        return EXIT_OK
    print(f"id: {row['id']}")
    print(f"secret: {row['secret']}")
    _say(f"webhook endpoint added: {', '.join(row['events'])} -> {row['url']}; verify the "
         "webhook-signature header with the secret above (Standard Webhooks)")
    return EXIT_OK


def cmd_webhooks_test(args: argparse.Namespace, settings: Settings) -> int:
    from runner.webhooks import WebhookOptions, send_test_event

    with _connect(settings) as conn:
        report = send_test_event(conn, args.endpoint_id, WebhookOptions.from_settings(settings))
    if report is None:
        raise CommandFailed(f"no webhook endpoint {args.endpoint_id}")
    result = report.result
    if result.succeeded:
        print(f"delivered: HTTP {result.response_status} (webhook-id {report.webhook_id})")
        return EXIT_OK
    raise CommandFailed(f"test delivery failed: {result.error} (webhook-id "
                        f"{report.webhook_id}; a test is not retried)")


def cmd_webhooks_deliveries(args: argparse.Namespace, settings: Settings) -> int:
    from runner.store import webhooks as hooks

    with _connect(settings) as conn:
        if args.endpoint_id and not hooks.endpoint_exists(conn, args.endpoint_id):
            raise CommandFailed(f"no webhook endpoint {args.endpoint_id}")
        rows = hooks.list_deliveries(conn, endpoint_id=args.endpoint_id, limit=args.limit)
    if args.json:
        _print_json(rows)
    else:
        _print_table(rows, ["created_at", "endpoint_id", "event_type", "webhook_id", "attempt",
                            "status", "response_status", "error"])
    return EXIT_OK


def _add_webhook_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "webhooks", help="webhook endpoints: list | add | test | deliveries",
        description="Events (task.completed, task.failed, run.completed, run.failed, "
                    "lead.critical, budget.reached) are POSTed as JSON {type, timestamp, "
                    "data} to every active endpoint subscribed to them, signed as Standard "
                    "Webhooks specifies (headers webhook-id, webhook-timestamp, "
                    "webhook-signature), and retried with backoff for at least 24 h until "
                    "the endpoint answers 2xx. Every attempt is recorded.")
    _json_flag(p)
    p.set_defaults(handler=cmd_webhooks_list)
    hooks = p.add_subparsers(dest="webhooks_command", parser_class=_Parser, metavar="ACTION")
    q = hooks.add_parser("list", help="every endpoint with its delivery figures (default)")
    _json_flag(q, inherited=True)
    q.set_defaults(handler=cmd_webhooks_list)
    q = hooks.add_parser("add", help="add an endpoint; prints its id and signing secret")
    q.add_argument("url", type=_webhook_url, help="the http(s) URL events are POSTed to")
    q.add_argument("--events", type=_webhook_events, required=True,
                   help="comma-separated events to send, e.g. task.failed,lead.critical")
    q.add_argument("--secret", type=_webhook_secret,
                   help="the signing secret: whsec_ + base64 of 24-64 bytes "
                        "(default: a new random one)")
    q.add_argument("--allow-private", action="store_true",
                   help="allow a private or loopback address (a receiver on this host or "
                        "network); refused otherwise")
    _json_flag(q, inherited=True)
    q.set_defaults(handler=cmd_webhooks_add)
    q = hooks.add_parser("test", help="send a signed webhook.test event to an endpoint now "
                                      "and print the answer (exit 1 unless 2xx)")
    q.add_argument("endpoint_id", type=_endpoint_id, help="the endpoint's id")
    q.set_defaults(handler=cmd_webhooks_test)
    q = hooks.add_parser("deliveries", help="the latest delivery attempts, newest first")
    q.add_argument("endpoint_id", type=_endpoint_id, nargs="?",
                   help="only this endpoint's attempts")
    q.add_argument("--limit", type=_positive_int, default=50,
                   help="how many attempts to show (default 50)")
    _json_flag(q, inherited=True)
    q.set_defaults(handler=cmd_webhooks_deliveries)


# -- commands from agent packages ------------------------------------------------------


def _add_agent_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """One subcommand per entry point of ``agent_runner.commands`` (``demo`` and
    ``import-companies`` come from this project's agents), after the engine's own, in
    name order. One that cannot be loaded, or would shadow a command, is reported on
    stderr and left out: the other commands must keep working."""
    for entry in sorted(importlib.metadata.entry_points(group=COMMANDS_GROUP),
                        key=lambda e: e.name):
        try:
            if entry.name in sub.choices:
                raise TypeError(f"{entry.name!r} is already a command")
            command = entry.load()
            if not isinstance(command, AgentCommand):
                raise TypeError(f"{entry.value} is not a runner.api.AgentCommand")
        except Exception as exc:  # a broken plugin must not break every other command
            _say(f"warning: command {entry.name} ({entry.value}) not loaded: {exc}")
            continue
        p = sub.add_parser(entry.name, help=command.help, description=command.description)
        command.add_arguments(p)
        p.set_defaults(handler=functools.partial(_run_agent_command, command))


def _run_agent_command(command: AgentCommand, args: argparse.Namespace,
                       settings: Settings) -> int:
    return command.run(args, _CommandHost(settings))


class _CommandHost:
    """runner.api.CommandHost: what an agent package's command may use of the engine."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def say(self, message: str) -> None:
        _say(message)

    def configure_logging(self, *, at_least: str | None = None) -> None:
        level: str = self._settings.log_level
        if at_least is not None:
            level = max(level, at_least, key=logging.getLevelName)
        _configure_logging(self._settings, level)

    def database_url(self) -> str:
        return database_url(self._settings)

    def connect(self) -> psycopg.Connection[Any]:
        return _connect(self._settings)

    @contextlib.contextmanager
    def database_for_daemon(self, say: Callable[[str], None]) -> Iterator[DaemonDatabase]:
        with _database_for_daemon(self._settings, say) as url:
            yield DaemonDatabase(url=url, embedded=self._settings.database_url is None)

    def migrate(self, conninfo: str) -> list[str]:
        return migrate(conninfo)

    @contextlib.asynccontextmanager
    async def run_daemon(
        self,
        conninfo: str,
        *,
        offline: bool,
        concurrency: int | None = None,
        max_shutdown_grace: float | None = None,
    ) -> AsyncIterator[_InProcessDaemon]:
        from runner.daemon import Daemon

        # Port 0: the OS picks a free port, so a daemon already running here (or a
        # second demo) never collides with this one.
        update: dict[str, Any] = {"metrics_addr": "127.0.0.1:0"}
        if concurrency is not None:
            update["concurrency"] = concurrency
        if max_shutdown_grace is not None:
            update["shutdown_grace"] = min(self._settings.shutdown_grace, max_shutdown_grace)
        if offline:
            update.update(anthropic_api_key=None, companies_house_api_key=None)
        daemon = Daemon(self._settings.model_copy(update=update), conninfo)
        running = _InProcessDaemon(daemon)
        try:
            yield running
        finally:
            if running.running:
                running.request_stop()
            await running.stopped()

    def print_json(self, document: Any) -> None:
        _print_json(document)

    def print_table(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
        _print_table(rows, columns)


class _InProcessDaemon:
    """runner.api.InProcessDaemon: a :class:`runner.daemon.Daemon` run as a task of the
    current event loop, without signal handlers (its command decides about signals)."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self._task: asyncio.Task[int] = asyncio.create_task(
            daemon.run(install_signal_handlers=False), name="in-process-daemon")

    @property
    def running(self) -> bool:
        return not self._task.done()

    def request_stop(self) -> None:
        self._daemon.request_stop()

    async def wait(self) -> int:
        return await self._task

    async def stopped(self) -> None:
        """Wait for the end without raising what it ended with (``wait`` does)."""
        await asyncio.wait({self._task})


# -- output ----------------------------------------------------------------------------


def _print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("  (none)")
        return
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(r[i]) for r in cells)) for i, column in enumerate(columns)]
    print("  " + "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row_cells in cells:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row_cells, widths, strict=True)))


def _readable(value: Any) -> str:
    """One value of a ``show``, as a person reads it: ids bare, lists comma-separated,
    objects as JSON, nothing as ``-``."""
    if value is None or value == "":
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(_readable(item) for item in value) if value else "-"
    if isinstance(value, dict):
        return json.dumps(value, default=_json_value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- parser ----------------------------------------------------------------------------


# Shared with the commands agent packages add (runner.api).
_json_flag = add_json_flag
_positive_int = positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="agent-runner", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply sql/ migrations (idempotent)")
    p.set_defaults(handler=cmd_migrate)

    p = sub.add_parser("run", help="the daemon: workers + scheduler + metrics, until SIGTERM")
    _daemon_flags(p)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("status", help="live daemons, task counts, recent tasks")
    _json_flag(p)
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("enqueue", help="enqueue a task; prints its id")
    p.add_argument("agent", help="agent name or id")
    p.add_argument("--payload", type=_json_object, default={},
                   help="a JSON object; @FILE reads it from a file, - from standard input. "
                        "Naming a stream the agent is assigned to ({\"stream_id\": ...}) "
                        "starts a run of the stream's workflow: the agents after it follow")
    p.add_argument("--priority", type=_priority, default=5, help="1-10, higher runs first")
    p.add_argument("--at", type=_timestamp, default=None, help="ISO 8601 time to run at")
    p.set_defaults(handler=cmd_enqueue)

    p = sub.add_parser("tasks", help="list tasks, newest first")
    p.add_argument("--status", choices=["pending", "processing", "completed", "failed",
                                        "cancelled"])
    p.add_argument("--agent", help="agent name or id")
    p.add_argument("--limit", type=_positive_int, default=50)
    _json_flag(p)
    p.set_defaults(handler=cmd_tasks)

    p = sub.add_parser("show", help="one task with its executions, logs and workflow run")
    p.add_argument("task_id", type=_uuid)
    p.add_argument("--transcript", action="store_true",
                   help="also the model turns and tool results of every attempt "
                        "(llm_transcript)")
    _json_flag(p)
    p.set_defaults(handler=cmd_show)

    for name, handler, text in (("retry", cmd_retry, "re-queue a failed or cancelled task"),
                                ("cancel", cmd_cancel, "cancel a pending or running task")):
        p = sub.add_parser(name, help=text)
        p.add_argument("task_id", type=_uuid)
        p.set_defaults(handler=handler)

    p = sub.add_parser("logs", help="task logs; --follow streams new lines")
    p.add_argument("task_id", type=_uuid, nargs="?", help="only this task's lines")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing new lines as they are written, until Ctrl-C")
    p.add_argument("--limit", type=_positive_int, default=200,
                   help="how many of the latest existing lines to print first (default 200)")
    p.set_defaults(handler=cmd_logs)

    p = sub.add_parser("agents", help="agent definitions: list | show | enable | disable")
    _json_flag(p)
    p.set_defaults(handler=cmd_agents_list)
    agents = p.add_subparsers(dest="agents_command", parser_class=_Parser, metavar="ACTION")
    q = agents.add_parser("list", help="every agent with its performance figures (default)")
    _json_flag(q, inherited=True)
    q.set_defaults(handler=cmd_agents_list)
    q = agents.add_parser("show", help="one agent: definition, figures, streams, tasks")
    q.add_argument("name", help="agent name or id")
    _json_flag(q, inherited=True)
    q.set_defaults(handler=cmd_agents_show)
    for action, handler, text in (
            ("enable", cmd_agents_enable, "allow enqueueing and scheduling"),
            ("disable", cmd_agents_disable, "refuse new tasks and stop its schedule")):
        q = agents.add_parser(action, help=text)
        q.add_argument("name", help="agent name or id")
        q.set_defaults(handler=handler)
    q = agents.add_parser("create", help="create an agent; prints its id")
    q.add_argument("name", help="the agent's name")
    q.add_argument("--type", dest="agent_type", required=True, metavar="TYPE",
                   help="its agent_type: opportunity_bot, enrichment_agent, scoring_agent, "
                        "llm_agent, noop, or one a plugin adds")
    q.add_argument("--config", type=_json_option("--config"), default=None,
                   help="its configuration, a JSON object; @FILE reads it from a file, - from "
                        "standard input")
    q.add_argument("--cron", type=_cron_expression, default=None,
                   help="a schedule: a task at every fire, e.g. '0 9 * * *'")
    q.add_argument("--tz", type=_time_zone, default=None,
                   help="the schedule's time zone (default UTC)")
    q.add_argument("--model", default=None, help="the model (llm_agent)")
    q.add_argument("--instructions", default=None, help="the system prompt (llm_agent)")
    q.add_argument("--tools", type=_tool_names, default=None, metavar="A,B",
                   help="the tools it may call, comma-separated (llm_agent)")
    q.add_argument("--max-steps", type=_max_steps, default=None, metavar="N",
                   help="model calls per task, 1-1000 (llm_agent)")
    q.set_defaults(handler=cmd_agents_create)

    p = sub.add_parser("schedules", help="cron schedules with their next fire time")
    _json_flag(p)
    p.set_defaults(handler=cmd_schedules)
    schedules = p.add_subparsers(dest="schedules_command", parser_class=_Parser,
                                 metavar="ACTION")
    q = schedules.add_parser("list", help="agents with a schedule (default)")
    _json_flag(q, inherited=True)
    q.set_defaults(handler=cmd_schedules)

    _add_stream_commands(sub)

    p = sub.add_parser("pause", help="stop claiming on every daemon (in-flight work finishes)")
    p.set_defaults(handler=cmd_pause)
    p = sub.add_parser("resume", help="restart claiming on every daemon")
    p.set_defaults(handler=cmd_resume)

    p = sub.add_parser("prune", help="delete finished history past retention "
                                     "(RUNNER_*RETENTION_DAYS)")
    p.add_argument("--dry-run", action="store_true",
                   help="report what would be removed, remove nothing")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="delete tasks on this many connections at once, to catch up on a "
                        "large backlog (each keeps a database CPU busy; default 1)")
    _json_flag(p)
    p.set_defaults(handler=cmd_prune)

    p = sub.add_parser("budgets", help="LLM budgets (llm_budgets) with their spend in the "
                                       "current UTC period")
    _json_flag(p)
    p.set_defaults(handler=cmd_budgets)

    _add_webhook_commands(sub)
    _add_agent_commands(sub)
    return parser


def _daemon_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", dest="RUNNER_CONCURRENCY")
    p.add_argument("--poll-interval", dest="RUNNER_POLL_INTERVAL")
    p.add_argument("--shutdown-grace", dest="RUNNER_SHUTDOWN_GRACE")
    p.add_argument("--metrics-addr", dest="RUNNER_METRICS_ADDR")
    p.add_argument("--log-format", dest="RUNNER_LOG_FORMAT")
    p.add_argument("--data-dir", dest="RUNNER_DATA_DIR",
                   help="where the embedded Postgres keeps its data (no DATABASE_URL)")


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a task id (UUID): {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k.isupper() and v is not None}
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    # Every message below may quote a secret (libpq quotes a DATABASE_URL it cannot
    # parse; an API error its key): redacted, with what the settings hold once loaded.
    redact = Redactor()
    try:
        settings = load_settings(**overrides)
        redact = Redactor.from_settings(settings)
        return handler(args, settings)
    except SettingsError as exc:
        print(redact(f"agent-runner: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(redact(f"agent-runner: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    except (CommandFailed, SchemaError, DatabaseUnreachable) as exc:
        print(redact(f"agent-runner: {exc}"), file=sys.stderr)
        return EXIT_FAILED
    except psycopg.Error as exc:
        detail = exc.diag.message_primary if exc.diag and exc.diag.message_primary else str(exc)
        print(redact(f"agent-runner: database error: {detail}".strip()), file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("agent-runner: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # `agent-runner logs | head`: the reader left, which is not a failure. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception:
        # A bug: the traceback as Python would print it, and the same exit code, but
        # redacted like everything else.
        print(redact(traceback.format_exc()), file=sys.stderr, end="")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
