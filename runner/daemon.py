"""``agent-runner run``: the delivery worker, the supervised side tasks, and shutdown.

The worker (:mod:`runner.delivery`, procrastinate underneath) claims attempts and runs
them through the executor. Around it every daemon runs the same side tasks, each with
a ``*_once`` step that tests call directly:

* heartbeat: proves this daemon alive in ``runner_daemons`` (and pings systemd's watchdog);
* rescuer: re-queues attempts whose daemon died or whose job ended without a finish;
* metrics refresh: the queue figures behind the gauges;
* control: the cluster-wide pause switch (LISTEN, polling as the fallback);
* cron: the APScheduler-driven scheduler (:mod:`runner.scheduler`);
* retention: prunes finished history past retention (:mod:`runner.retention`);
* webhooks: delivers the outbox (:mod:`runner.webhooks`).

Connection trouble in a side task is retried under one policy (:mod:`runner.sidetasks`);
if a side task dies anyway, the daemon stops loudly (exit 1) rather than limp on.

Signals only set state. First SIGTERM/SIGINT: stop claiming, wait the grace period,
then hand unfinished attempts back without spending a retry; exit 0. Second: hand back
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Final

import httpx
import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool
from psycopg_pool.base import AttemptWithBackoff

from runner import __version__, metrics, retention, sdnotify, sidetasks
from runner.delivery import Delivery
from runner.errors import DatabaseUnreachable, Unhealthy
from runner.executor import Executor
from runner.http import MetricsServer
from runner.migrate import check_schema_current
from runner.outcomes import StopReason
from runner.plugins import Registry, load_registry
from runner.redaction import Redactor
from runner.scheduler import scheduler_side_task
from runner.settings import Settings
from runner.store import Conn, agent_types, channels
from runner.store import daemons as store
from runner.store.text import make_storable
from runner.webhooks import webhook_side_task

logger = logging.getLogger("runner.daemon")

_CONTROL_POLL_SECONDS: Final = 2.0
_METRICS_REFRESH_SECONDS: Final = 5.0

SideTask = Callable[["Daemon"], Coroutine[Any, Any, None]]


async def _autocommit(
    conn: psycopg.AsyncConnection[Any], *, scrub: Callable[[str], str] | None = None
) -> None:
    """Pooled connections run in autocommit: single statements (procrastinate's fetch,
    the claim, the finish) then cost one round trip instead of BEGIN/…/COMMIT, and
    multi-statement writes say so with ``conn.transaction()``. Every text and JSON value
    they send has its NUL characters removed (Postgres refuses them), and the API keys
    ``scrub`` knows (runner.redaction: an error body echoing a key, a model repeating
    one)."""
    await conn.set_autocommit(True)
    make_storable(conn, scrub=scrub)


class _ReconnectSoon(AttemptWithBackoff):
    """psycopg_pool's reconnection backoff doubles without a cap (1, 2, 4 ... 128 s
    within its timeout): after an outage of a minute the pool would stay empty for
    another minute. Capped, it reconnects within seconds of the database's return."""

    MAX_DELAY: Final = 2.0

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, self.MAX_DELAY)


class DaemonPool(AsyncConnectionPool):
    """The daemon's pool: reconnects soon after an outage (see :class:`_ReconnectSoon`;
    it hooks a private method of the pinned psycopg_pool), and checks a connection at
    checkout unless it came back from a caller moments ago.

    The check (an empty query: one round trip) replaces a connection that broke while
    idle -- a restart, a failover, an idle timeout -- instead of failing its next
    statement. A connection returned within :data:`CHECK_BYPASS_SECONDS` was just
    seen working, so it is handed out without one (HikariCP's ``aliveBypassWindowMs``,
    500 ms by default, is the same rule): under load that saves a round trip on
    nearly every checkout, and a connection that broke in that half second fails its
    statement like one that breaks mid-use, which every caller already retries.
    """

    #: a connection back in the pool for less than this is not checked again
    CHECK_BYPASS_SECONDS = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._returned_at: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        kwargs.setdefault("check", self._check_unless_recent)
        super().__init__(*args, **kwargs)

    async def putconn(self, conn: Any) -> None:
        if not conn.closed:
            self._returned_at[conn] = time.monotonic()
        await super().putconn(conn)

    async def _check_unless_recent(self, conn: Any) -> None:
        returned = self._returned_at.pop(conn, None)
        if (returned is not None and time.monotonic() - returned < self.CHECK_BYPASS_SECONDS
                and conn.info.transaction_status == TransactionStatus.IDLE):
            return
        await AsyncConnectionPool.check_connection(conn)

    async def _add_connection(
        self, attempt: AttemptWithBackoff | None = None, growing: bool = False
    ) -> None:
        if attempt is None:
            attempt = _ReconnectSoon(timeout=self.reconnect_timeout)
        await super()._add_connection(attempt, growing=growing)


