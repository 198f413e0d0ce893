"""The runner's public face for agents: everything an agent may import from ``runner``.

An agent is a class with an ``agent_type``, a pydantic ``Input`` model and an async
``run(ctx, payload)`` that returns an :class:`AgentResult` or raises one of the
outcome errors below (:class:`DeferUntil`: not now, no retry spent). The executor
(``runner.executor``) maps outcomes to task states; nothing else does.

Two rules keep an agent exactly-once:

* Read what you need through ``ctx.connection()`` in short blocks; never hold a
  connection across an LLM or HTTP call.
* Do not write business rows while running. Return them as ``AgentResult.commit``:
  the executor calls it inside the fenced transaction that completes the task, so the
  writes commit together with the task's status, or not at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from decimal import Decimal
from typing import Any, ClassVar, Protocol, TypeVar
from uuid import UUID

import httpx
import psycopg
from pydantic import BaseModel, SecretStr, ValidationError

from runner.addresses import (
    AddressProblem,
    Resolver,
    checked_addresses,
    non_public_reason,
    resolve_host,
)
from runner.errors import (
    AgentOutcomeError,
    CancelTask,
    CommandFailed,
    DeferUntil,
    FailPermanently,
    RetryLater,
    UsageError,
)

__all__ = [
    "COMMANDS_GROUP",
    "AddressProblem",
    "Agent",
    "AgentCommand",
    "AgentContext",
    "AgentDefinition",
    "AgentOutcomeError",
    "AgentResult",
    "AgentSettings",
    "CancelTask",
    "CommandFailed",
    "CommandHost",
    "CommitHook",
    "DaemonDatabase",
    "DeferUntil",
    "FailPermanently",
    "InProcessDaemon",
    "JournaledModelTurn",
    "JournaledToolResult",
    "LLMCallEstimate",
    "LLMCallRecord",
    "LLMReservation",
    "Resolver",
    "RetryLater",
    "UsageError",
    "add_json_flag",
    "agent_configuration",
    "backoff_delay",
    "checked_addresses",
    "describe_validation_error",
    "non_public_reason",
    "positive_int",
    "resolve_host",
]

#: Runs inside the transaction that completes the task. It may return figures it could
#: only compute while writing (counts of rows it updated, say): they are merged into the
#: attempt's output before the output is stored.
CommitHook = Callable[[psycopg.AsyncConnection[Any]], Awaitable[Mapping[str, Any] | None]]


@dataclasses.dataclass(frozen=True, slots=True)
class AgentDefinition:
    """An ``ai_agents`` row, as the agent sees it."""

    id: UUID
    org_id: UUID
    name: str
    agent_type: str
    configuration: Mapping[str, Any]
    model: str
    instructions_prompt: str
    tool_names: tuple[str, ...]
    max_agent_steps: int
    max_retries: int
    timeout_seconds: int


@dataclasses.dataclass(frozen=True, slots=True)
class AgentSettings:
    """The part of the daemon's settings an agent may read: the outside services'
    keys and addresses. Never ``DATABASE_URL`` (an agent reaches the database through
    ``ctx.connection()`` only) nor the daemon's own tuning."""

    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    companies_house_api_key: SecretStr | None = None
    companies_house_base_url: str = "https://api.company-information.service.gov.uk"


@dataclasses.dataclass(frozen=True, slots=True)
class LLMCallRecord:
    """One model call, as it goes into the cost ledger (``llm_calls``)."""

    model: str
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: Decimal
    price_version: str
    stop_reason: str | None = None
    duration_ms: int | None = None
    request_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class JournaledModelTurn:
    """One model response, as the journal keeps it (``llm_journal``; the transcript).

    ``step`` numbers the attempt's model calls from 1 (:meth:`AgentContext.next_llm_step`);
    ``fingerprint`` identifies the request (a later attempt replays the turn only for
    the same request at the same step); ``response`` is the API's message as JSON, what a
    replay hands back instead of calling the model.
    """

    step: int
    fingerprint: str
    model: str
    response: Mapping[str, Any]
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    duration_ms: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class JournaledToolResult:
    """One tool result of a tool loop, as the journal keeps it: ``step`` is the model
    turn that asked for it, ``tool_use_id`` the ``tool_use`` block answered. ``effects``
    (JSON) is what the tool buffered for the finishing transaction, so that a replay
    restores it instead of running the tool again."""

    step: int
    tool_use_id: str
    fingerprint: str
    tool_name: str
    tool_input: Any
    output: str
    is_error: bool = False
    effects: Any = None
    duration_ms: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class LLMCallEstimate:
    """What one model call may cost at most, before it is made: its input estimate and
    its ``max_tokens`` (priced by the agent, which owns the price table)."""

    model: str
    input_tokens: int
    max_output_tokens: int
    cost_usd: Decimal

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.max_output_tokens


