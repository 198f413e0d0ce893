"""Every Prometheus metric of agent-runner; the only module that imports prometheus_client.

The rest of the runner calls the small functions below (``task_started``,
``attempt_finished``, ``llm_call`` ...) and never sees a metric object, so names, label
sets and buckets are decided here once.

Design choices:

* **A dedicated registry** (:data:`REGISTRY`), not prometheus_client's global one: other
  libraries in the process cannot leak series into our scrape, and nothing we do can
  collide with theirs. The standard process / platform / GC collectors are registered
  on it. One process is one scrape target: several daemons started in one process (as
  tests do) share these series. Building the metric objects at import does no I/O.
* **Bounded labels only**: ``agent_type``, ``status``, ``outcome``, ``model``, ``kind``,
  ``service`` (and ``version`` on the build-info gauge). Closed vocabularies (outcomes,
  services, token kinds) reject unknown values with ``ValueError``, because an unknown
  value is a bug in the caller. ``agent_type`` values outside the loaded agent types
  (:func:`set_agent_types`, which the daemon calls with its plugins' types), and
  ``model`` values past the first :data:`MAX_MODELS`, are counted as ``"other"``: those
  come from data, and a metrics call must never fail a task.
* **Attempts, not tasks**: one counter ``agent_runner_task_attempts_started_total`` and
  one ``agent_runner_task_attempts_finished_total{outcome}``, rather than five counters
  named after outcomes. A task's end state is an attempt outcome (``completed``,
  ``failed`` = permanent, ``cancelled``), a retry is the ``retry`` outcome, and one
  label lets PromQL compute any ratio. ``started - sum(finished)`` is what is running.
* **Queue figures come from Postgres**, which is the queue, but never at scrape time: a
  scrape must stay cheap and must not fail when the database is slow. The daemon runs
  :func:`refresh_task_counts` every few seconds; a custom collector serves the last
  snapshot and its timestamp, so staleness is visible.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any, Final, Literal, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool

from runner import __version__
from runner.outcomes import Outcome
from runner.store.monitoring import DbSnapshot, fetch_db_snapshot

__all__ = [
    "ATTEMPT_OUTCOMES",
    "CONTENT_TYPE",
    "HTTP_OUTCOMES",
    "HTTP_SERVICES",
    "MAX_MODELS",
    "OTHER",
    "PRUNED_TABLES",
    "REGISTRY",
    "TASK_STATUSES",
    "TOKEN_KINDS",
    "WEBHOOK_OUTCOMES",
    "BoundedLabelValues",
    "DbSnapshot",
    "DbSnapshotCollector",
    "HttpOutcome",
    "HttpService",
    "TokenKind",
    "attempt_finished",
    "budget_deferral",
    "classify_http_status",
    "cron_fired",
    "daemon_started",
    "daemon_stopping",
    "fetch_db_snapshot",
    "heartbeat",
    "http_call",
    "llm_call",
    "llm_rate_limited",
    "llm_replayed_call",
    "llm_throttle_wait",
    "refresh_task_counts",
    "render",
    "rescued",
    "rows_pruned",
    "set_agent_types",
    "set_db_snapshot",
    "set_in_flight",
    "task_started",
    "webhook_delivery",
]

# Vocabularies -------------------------------------------------------------------------

#: The ``agent_tasks.status`` values; every one is always exported, zero-filled.
TASK_STATUSES: Final = ("pending", "processing", "completed", "failed", "cancelled")

#: The ``outcome`` label: the closed vocabulary of :class:`runner.outcomes.Outcome`.
ATTEMPT_OUTCOMES: Final[tuple[str, ...]] = tuple(outcome.value for outcome in Outcome)

HttpService = Literal["companies_house", "website", "anthropic"]
HTTP_SERVICES: Final[tuple[str, ...]] = get_args(HttpService)
HttpOutcome = Literal[
    "ok", "not_found", "rate_limited", "client_error", "server_error", "timeout", "error"
]
HTTP_OUTCOMES: Final[tuple[str, ...]] = get_args(HttpOutcome)

TokenKind = Literal["input", "output", "cache_creation", "cache_read"]
TOKEN_KINDS: Final[tuple[str, ...]] = get_args(TokenKind)

#: The ``table`` label of ``agent_runner_pruned_rows_total``: what retention deletes from.
PRUNED_TABLES: Final = (
    "agent_tasks", "agent_executions", "agent_task_logs", "procrastinate_jobs",
    "procrastinate_events", "workflow_runs", "workflow_run_steps", "llm_calls",
    "webhook_events", "webhook_deliveries",
)

#: Outcomes of one webhook delivery attempt (runner.webhooks.DeliveryOutcome).
WEBHOOK_OUTCOMES: Final = (
    "delivered", "retry", "gave_up", "fenced", "interrupted", "unrecorded",
)

#: Distinct ``model`` label values kept before further ones are counted as ``"other"``.
MAX_MODELS: Final = 32
OTHER: Final = "other"

# The classic text format, version 0.0.4. prometheus_client 0.26's CONTENT_TYPE_LATEST
# announces 1.0.0 (UTF-8 names), which older scrapers and promtool do not know; our
# names are all legacy-valid, so the body is the same and 0.0.4 is the honest label.
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4

# Buckets ------------------------------------------------------------------------------

# An attempt takes from a millisecond (noop) to the ten minutes an LLM agent may run.
_DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)
# Waiting starts at LISTEN/NOTIFY latency (milliseconds) and, under a backlog or while
# paused, reaches hours; past an hour the exact figure no longer changes any decision.
_QUEUE_WAIT_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)

# Registry and metrics -----------------------------------------------------------------

REGISTRY: Final = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

_build_info = Gauge(
    "agent_runner_build_info",
    "Always 1; the version label says which agent-runner build is running.",
    ["version"],
    registry=REGISTRY,
)
_daemon_up = Gauge(
    "agent_runner_daemon_up",
    "1 while the daemon is running and claiming work, 0 once it has begun to stop.",
    registry=REGISTRY,
)
_last_heartbeat = Gauge(
    "agent_runner_last_heartbeat_timestamp_seconds",
    "Unix time of this daemon's last successful heartbeat to Postgres.",
    registry=REGISTRY,
)
_in_flight = Gauge(
    "agent_runner_in_flight_tasks",
    "Attempts this daemon is running right now.",
    registry=REGISTRY,
)
_attempts_started = Counter(
    "agent_runner_task_attempts_started",
    "Attempts this daemon claimed and began to run.",
    ["agent_type"],
    registry=REGISTRY,
)
_attempts_finished = Counter(
    "agent_runner_task_attempts_finished",
    "Attempts this daemon finished, by outcome: completed, retry (failed, will run "
    "again), failed (permanently), cancelled, timeout, interrupted (handed back at "
    "shutdown), deferred (an LLM budget reached: pending again at its next period, no "
    "retry spent), fenced (lost its task), skipped (stale job).",
    ["agent_type", "outcome"],
    registry=REGISTRY,
)
_execution_duration = Histogram(
    "agent_runner_execution_duration_seconds",
    "Wall-clock time of one attempt, from claim to recorded outcome.",
    ["agent_type"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
_queue_wait = Histogram(
    "agent_runner_queue_wait_seconds",
    "Time from a task's scheduled_for to the start of its attempt.",
    ["agent_type"],
    buckets=_QUEUE_WAIT_BUCKETS,
    registry=REGISTRY,
)
_rescued = Counter(
    "agent_runner_rescued_attempts",
    "Attempts of dead daemons that this daemon rescued.",
    registry=REGISTRY,
)
_cron_fires = Counter(
    "agent_runner_cron_fires",
    "Tasks enqueued by the cron scheduler.",
    ["agent_type"],
    registry=REGISTRY,
)
_llm_calls = Counter(
    "agent_runner_llm_calls",
    "Model calls made by agents.",
    ["model"],
    registry=REGISTRY,
)
_llm_tokens = Counter(
    "agent_runner_llm_tokens",
    "Tokens billed for model calls, by kind: input, output, cache_creation, cache_read.",
    ["model", "kind"],
    registry=REGISTRY,
)
_llm_cost = Counter(
    "agent_runner_llm_cost_usd",
    "Cost of model calls in US dollars, at the prices in the cost ledger.",
    ["model"],
    registry=REGISTRY,
)
_llm_replayed_calls = Counter(
    "agent_runner_llm_replayed_calls",
    "Model turns replayed from the LLM journal by a later attempt instead of called again.",
    ["model"],
    registry=REGISTRY,
)
_http_calls = Counter(
    "agent_runner_http_calls",
    "Outbound HTTP calls made by agents, by service and outcome.",
    ["service", "outcome"],
    registry=REGISTRY,
)
_webhook_deliveries = Counter(
    "agent_runner_webhook_deliveries",
    "Webhook delivery attempts this daemon made, by outcome: delivered (2xx), retry "
    "(failed, attempted again later), gave_up (failed after 24 h of retries), fenced "
    "(its lease was lost), interrupted (handed back at shutdown), unrecorded.",
    ["outcome"],
    registry=REGISTRY,
)
_db_snapshot_errors = Counter(
    "agent_runner_db_snapshot_errors",
    "Failed refreshes of the task figures read from Postgres.",
    registry=REGISTRY,
)
_pruned_rows = Counter(
    "agent_runner_pruned_rows",
    "Rows of finished history this daemon's automatic prune deleted, by table.",
    ["table"],
    registry=REGISTRY,
)
_llm_rate_limited = Counter(
    "agent_runner_llm_rate_limited",
    "429 responses received from the model provider (each pauses the model for every "
    "daemon for its retry-after).",
    ["model"],
    registry=REGISTRY,
)
_llm_throttle_wait = Histogram(
    "agent_runner_llm_throttle_wait_seconds",
    "Time a model call waited for the shared provider limiter before it was sent.",
    ["model"],
    buckets=(0.0, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
    registry=REGISTRY,
)
_budget_deferrals = Counter(
    "agent_runner_budget_deferrals",
    "Attempts deferred to a budget's next period because a model call would cross an "
    "LLM budget.",
    ["agent_type"],
    registry=REGISTRY,
)

# Every known combination exists from the start at 0, so rate() and the alert ratios
# have a series to work on before the first event, and dashboards show zeros, not gaps.
# (Those of the agent types once they are known: set_agent_types.)
for _service in HTTP_SERVICES:
    for _http_outcome in HTTP_OUTCOMES:
        _http_calls.labels(_service, _http_outcome)
for _table in PRUNED_TABLES:
    _pruned_rows.labels(_table)
for _webhook_outcome in WEBHOOK_OUTCOMES:
    _webhook_deliveries.labels(_webhook_outcome)
# Known from the start, like python_info; daemon_started() restates it.
_build_info.labels(__version__).set(1)


# Bounded label values -------------------------------------------------------------------


class BoundedLabelValues:
    """Admits the first ``limit`` distinct values of an open-ended label; later ones
    become ``"other"``, so a typo'd or generated value cannot explode the series count."""

    def __init__(self, limit: int, *, max_length: int = 100) -> None:
        self._limit = limit
        self._max_length = max_length
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if not value or len(value) > self._max_length or len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