class DatabaseHealth:
    """Whether the database answers, as this daemon's heartbeats find it."""

    def __init__(self, *, outage_limit: float, stale_after: float) -> None:
        self.outage_limit = outage_limit
        self.stale_after = stale_after
        self.ok_at = time.monotonic()
        self.down_since: float | None = None
        self.last_error = ""

    def ok(self) -> None:
        now = time.monotonic()
        if self.down_since is not None:
            logger.warning("database_reachable", extra={
                "down_seconds": round(now - self.down_since, 2)})
        self.down_since = None
        self.ok_at = now

    def failed(self, exc: BaseException) -> None:
        """Note a failure; raise :class:`DatabaseUnreachable` once the database has
        been away longer than the outage limit."""
        now = time.monotonic()
        self.last_error = str(exc).strip() or type(exc).__name__
        if self.down_since is None:
            self.down_since = now
            logger.warning("database_unreachable", extra={
                "error": self.last_error, "exit_after_seconds": self.outage_limit})
        if now - self.down_since >= self.outage_limit:
            raise DatabaseUnreachable(
                f"the database has been unreachable for {now - self.down_since:.0f} s "
                f"(RUNNER_DB_OUTAGE_LIMIT={self.outage_limit:g}); last error: "
                f"{self.last_error}")

    def problem(self) -> str | None:
        """Why the daemon is unhealthy, or None."""
        if self.down_since is not None:
            return f"database unreachable for {time.monotonic() - self.down_since:.0f} s"
        age = time.monotonic() - self.ok_at
        if age > self.stale_after:
            return f"no heartbeat for {age:.0f} s"
        return None


