"""``agent-runner``: the admin CLI. Exit codes: 0 success, 1 operation failed, 2 usage.

Every flag can also be set by its environment variable (CONTRACT.md); flags win.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import psycopg

from runner import admin
from runner.migrate import SchemaBehind, check_schema_current, migrate
from runner.registry import InvalidPayload, UnknownAgentType, default_registry
from runner.settings import Settings, SettingsError, load_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandFailed(Exception):
    """An operation failed; the message goes to stderr and the exit code is 1."""


class UsageError(Exception):
    """Bad arguments; exit code 2."""


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


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--payload is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--payload must be a JSON object")
    return value


def _timestamp(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--at must be ISO 8601, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _print_json(document: Any) -> None:
    json.dump(document, sys.stdout, default=str, indent=2)
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
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise CommandFailed(f"cannot connect to the database: {exc}".strip()) from None


# -- commands --------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    applied = migrate(database_url(settings))
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print("schema is up to date")
    return EXIT_OK


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from runner import logs
    from runner.daemon import Daemon

    logs.configure(settings.log_format, settings.log_level)
    url = database_url(settings)
    try:
        check_schema_current(url)
    except SchemaBehind as exc:
        raise CommandFailed(str(exc)) from None
    return asyncio.run(Daemon(settings, url).run())


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        agent = admin.find_agent(conn, args.agent)
        if agent is None:
            raise CommandFailed(f"unknown agent: {args.agent}")
        try:
            default_registry().validate(agent["agent_type"], args.payload)
        except (InvalidPayload, UnknownAgentType) as exc:
            raise CommandFailed(str(exc)) from None
        task_id = admin.enqueue(conn, str(agent["id"]), args.payload, args.priority, args.at)
    print(task_id)
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
    if document is None:
        raise CommandFailed(f"no task {args.task_id}")
    if args.json:
        _print_json(document)
    else:
        task = document["task"]
        for key, value in task.items():
            print(f"{key:>22}: {value}")
        print("\nexecutions:")
        _print_table(document["executions"],
                     ["attempt", "status", "started_at", "duration_ms", "error_message"])
        print("\nlogs:")
        _print_table(document["logs"], ["created_at", "log_type", "message"])
    return EXIT_OK


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    with _connect(settings) as conn:
        document = admin.status(conn)
    if args.json:
        _print_json(document)
    else:
        print(f"claiming: {'paused' if document['paused'] else 'running'}")
        print("\ndaemons:")
        _print_table(document["daemons"],
                     ["host", "pid", "concurrency", "in_flight", "poll_interval_seconds",
                      "last_heartbeat"])
        print("\ntasks:")
        print("  " + "  ".join(f"{k}={v}" for k, v in document["stats"].items()))
        print("\nrecent tasks:")
        _print_table(document["recent_tasks"], ["id", "agent_name", "status", "created_at"])
    return EXIT_OK


def _print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("  (none)")
        return
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(r[i]) for r in cells)) for i, column in enumerate(columns)]
    print("  " + "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row_cells in cells:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row_cells, widths, strict=True)))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="agent-runner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("migrate", help="apply sql/ migrations (idempotent)")
    p.set_defaults(handler=cmd_migrate)

    p = sub.add_parser("run", help="the daemon: workers + scheduler + metrics, until SIGTERM")
    p.add_argument("--concurrency", dest="RUNNER_CONCURRENCY")
    p.add_argument("--poll-interval", dest="RUNNER_POLL_INTERVAL")
    p.add_argument("--shutdown-grace", dest="RUNNER_SHUTDOWN_GRACE")
    p.add_argument("--metrics-addr", dest="RUNNER_METRICS_ADDR")
    p.add_argument("--log-format", dest="RUNNER_LOG_FORMAT")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("enqueue", help="enqueue a task; prints its id")
    p.add_argument("agent", help="agent name or id")
    p.add_argument("--payload", type=_json_object, default={})
    p.add_argument("--priority", type=_priority, default=5)
    p.add_argument("--at", type=_timestamp, default=None, help="ISO 8601 time to run at")
    p.set_defaults(handler=cmd_enqueue)

    p = sub.add_parser("tasks", help="list tasks")
    p.add_argument("--status", choices=["pending", "processing", "completed", "failed",
                                        "cancelled"])
    p.add_argument("--agent")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_tasks)

    p = sub.add_parser("show", help="one task with its executions and logs")
    p.add_argument("task_id", type=_uuid)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("status", help="live daemons, task counts, recent tasks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)

    for name, handler, text in (("retry", cmd_retry, "re-queue a failed or cancelled task"),
                                ("cancel", cmd_cancel, "cancel a pending or running task")):
        p = sub.add_parser(name, help=text)
        p.add_argument("task_id", type=_uuid)
        p.set_defaults(handler=handler)
    return parser


def _uuid(text: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a task id (UUID): {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k.isupper() and v is not None}
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        settings = load_settings(**overrides)
        return handler(args, settings)
    except SettingsError as exc:
        print(f"agent-runner: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"agent-runner: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as exc:
        print(f"agent-runner: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except psycopg.Error as exc:
        detail = exc.diag.message_primary if exc.diag and exc.diag.message_primary else str(exc)
        print(f"agent-runner: database error: {detail}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