_model_label = BoundedLabelValues(MAX_MODELS)
#: The agent types of this process's registry (set_agent_types); others are "other".
_known_agent_types: frozenset[str] = frozenset()


def _agent_type_label(agent_type: str) -> str:
    return agent_type if agent_type in _known_agent_types else OTHER


def _closed(value: str, vocabulary: tuple[str, ...], what: str) -> str:
    if value not in vocabulary:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(vocabulary)}")
    return value


# What the executor, the context and the daemon call -------------------------------------


def set_agent_types(agent_types: Iterable[str]) -> None:
    """The agent types this daemon loaded (``Registry.types()``): from now on their
    series exist, at 0 until used, and every other ``agent_type`` counts as ``"other"``.
    Called again, it replaces the set; series already exported stay (a counter that
    vanished would read as a reset)."""
    global _known_agent_types
    known = frozenset(agent_types)
    for agent_type in sorted(known):
        _attempts_started.labels(agent_type)
        _execution_duration.labels(agent_type)
        _queue_wait.labels(agent_type)
        _cron_fires.labels(agent_type)
        for outcome in ATTEMPT_OUTCOMES:
            _attempts_finished.labels(agent_type, outcome)
    _known_agent_types = known


def daemon_started(version: str) -> None:
    """The daemon is up: publish the build and mark it claiming."""
    _build_info.clear()
    _build_info.labels(version).set(1)
    _daemon_up.set(1)