class Daemon:
    def __init__(
        self,
        settings: Settings,
        conninfo: str,
        *,
        registry: Registry | None = None,
    ) -> None:
        self.settings = settings
        self.conninfo = conninfo
        self.registry = registry or load_registry()
        self.id = uuid.uuid4()
        self.stopping = False
        self.hard_stopping = False
        self._signals = 0
        self.pool: AsyncConnectionPool | None = None
        self.executor: Executor | None = None
        self.delivery: Delivery | None = None
        self.metrics_server: MetricsServer | None = None
        self.database = DatabaseHealth(
            outage_limit=settings.db_outage_limit,
            stale_after=max(3 * settings.heartbeat_interval, settings.heartbeat_deadline * 2))
        self._heartbeat_conn: psycopg.AsyncConnection[Any] | None = None

    # -- signals -------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("stop_requested", extra={"grace_seconds": self.settings.shutdown_grace})
            self.stopping = True
            sdnotify.stopping()
            metrics.daemon_stopping()
            if self.delivery is not None:
                self.delivery.stop()
        else:
            logger.warning("hard_stop_requested")
            self.hard_stopping = True
            if self.executor is not None:
                for running in list(self.executor.running.values()):
                    running.cancel()

    def _stop_reason(self) -> StopReason | None:
        return StopReason.SHUTDOWN if self.hard_stopping else None

    # -- side tasks: one step each -------------------------------------------------------

    async def heartbeat_once(self) -> None:
        """Prove this daemon alive on its own connection, within the heartbeat
        deadline (a busy pool must never make a working daemon look dead). Connection
        trouble is the database's health, judged here: past ``RUNNER_DB_OUTAGE_LIMIT``
        the daemon exits with :class:`DatabaseUnreachable`."""
        running = self.executor.running_task_ids() if self.executor else []
        try:
            async with asyncio.timeout(self.settings.heartbeat_deadline):
                conn = await self._heartbeat_connection()
                beat = await store.heartbeat(
                    conn, daemon_id=self.id, running=running, stopping=self.stopping)
                if not beat.registered:
                    # Another daemon presumed us dead and removed our row; our running
                    # attempts were rescued (their finishes will be fenced). Come back.
                    logger.warning("daemon_row_missing_reregistering")
                    await self._register(conn)
        except sidetasks.TRANSIENT_ERRORS as exc:
            await self._drop_heartbeat_connection()
            self.database.failed(exc)
            return
        self.database.ok()
        for task_id in beat.cancel_requested:
            # The abort notification did not reach this attempt (its worker was
            # restarted, or the notification was lost): cancel it from here.
            if self.executor is not None and self.executor.cancel(task_id,
                                                                  StopReason.USER_CANCEL):
                logger.info("attempt_cancel_from_heartbeat", extra={"task_id": str(task_id)})
        metrics.heartbeat()
        sdnotify.watchdog()

    async def _heartbeat_connection(self) -> psycopg.AsyncConnection[Any]:
        if self._heartbeat_conn is None or self._heartbeat_conn.closed:
            self._heartbeat_conn = await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True,
                connect_timeout=max(1, int(self.settings.heartbeat_deadline)))
        return self._heartbeat_conn

    async def _drop_heartbeat_connection(self) -> None:
        conn, self._heartbeat_conn = self._heartbeat_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def rescue_once(self) -> list[store.Rescued]:
        """Rescue orphaned attempts, then give pending tasks stranded without a
        delivery job a fresh one (see sql/0007_nothing_stranded.sql)."""
        assert self.pool is not None
        async with self.pool.connection() as conn:
            rescued = await store.rescue_orphans(conn, min_age_seconds=1.0)
            redelivered = await store.reconcile_pending(
                conn, stalled_after_seconds=self.settings.rescue_after)
        for item in rescued:
            logger.warning(
                "attempt_rescued",
                extra={"task_id": str(item.task_id), "execution_id": str(item.execution_id),
                       "outcome": item.outcome},
            )
        for stranded in redelivered:
            logger.warning("task_redelivered", extra={
                "task_id": str(stranded.task_id), "previous_job": stranded.previous_job_status})
        if redelivered and self.delivery is not None:
            self.delivery.wake_after(0)
        if rescued:
            metrics.rescued(len(rescued))
        return rescued

    async def refresh_metrics_once(self) -> None:
        assert self.pool is not None
        await metrics.refresh_task_counts(self.pool)

    async def control_once(self) -> bool:
        """Apply the cluster-wide pause switch; returns whether claiming is paused."""
        assert self.pool is not None and self.delivery is not None
        async with self.pool.connection() as conn:
            paused = await store.claiming_paused(conn)
        if self.delivery.set_paused(paused):
            logger.info("claiming_paused" if paused else "claiming_resumed")
        return paused

    async def _listen_control(self) -> None:
        """Pause/resume reach every daemon at once through NOTIFY; ``control_once``
        also runs every 2 s as the fallback for a missed notification."""
        retrying = sidetasks.Retrying("control")
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True
                ) as conn:
                    await channels.listen(conn, channels.CONTROL)
                    while True:
                        await self.control_once()
                        retrying.succeeded()
                        # Run the generator to its end: an abandoned notifies()
                        # generator keeps the connection's lock.
                        async for _ in conn.notifies(timeout=_CONTROL_POLL_SECONDS,
                                                     stop_after=1):
                            pass
            except sidetasks.TRANSIENT_ERRORS as exc:
                await retrying.failed(exc)

    async def _register(self, conn: Conn) -> None:
        await store.register_daemon(
            conn,
            daemon_id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            concurrency=self.settings.concurrency,
            poll_interval=self.settings.poll_interval,
            dead_after=self.settings.rescue_after,
        )

    def _side_tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        settings = self.settings
        assert self.pool is not None, "the pool opens before the side tasks start"
        pool = self.pool
        return {
            "heartbeat": sidetasks.every(
                self._heartbeat_period(), self.heartbeat_once, "heartbeat"),
            "rescuer": sidetasks.every(settings.heartbeat_interval, self.rescue_once, "rescuer"),
            "metrics_refresh": sidetasks.every(
                _METRICS_REFRESH_SECONDS, self.refresh_metrics_once, "metrics_refresh"),
            "control": self._listen_control(),
            "cron": scheduler_side_task(
                self.pool, conninfo=self.conninfo, settings=settings, daemon_id=self.id),
            # One daemon at a time prunes (an advisory lock); the others skip the pass.
            "retention": sidetasks.every(
                settings.prune_interval, lambda: retention.prune_once(pool, settings),
                "retention"),
            "webhooks": webhook_side_task(
                self.pool, settings, conninfo=self.conninfo, daemon_id=self.id),
        }

    def _heartbeat_period(self) -> float:
        """The heartbeat also feeds systemd's watchdog, so it must beat at least as
        often as the watchdog asks (half of WATCHDOG_USEC), whatever the setting says."""
        watchdog = sdnotify.watchdog_interval()
        period = self.settings.heartbeat_interval
        return min(period, watchdog) if watchdog else period

    # -- main ----------------------------------------------------------------------------

    async def run(self, *, install_signal_handlers: bool = True) -> int:
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.request_stop)
        settings = self.settings
        pool = DaemonPool(
            self.conninfo, min_size=2, max_size=settings.pool_size, open=False,
            name="agent-runner", timeout=settings.pool_timeout,
            configure=functools.partial(_autocommit, scrub=Redactor.for_storage(settings)),
            reconnect_timeout=settings.db_outage_limit,
        )
        await pool.open(wait=False)
        self.pool = pool
        try:
            await self._wait_for_database(pool)
        except BaseException:
            await pool.close()
            raise
        http = httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=5.0),
                                 follow_redirects=True)
        try:
            self.executor = Executor(
                pool=pool, settings=settings, registry=self.registry, http=http,
                daemon_id=self.id,
            )
            self.delivery = Delivery(
                self.executor, settings, name=f"agent-runner-{str(self.id)[:8]}",
                stop_reason=self._stop_reason, stopping=lambda: self.stopping,
            )
            await self.delivery.open(pool)
            host, port = settings.metrics_host_port
            self.metrics_server = MetricsServer(self._health, host=host, port=port)
            await self.metrics_server.start()
            async with pool.connection() as conn:
                # The types this daemon can run become creatable (CONTRACT.md).
                await agent_types.refresh(conn, self.registry.agent_type_rows())
                await self._register(conn)
            metrics.set_agent_types(self.registry.types())
            logger.info("agent_types_registered", extra={"agent_types": self.registry.types()})
            return await self._supervise()
        finally:
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            await self._drop_heartbeat_connection()
            await http.aclose()
            with contextlib.suppress(Exception):
                async with pool.connection(timeout=5) as conn:
                    await store.unregister_daemon(conn, self.id)
            await pool.close()
            if install_signal_handlers:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)

    async def _wait_for_database(self, pool: AsyncConnectionPool) -> None:
        """Wait until the database answers (a daemon may start before it), up to
        ``RUNNER_DB_OUTAGE_LIMIT``; then check that its schema fits this build."""
        failures = 0
        while True:
            try:
                # A direct probe says at once when the server is down; then the pool.
                probe = await psycopg.AsyncConnection.connect(self.conninfo, connect_timeout=5)
                await probe.close()
                await pool.wait(timeout=10.0)
                await asyncio.to_thread(check_schema_current, self.conninfo)
                break
            except sidetasks.TRANSIENT_ERRORS as exc:
                self.database.failed(exc)
                failures += 1
                await asyncio.sleep(sidetasks.DEFAULT_POLICY.delay(failures))
        self.database.ok()

    async def _health(self) -> None:
        """``/healthz``: the daemon's own recent heartbeat, no pool connection taken."""
        problem = self.database.problem()
        if problem is not None:
            # The response shows only the code; the problem goes to the log.
            raise Unhealthy("heartbeat", problem)

    async def _supervise(self) -> int:
        assert self.delivery is not None and self.metrics_server is not None
        settings = self.settings
        side = {asyncio.create_task(coro, name=name) for name, coro in self._side_tasks().items()}
        worker_task = asyncio.create_task(self.delivery.run(), name="worker")
        metrics.daemon_started(__version__)
        sdnotify.ready()
        logger.info("daemon_started", extra={
            "daemon_id": str(self.id), "concurrency": settings.concurrency,
            "poll_interval": settings.poll_interval, "metrics_url": self.metrics_server.url})
        exit_code = 0
        done, _ = await asyncio.wait({worker_task, *side}, return_when=asyncio.FIRST_COMPLETED)
        if worker_task not in done:
            for task in done:
                exc = task.exception()
                if isinstance(exc, DatabaseUnreachable):
                    logger.error("daemon_exiting", extra={"reason": str(exc)})
                else:
                    logger.error("side_task_died", extra={"side_task": task.get_name(),
                                                          "error": repr(exc)})
            exit_code = 1
            self.delivery.stop()
        # Wait without re-raising: a worker that crashed is logged and exits 1 below.
        await asyncio.wait({worker_task})
        if not worker_task.cancelled() and worker_task.exception() is not None:
            logger.error("worker_died", extra={"error": repr(worker_task.exception())})
            exit_code = 1
        elif not self.stopping and exit_code == 0:
            logger.error("worker_stopped_unexpectedly")
            exit_code = 1
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        logger.info("daemon_stopped", extra={"exit_code": exit_code})
        return exit_code