@dataclasses.dataclass(frozen=True, slots=True)
class LLMReservation:
    """A call's estimate held against the budgets until its ledger row is written
    (:meth:`AgentContext.record_llm_call` with ``settles``, or
    :meth:`AgentContext.settle_llm_call`) or the attempt ends."""

    id: int
    estimate: LLMCallEstimate


@dataclasses.dataclass(slots=True)
class AgentResult:
    """What a successful run hands back to the executor.

    ``output`` becomes ``agent_executions.output_data`` and is what dependents see.
    ``commit`` (optional) writes the run's business rows inside the finishing
    transaction; a mapping it returns is merged into ``output``. ``summary`` goes to
    ``agent_executions.results_summary``.
    """

    output: dict[str, Any]
    commit: CommitHook | None = None
    summary: dict[str, Any] | None = None


class AgentContext(Protocol):
    """What the executor gives an agent for one attempt."""

    task_id: UUID
    execution_id: UUID
    #: This task's executions so far, this one included (a manual retry continues it).
    attempt: int
    agent: AgentDefinition
    settings: AgentSettings
    #: A shared client for outbound HTTP (timeouts set); agents may also build their own.
    http: httpx.AsyncClient
    #: Outputs of the parent tasks in the same workflow run, keyed by agent name.
    parent_outputs: Mapping[str, Mapping[str, Any]]
    #: The workflow run this attempt is a step of (``None``: a task on its own).
    workflow_run_id: UUID | None

    def connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """A pooled connection for short reads. Release it before any slow call."""
        ...

    async def log(self, message: str, *, level: str = "info", **metadata: Any) -> None:
        """Append a line to ``agent_task_logs`` for this task (committed at once)."""
        ...

    async def record_llm_call(
        self, call: LLMCallRecord, *, settles: LLMReservation | None = None
    ) -> None:
        """Write one ledger row now (cost is real even if the attempt later fails)
        and add its usage to this execution's ``metrics``. ``settles``: the call's
        reservation, ended in the same statement, so the call never counts twice
        against a budget (its estimate and its cost) while another call is checked."""
        ...

    def add_metrics(self, **values: float) -> None:
        """Add numeric figures to this execution's ``metrics`` (summed per key)."""
        ...

    # Durable turns (``llm_journal``): each written at once, in its own transaction.

    def next_llm_step(self) -> int:
        """The step number of this attempt's next model call: 1, 2, 3 ..."""
        ...

    async def journal_lookup(
        self, step: int, fingerprint: str, *, tool_use_id: str | None = None
    ) -> Mapping[str, Any] | None:
        """What an earlier attempt of this task recorded for this turn with this exact
        request: a model turn's ``response``, or (``tool_use_id`` given) a tool result's
        ``{"output", "is_error", "effects"}``. None: make the call live."""
        ...

    async def journal_model_turn(self, turn: JournaledModelTurn, *, replayed: bool) -> None:
        """Journal a model response of this attempt. ``replayed``: it came from the
        journal, cost nothing and is counted as replayed (no ledger row)."""
        ...

    async def journal_tool_result(self, result: JournaledToolResult, *, replayed: bool) -> None:
        """Journal a tool result of this attempt (``replayed``: the tool did not run)."""
        ...

    def observe_http_call(self, service: str, outcome: str) -> None:
        """Count an external HTTP call for Prometheus (``service``, ``outcome`` bounded)."""
        ...

    # LLM governance (CONTRACT.md "LLM budgets and limits"). A model call goes:
    # reserve_llm_call -> wait_for_llm_capacity -> send -> learn_llm_limits (every
    # response, a 429's too, with what the call did not use) / llm_rate_limited (a 429)
    # -> record_llm_call (settling the reservation). agents.llm.LLMSession does this
    # for every call.

    async def reserve_llm_call(self, estimate: LLMCallEstimate) -> LLMReservation:
        """Hold ``estimate`` against every active budget of this agent and organization
        and against the agent's ``max_cost_usd`` for this task, in one short locked
        transaction shared by every daemon. Raises :class:`DeferUntil` (``budget
        reached: ...``, due at the budget's next UTC period) or :class:`FailPermanently`
        (``cost cap reached: ...``) when the call must not be made."""
        ...

    async def settle_llm_call(self, reservation: LLMReservation) -> None:
        """End a reservation: its call's ledger row is written, or the call failed.
        (Reservations left open end with the attempt, or expire.)"""
        ...

    async def wait_for_llm_capacity(
        self, model: str, input_tokens: int, max_tokens: int
    ) -> float:
        """Wait until the shared per-model limiter (requests, input and output tokens
        per minute, and any 429 pause) has room for this call, and take it. Returns the
        seconds waited; cancellable."""
        ...

    async def llm_rate_limited(self, model: str, retry_after: float | None) -> None:
        """A 429 arrived: pause ``model`` for every daemon for ``retry_after`` seconds."""
        ...

    async def learn_llm_limits(
        self, model: str, headers: Mapping[str, str], *, age_seconds: float = 0.0,
        unused_input_tokens: int = 0, unused_output_tokens: int = 0,
    ) -> None:
        """Learn the model's limits and remaining capacity from a response's
        ``anthropic-ratelimit-*`` headers (limits set in the settings win);
        ``age_seconds``: since the request was sent (when the API counted
        ``remaining``). ``unused_*``: what :meth:`wait_for_llm_capacity` took for the
        call beyond the usage the API reported, given back to the shared buckets."""
        ...