def daemon_stopping() -> None:
    """The daemon has begun to stop (first SIGTERM); in-flight work may still finish."""
    _daemon_up.set(0)


def heartbeat(at: float | None = None) -> None:
    """A heartbeat reached Postgres (``at``: Unix time, default now)."""
    _last_heartbeat.set(time.time() if at is None else at)


def set_in_flight(count: int) -> None:
    _in_flight.set(count)


def task_started(*, agent_type: str, queue_wait_seconds: float) -> None:
    """An attempt was claimed; ``queue_wait_seconds`` runs from ``scheduled_for``."""
    label = _agent_type_label(agent_type)
    _attempts_started.labels(label).inc()
    # Clocks of the daemon and the database may disagree by a little; a negative wait
    # would corrupt the histogram's sum.
    _queue_wait.labels(label).observe(max(0.0, queue_wait_seconds))


def attempt_finished(*, agent_type: str, outcome: Outcome, duration_seconds: float) -> None:
    """An attempt ended with ``outcome``."""
    label = _agent_type_label(agent_type)
    outcome_label = _closed(str(outcome), ATTEMPT_OUTCOMES, "attempt outcome")
    _attempts_finished.labels(label, outcome_label).inc()
    _execution_duration.labels(label).observe(max(0.0, duration_seconds))


