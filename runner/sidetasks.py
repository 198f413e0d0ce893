"""The one transient-failure policy of the daemon's side tasks.

Every side task (heartbeat, rescuer, metrics refresh, the pause listener, the cron
scheduler) talks to Postgres in a loop. Connection trouble is expected (a restart, a
failover, a dropped connection): it is logged, waited out with jittered exponential
backoff, and retried. Only when it has lasted :attr:`TransientPolicy.give_up_after`
seconds (``RUNNER_DB_OUTAGE_LIMIT``) does the side task give up, and with it the daemon
(loudly, exit 1). Any other error is a bug and ends the side task at once. The claim
and the finish of attempts are retried under the same policy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import psycopg
import psycopg_pool

from runner.api import backoff_delay

logger = logging.getLogger("runner.sidetasks")

T = TypeVar("T")

#: What counts as connection trouble rather than a bug.
TRANSIENT_ERRORS: Final = (
    OSError, TimeoutError, psycopg.OperationalError, psycopg_pool.PoolTimeout,
)


@dataclasses.dataclass(frozen=True, slots=True)
class TransientPolicy:
    #: give up once the trouble has lasted this long (``RUNNER_DB_OUTAGE_LIMIT``)
    give_up_after: float = 300.0
    #: backoff: about base, 2*base, 4*base ... at most max_delay seconds
    base_delay: float = 0.25
    max_delay: float = 5.0

    def delay(self, failures: int) -> float:
        return backoff_delay(failures, base=self.base_delay, cap=self.max_delay)


#: Side tasks wait out any outage: the heartbeat alone decides when the daemon gives up
#: (``runner.daemon.DatabaseHealth``).
DEFAULT_POLICY: Final = TransientPolicy(give_up_after=float("inf"))


class Retrying:
    """One side task's run of consecutive transient failures, waited out."""

    def __init__(self, name: str, policy: TransientPolicy = DEFAULT_POLICY) -> None:
        self.name = name
        self.policy = policy
        self.failures = 0
        self._since: float | None = None

    def succeeded(self) -> None:
        if self.failures:
            logger.info(f"{self.name}_recovered", extra={"failures": self.failures})
        self.failures = 0
        self._since = None

    async def failed(self, exc: BaseException) -> None:
        """Log the failure and wait before the next try; re-raise ``exc`` once the
        trouble has lasted longer than the policy allows."""
        now = time.monotonic()
        if self._since is None:
            self._since = now
        self.failures += 1
        logger.warning(f"{self.name}_failed", extra={
            "error": str(exc), "failures": self.failures})
        if now - self._since >= self.policy.give_up_after:
            raise exc
        await asyncio.sleep(self.policy.delay(self.failures))


async def retry_transient(
    operation: Callable[[], Awaitable[T]], name: str, policy: TransientPolicy = DEFAULT_POLICY
) -> T:
    """``operation()``, tried again while it fails on connection trouble."""
    retrying = Retrying(name, policy)
    while True:
        try:
            result = await operation()
        except TRANSIENT_ERRORS as exc:
            await retrying.failed(exc)
            continue
        retrying.succeeded()
        return result


async def every(
    interval: float,
    step: Callable[[], Awaitable[Any]],
    name: str,
    *,
    policy: TransientPolicy = DEFAULT_POLICY,
) -> None:
    """Run ``step`` every ``interval`` seconds, for ever, under the policy."""
    retrying = Retrying(name, policy)
    while True:
        try:
            await step()
        except TRANSIENT_ERRORS as exc:
            await retrying.failed(exc)
            continue
        retrying.succeeded()
        await asyncio.sleep(interval)


async def run_to_end(step: Awaitable[T]) -> tuple[T, bool]:
    """Run ``step`` to its end even if we are cancelled meanwhile (a claim, a finish,
    a delivery record is never abandoned half way). Returns its result and whether a
    cancellation arrived meanwhile (consumed here; the caller decides what it means)."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task), False
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None:
            while current.uncancel():
                pass
        return await task, True