def backoff_delay(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff with +-25 % jitter, capped: about base, 2*base, 4*base ...
    at most ``cap`` seconds; ``attempt`` counts from 1.

    The jitter band is narrow enough that consecutive delays still grow (1.25 < 1.5),
    and wide enough to spread a burst of failures apart. The runner's task retries, the
    LLM layer and the Companies House client all back off with this.
    """
    exponent = min(max(attempt - 1, 0), 30)
    jittered: float = base * (2**exponent) * random.uniform(0.75, 1.25)
    return min(cap, jittered)


def describe_validation_error(
    exc: ValidationError, *, root: str = "value", prefix: str = "", limit: int | None = None
) -> str:
    """One line naming each field pydantic refused: ``a.b: message; c: message``.

    ``prefix`` goes in front of every field path (``goal_criteria.industry``); ``root``
    names an error on the whole value; ``limit`` keeps the first few errors only.
    """
    parts = []
    for error in exc.errors()[:limit]:
        field = ".".join(str(part) for part in error["loc"])
        name = f"{prefix}.{field}" if prefix and field else (prefix or field or root)
        parts.append(f"{name}: {error['msg']}")
    return "; ".join(parts)


ConfigurationT = TypeVar("ConfigurationT", bound=BaseModel)


def agent_configuration(agent: AgentDefinition, model: type[ConfigurationT]) -> ConfigurationT:
    """The agent row's ``configuration`` as ``model``, or :class:`FailPermanently`
    naming the bad fields (a configuration error will not fix itself on retry)."""
    try:
        return model.model_validate(dict(agent.configuration))
    except ValidationError as exc:
        problems = describe_validation_error(exc, root="configuration")
        raise FailPermanently(
            f"invalid configuration for agent {agent.name!r}: {problems}"
        ) from None


class Agent(Protocol):
    """An agent implementation. One instance per daemon; ``run`` must be re-entrant."""

    agent_type: ClassVar[str]
    Input: ClassVar[type[BaseModel]]

    async def run(self, ctx: AgentContext, payload: Any) -> AgentResult: ...


# -- commands an agent package adds to the CLI ------------------------------------------
#
# Like agent types, `agent-runner` commands may come from an agent package: the CLI adds
# one subcommand per entry point of the group ``agent_runner.commands`` (name = the
# command, value = an :class:`AgentCommand`), after its own commands. It hands the
# command a :class:`CommandHost`: the few engine services such a command needs
# (database, an in-process daemon, the CLI's output), so that agents still import
# nothing from the runner but this module.

#: The entry-point group of agent-contributed CLI commands.
COMMANDS_GROUP = "agent_runner.commands"


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts and limits: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_json_flag(parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    """The ``--json`` flag every read command takes."""
    # On a nested command (`agents list --json`) the default is SUPPRESS, so that the
    # parent's `agents --json` is not overwritten by the child's default.
    parser.add_argument("--json", action="store_true",
                        default=argparse.SUPPRESS if inherited else False,
                        help="print one JSON document on stdout")


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """An :class:`AgentCommand` that takes no arguments."""


@dataclasses.dataclass(frozen=True, slots=True)
class AgentCommand:
    """One `agent-runner` subcommand, registered under its name in
    :data:`COMMANDS_GROUP`.

    ``add_arguments`` adds its arguments to the subcommand's parser. An argument whose
    ``dest`` is the upper-case name of a setting (``RUNNER_DATA_DIR``) overrides that
    setting, as every flag of the CLI does. ``run`` returns the exit code (0 success);
    it raises :class:`CommandFailed` (exit 1) or :class:`UsageError` (exit 2) with the
    message for stderr.
    """

    help: str
    run: Callable[[argparse.Namespace, CommandHost], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    description: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class DaemonDatabase:
    """The database a daemon works on: ``DATABASE_URL``'s, or the embedded one."""

    url: str
    #: The embedded Postgres under ``RUNNER_DATA_DIR`` (its URI holds no secret: a
    #: local socket, trust auth); False for the user's ``DATABASE_URL``, which may hold
    #: a password and must never be echoed.
    embedded: bool


class InProcessDaemon(Protocol):
    """A daemon :meth:`CommandHost.run_daemon` started in this process."""

    @property
    def running(self) -> bool:
        """False once the daemon stopped, whether asked to or not."""
        ...

    def request_stop(self) -> None:
        """Stop claiming, let in-flight work finish within the grace period, hand
        back the rest (like a first SIGTERM)."""
        ...

    async def wait(self) -> int:
        """Wait until it stopped; its exit code (0 when it stopped because asked to)."""
        ...


class CommandHost(Protocol):
    """What the CLI offers an :class:`AgentCommand` (runner.cli implements it)."""

    def say(self, message: str) -> None:
        """A progress line for the operator, on stderr (stdout is the command's output)."""
        ...

    def configure_logging(self, *, at_least: str | None = None) -> None:
        """Set up logging as configured (``RUNNER_LOG_FORMAT``, ``RUNNER_LOG_LEVEL``),
        no more verbose than ``at_least`` (a level name) when given."""
        ...

    def database_url(self) -> str:
        """``DATABASE_URL``; :class:`UsageError` when it is not set."""
        ...

    def connect(self) -> psycopg.Connection[Any]:
        """An autocommit connection to ``DATABASE_URL`` whose schema is current;
        :class:`CommandFailed` with a clear message otherwise."""
        ...

    def database_for_daemon(
        self, say: Callable[[str], None]
    ) -> AbstractContextManager[DaemonDatabase]:
        """``DATABASE_URL`` (as it is), or the embedded Postgres under
        ``RUNNER_DATA_DIR``: started or joined, migrated, and stopped on the way out if
        this process started it. ``say`` tells the operator which."""
        ...

    def migrate(self, conninfo: str) -> list[str]:
        """Apply the migrations this build has (``agent-runner migrate``); returns their
        names."""
        ...

    def run_daemon(
        self,
        conninfo: str,
        *,
        offline: bool,
        concurrency: int | None = None,
        max_shutdown_grace: float | None = None,
    ) -> AbstractAsyncContextManager[InProcessDaemon]:
        """Run a daemon in this event loop while the context is open (it is stopped
        and awaited on the way out), with this process's settings but: its metrics on
        a port the OS picks (no clash with a daemon already running here);
        ``concurrency`` and a shutdown grace of at most ``max_shutdown_grace`` seconds
        when given; and, ``offline``, without the Anthropic and Companies House keys,
        so its agents run in their offline modes. It records its agent types as every
        daemon does. It installs no signal handlers."""
        ...

    def print_json(self, document: Any) -> None:
        """``document`` as the one JSON document of ``--json`` output, on stdout."""
        ...

    def print_table(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
        """Rows as the CLI's aligned text table, on stdout."""
        ...