def rescued(count: int) -> None:
    """``count`` attempts of dead daemons were rescued."""
    if count < 0:
        raise ValueError(f"rescued count must be >= 0, got {count}")
    _rescued.inc(count)


def cron_fired(agent_type: str) -> None:
    """The scheduler enqueued one task for an agent of this type."""
    _cron_fires.labels(_agent_type_label(agent_type)).inc()


def rows_pruned(counts: Mapping[str, int]) -> None:
    """A prune pass deleted ``counts[table]`` rows of each table (in
    :data:`PRUNED_TABLES`)."""
    for table, count in counts.items():
        if count < 0:
            raise ValueError(f"pruned row count must be >= 0, got {count} for {table}")
        _pruned_rows.labels(_closed(table, PRUNED_TABLES, "pruned table")).inc(count)


def llm_call(
    *,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cache_creation_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
    cost_usd: float | Decimal = 0.0,
) -> None:
    """One model call's usage (argument names follow ``runner.api.LLMCallRecord``)."""
    tokens = {
        "input": input_tokens,
        "output": output_tokens,
        "cache_creation": cache_creation_input_tokens,
        "cache_read": cache_read_input_tokens,
    }
    if any(count < 0 for count in tokens.values()) or cost_usd < 0:
        raise ValueError(f"token counts and cost must be >= 0, got {tokens} and {cost_usd}")
    label = _model_label(model)
    _llm_calls.labels(label).inc()
    for kind, count in tokens.items():
        _llm_tokens.labels(label, kind).inc(count)
    _llm_cost.labels(label).inc(float(cost_usd))


def llm_replayed_call(*, model: str) -> None:
    """A model turn a retry took from the journal (no call, no cost)."""
    _llm_replayed_calls.labels(_model_label(model)).inc()


def llm_rate_limited(model: str) -> None:
    """A 429 arrived for ``model``."""
    _llm_rate_limited.labels(_model_label(model)).inc()


def llm_throttle_wait(model: str, seconds: float) -> None:
    """A call to ``model`` waited ``seconds`` for the shared limiter (0 included)."""
    _llm_throttle_wait.labels(_model_label(model)).observe(max(0.0, seconds))


def budget_deferral(agent_type: str) -> None:
    """A call of an agent of this type would have crossed a budget: its task waits."""
    _budget_deferrals.labels(_agent_type_label(agent_type)).inc()


