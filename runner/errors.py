"""Every error the engine raises on purpose, under one root, :class:`RunnerError`.

Callers catch by type, never by message. The tree::

    RunnerError
    ├── AgentOutcomeError        an agent's own verdict on its attempt (runner.api)
    │   ├── RetryLater           transient: retry with backoff while retries remain
    │   ├── FailPermanently      cannot succeed as it is: fail now, keep the retries
    │   ├── DeferUntil           not now: pending again at a given time, no retry spent
    │   └── CancelTask           end the task as cancelled
    ├── AgentResolutionError     the attempt cannot start its agent: fails permanently
    │   ├── UnknownAgentType     no installed plugin provides the task's agent_type
    │   └── InvalidPayload       the payload fails the agent's input model
    ├── Fenced                   the attempt no longer owns its task: write nothing
    ├── ConfigurationError       a setting or a cron expression is wrong
    │   ├── SettingsError        a RUNNER_* / DATABASE_URL value (names the variable)
    │   └── CronError            a schedule_cron expression or time zone
    ├── SchemaError              the database's schema does not fit this build
    │   ├── SchemaBehind         migrations this build needs are not applied
    │   └── MigrationChanged     a landed migration was edited after it was applied
    ├── DatabaseUnreachable      away longer than RUNNER_DB_OUTAGE_LIMIT: the daemon exits
    ├── Unhealthy                a health check's verdict: /healthz answers 503 with its code
    ├── EmbeddedPostgresError    the embedded server could not start or stop
    └── CommandError             an admin command ends with a message (runner.cli)
        ├── CommandFailed        exit 1
        └── UsageError           exit 2

Some of them also derive from the built-in an older caller may catch (``ValueError``
for the two input errors, ``LookupError`` for an unknown type, ``RuntimeError`` for the
embedded server); the root is what new code catches.
"""

from __future__ import annotations

import datetime as dt
import re


class RunnerError(Exception):
    """The root of agent-runner's own errors."""


# -- raised by agents -------------------------------------------------------------------


class AgentOutcomeError(RunnerError):
    """Base of the closed set of outcomes an agent may raise."""


class RetryLater(AgentOutcomeError):
    """A transient failure: the attempt fails and the task is retried with backoff
    (or after ``delay`` seconds when given), while retries remain."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class FailPermanently(AgentOutcomeError):
    """The task can never succeed as it is (bad input, 4xx from an API): fail now,
    without spending the remaining retries."""


class DeferUntil(AgentOutcomeError):
    """Not now, and not the agent's fault: the task goes back to ``pending``, due at
    ``at`` (UTC), without spending a retry (an LLM budget reached: its next period)."""

    def __init__(self, message: str, *, at: dt.datetime) -> None:
        super().__init__(message)
        if at.tzinfo is None:
            raise ValueError("DeferUntil needs an aware datetime")
        self.at = at


class CancelTask(AgentOutcomeError):
    """The agent decided the task should end as ``cancelled``."""


# -- raised while starting an attempt ---------------------------------------------------


class AgentResolutionError(RunnerError):
    """The attempt cannot run its agent; retrying will not change that."""


class UnknownAgentType(AgentResolutionError, LookupError):
    """No installed plugin provides this ``agent_type``."""


class InvalidPayload(AgentResolutionError, ValueError):
    """The task's payload fails the agent's ``Input`` model; the message names the fields."""


class Fenced(RunnerError):
    """The attempt no longer owns its task (rescued, or finished by someone else)."""


# -- configuration and schema -----------------------------------------------------------


class ConfigurationError(RunnerError):
    """Something the operator configured is wrong; the message says what and where."""


class SettingsError(ConfigurationError):
    """A setting has a bad value; the message names the variable."""


class CronError(ConfigurationError, ValueError):
    """An invalid cron expression or time zone; ``detail`` is worded exactly as the
    database words it (``runner_cron_problem``)."""

    def __init__(self, expr: str, detail: str) -> None:
        super().__init__(f'invalid cron expression "{expr}": {detail}')
        self.expr = expr
        self.detail = detail


class SchemaError(RunnerError):
    """The database's schema does not fit this build."""


class SchemaBehind(SchemaError):
    """The database lacks migrations this build needs."""


class MigrationChanged(SchemaError):
    """A migration file differs from the one applied under its number."""


class DatabaseUnreachable(RunnerError):
    """The database stayed unreachable longer than ``RUNNER_DB_OUTAGE_LIMIT``."""


class Unhealthy(RunnerError):
    """A health check failed. ``code`` is a short stable token (``heartbeat``) that
    ``/healthz`` may show anyone who can reach the port; the message is the detail,
    which goes to the log only (it can name hosts, users and database errors)."""

    def __init__(self, code: str, detail: str) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", code):
            raise ValueError(f"a health code is a short lower-case token, got {code!r}")
        super().__init__(detail)
        self.code = code


class EmbeddedPostgresError(RunnerError, RuntimeError):
    """The embedded PostgreSQL could not be started, joined or stopped."""


# -- the admin CLI ----------------------------------------------------------------------


class CommandError(RunnerError):
    """An admin command ends with this message on stderr."""


class CommandFailed(CommandError):
    """The operation failed: exit code 1."""


class UsageError(CommandError):
    """Bad arguments or a missing setting: exit code 2."""