def http_call(*, service: str, outcome: str) -> None:
    """One outbound HTTP call (``service`` in :data:`HTTP_SERVICES`, ``outcome`` in
    :data:`HTTP_OUTCOMES`; :func:`classify_http_status` maps a status code)."""
    _http_calls.labels(
        _closed(service, HTTP_SERVICES, "HTTP service"),
        _closed(outcome, HTTP_OUTCOMES, "HTTP outcome"),
    ).inc()


def webhook_delivery(outcome: str) -> None:
    """One webhook delivery attempt ended (``outcome`` in :data:`WEBHOOK_OUTCOMES`)."""
    _webhook_deliveries.labels(_closed(outcome, WEBHOOK_OUTCOMES, "webhook outcome")).inc()


def classify_http_status(status_code: int) -> HttpOutcome:
    """The ``outcome`` label for an HTTP response, so every client classifies alike.
    Redirects count as ``ok``: clients follow them and the final status is what matters."""
    if status_code < 400:
        return "ok"
    if status_code == 404:
        return "not_found"
    if status_code == 429:
        return "rate_limited"
    if status_code < 500:
        return "client_error"
    return "server_error"


# Task figures read from Postgres ----------------------------------------------------------


class DbSnapshotCollector(Collector):
    """Serves the last :class:`DbSnapshot`; emits nothing before the first one, because
    "no data yet" must not read as "the queue is empty"."""

    def __init__(self) -> None:
        # Replaced whole, never mutated: a scrape in another thread sees one snapshot.
        self.snapshot: DbSnapshot | None = None

    def describe(self) -> Iterable[Metric]:
        # Names only, so the registry can refuse duplicates without a database.
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self.snapshot))

    @staticmethod
    def _families(snapshot: DbSnapshot | None) -> Iterator[Metric]:
        tasks = GaugeMetricFamily(
            "agent_runner_tasks",
            "Tasks in agent_tasks by status (cluster-wide, read from Postgres).",
            labels=["status"],
        )
        gauges = [
            GaugeMetricFamily(
                "agent_runner_oldest_pending_age_seconds",
                "Age of the oldest pending task that is due to run (0 when none).",
            ),
            GaugeMetricFamily(
                "agent_runner_oldest_processing_age_seconds",
                "Run time so far of the oldest attempt of a processing task (0 when none).",
            ),
            GaugeMetricFamily(
                "agent_runner_processing_overdue_seconds",
                "Longest time a processing task has run past its agent's timeout (0 when none).",
            ),
            GaugeMetricFamily(
                "agent_runner_paused",
                "1 while claiming is paused on every daemon (agent-runner pause).",
            ),
            GaugeMetricFamily(
                "agent_runner_db_snapshot_timestamp_seconds",
                "Unix time at which the task figures above were read from Postgres.",
            ),
        ]
        if snapshot is not None:
            for status in TASK_STATUSES:
                tasks.add_metric([status], snapshot.task_counts.get(status, 0))
            values = (
                snapshot.oldest_pending_age_seconds,
                snapshot.oldest_processing_age_seconds,
                snapshot.processing_overdue_seconds,
                float(snapshot.paused),
                snapshot.taken_at,
            )
            for family, value in zip(gauges, values, strict=True):
                family.add_metric([], value)
        yield tasks
        yield from gauges


_db_collector = DbSnapshotCollector()
REGISTRY.register(_db_collector)


def set_db_snapshot(snapshot: DbSnapshot) -> None:
    _db_collector.snapshot = snapshot


async def refresh_task_counts(
    pool: AsyncConnectionPool[Any], *, pool_timeout: float = 5.0
) -> None:
    """Read the queue figures once and serve them until the next refresh. The daemon
    runs this every few seconds; errors are counted and re-raised for its supervisor
    (the previous snapshot stays, its timestamp showing its age). ``pool_timeout``
    bounds the wait for a connection; a statement timeout bounds the queries."""
    try:
        async with pool.connection(timeout=pool_timeout) as conn:
            snapshot = await fetch_db_snapshot(conn)
    except Exception:
        _db_snapshot_errors.inc()
        raise
    set_db_snapshot(snapshot)


# Exposition ----------------------------------------------------------------------------


def render() -> bytes:
    """The classic text exposition of :data:`REGISTRY` (content type :data:`CONTENT_TYPE`)."""
    return generate_latest(REGISTRY)
