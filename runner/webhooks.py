"""Webhook deliveries, as the Standard Webhooks specification describes them.

An event (``task.completed`` ...) is written to the outbox by a trigger, in the
transaction that causes it, with one pending attempt per subscribed endpoint
(sql/0010_webhooks.sql). Every daemon runs :func:`webhook_side_task`, which delivers:

* **claim**: :func:`deliver_once` leases due attempts, as many as it has free slots
  (``RUNNER_WEBHOOK_CONCURRENCY``), with ``FOR UPDATE SKIP LOCKED``, so daemons share
  the work. A claim is a lease with a visible expiry (``locked_until``), never a
  transaction held across the HTTP call: an attempt whose daemon was killed is
  recorded as failed when its lease runs out, and attempted again. Nothing is lost.
* **send**: a ``POST`` of ``{"type", "timestamp", "data"}`` with the headers
  ``webhook-id`` (the event's, the same on every attempt, so a receiver can drop a
  repeat), ``webhook-timestamp`` (this attempt's) and ``webhook-signature``
  (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` with the endpoint's
  ``whsec_`` secret, signed by the ``standardwebhooks`` package). The endpoint's host
  is resolved once per attempt, every address is checked (no private, loopback or
  other non-public address unless the endpoint has ``allow_private``), and the request
  goes to one of those checked addresses, with the original ``Host`` and TLS name.
  The client ignores proxy variables, follows no redirect and keeps no idle
  connection; one deadline (``RUNNER_WEBHOOK_TIMEOUT``) bounds resolve, connect and
  answer.
* **record**: a 2xx answer is ``succeeded``. Anything else (a network error, a
  timeout, a redirect, a non-2xx answer, a refused address) is ``failed``, and the
  next attempt is scheduled after a backoff (about ``RUNNER_WEBHOOK_RETRY_BASE_DELAY``,
  doubling, at most ``RUNNER_WEBHOOK_RETRY_MAX_DELAY``) until the event has been
  retried for :data:`RETRY_WINDOW` (24 h): the attempt that fails after that is
  ``gave_up``. The record is fenced on the lease, so a daemon that lost its lease
  writes nothing. Each attempt is one ``webhook_deliveries`` row.

Delivery is at least once: a receiver may see an event twice (a daemon killed after
the POST, before the record) and should drop repeats by ``webhook-id``. Events of one
endpoint are not ordered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime as dt
import ipaddress
import json
import logging
import os
import secrets
from collections.abc import Sequence
from typing import Final, Literal
from uuid import UUID

import httpx
import psycopg
import standardwebhooks
from psycopg_pool import AsyncConnectionPool

from runner import __version__, metrics, sidetasks
from runner.addresses import (
    AddressProblem,
    Resolver,
    checked_addresses,
    non_public_reason,
    resolve_host,
)
from runner.api import backoff_delay
from runner.settings import Settings
from runner.store import SyncConn, channels
from runner.store import webhooks as store
from runner.store.webhooks import ClaimedDelivery

__all__ = [
    "EVENT_TYPES",
    "RETRY_WINDOW",
    "TEST_EVENT",
    "AttemptResult",
    "DeliveryReport",
    "WebhookOptions",
    "WebhookTestReport",
    "WebhookWorker",
    "attempt_delivery",
    "deliver_once",
    "literal_address_problem",
    "message_body",
    "new_secret",
    "resolved_address_problem",
    "secret_problem",
    "send_test_event",
    "signed_headers",
    "url_problem",
    "webhook_client",
    "webhook_side_task",
]

logger = logging.getLogger("runner.webhooks")


#: The events an endpoint may subscribe to (CONTRACT.md; sql/0010_webhooks.sql).
EVENT_TYPES: Final = (
    "task.completed", "task.failed", "run.completed", "run.failed", "lead.critical",
    "budget.reached",
)
#: Sent by ``agent-runner webhooks test`` only; not subscribable.
TEST_EVENT: Final = "webhook.test"
#: An event is retried for at least this long (seconds) before it is given up.
RETRY_WINDOW: Final = 24 * 3600.0

#: Outcomes of one claimed attempt (the ``outcome`` label of the metric):
#: delivered (2xx), retry (failed, attempted again later), gave_up (failed after the
#: retry window), fenced (the lease was lost meanwhile: another daemon has it),
#: interrupted (handed back unattempted at shutdown), unrecorded (the outcome could not
#: be written within the lease; the lease's expiry brings the attempt back).
DeliveryOutcome = Literal["delivered", "retry", "gave_up", "fenced", "interrupted", "unrecorded"]
_OUTCOME_OF_STATUS: Final[dict[str, DeliveryOutcome]] = {
    "succeeded": "delivered", "failed": "retry", "gave_up": "gave_up", "fenced": "fenced",
}

_ERROR_BODY_CHARS: Final = 200
_SECRET_PREFIX: Final = "whsec_"


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookOptions:
    """How a daemon delivers (``RUNNER_WEBHOOK_*``; tests build their own)."""

    #: attempts in flight at once, per daemon
    concurrency: int = 4
    #: deadline of one attempt: resolve, connect, send, answer (seconds)
    timeout: float = 10.0
    retry_base_delay: float = 5.0
    retry_max_delay: float = 3600.0
    retry_window: float = RETRY_WINDOW
    #: look for due attempts this often when no notification arrives
    poll_interval: float = 5.0
    #: how long a claim is ours (seconds; default: ``timeout`` + 10)
    lease_seconds: float | None = None

    @property
    def lease(self) -> float:
        """How long a claim is ours: longer than an attempt may take (its deadline)
        plus recording it. A lease that ran out while its daemon still worked would
        send the event twice (which at-least-once allows, but need not provoke); one
        that is too long delays an event whose daemon was killed by that much."""
        return self.timeout + 10.0 if self.lease_seconds is None else self.lease_seconds

    def retry_delay(self, attempt: int) -> float:
        """Seconds before the attempt after ``attempt`` (which failed)."""
        return backoff_delay(attempt, base=self.retry_base_delay, cap=self.retry_max_delay)

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookOptions:
        return cls(
            concurrency=settings.webhook_concurrency,
            timeout=settings.webhook_timeout,
            retry_base_delay=settings.webhook_retry_base_delay,
            retry_max_delay=settings.webhook_retry_max_delay,
            poll_interval=settings.poll_interval,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one HTTP attempt came to (no database involved)."""

    succeeded: bool
    response_status: int | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryReport:
    delivery_id: int
    endpoint_id: UUID
    webhook_id: str
    event_type: str
    attempt: int
    outcome: DeliveryOutcome
    response_status: int | None = None
    error: str | None = None


# -- the message ----------------------------------------------------------------------


def _rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def message_body(delivery: ClaimedDelivery) -> bytes:
    """The POST body, the same bytes on every attempt of the event."""
    document = {
        "type": delivery.event_type,
        "timestamp": _rfc3339(delivery.event_created_at),
        "data": delivery.payload,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def signed_headers(
    secret: str, webhook_id: str, body: bytes, *, at: dt.datetime
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt sent at ``at``."""
    seconds = int(at.timestamp())
    signature = standardwebhooks.Webhook(secret).sign(
        webhook_id, dt.datetime.fromtimestamp(seconds, dt.UTC), body)
    return {
        "content-type": "application/json",
        "user-agent": f"agent-runner/{__version__}",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(seconds),
        "webhook-signature": signature,
    }


def new_secret() -> str:
    """A fresh secret: ``whsec_`` + base64 of 32 random bytes."""
    return _SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_problem(secret: str) -> str | None:
    """What is wrong with a secret given by the operator, or None."""
    if not secret.startswith(_SECRET_PREFIX):
        return "a webhook secret starts with 'whsec_' (then base64 of 24 to 64 random bytes)"
    try:
        key = base64.b64decode(secret[len(_SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        return "a webhook secret is 'whsec_' followed by base64 (with its '=' padding)"
    if not 24 <= len(key) <= 64:
        return f"a webhook secret must hold 24 to 64 bytes (this one holds {len(key)})"
    return None


# -- where it goes --------------------------------------------------------------------


def url_problem(url: str) -> str | None:
    """What is wrong with the form of a webhook URL, or None (addresses aside)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        return f"not a valid URL ({exc})"
    if parsed.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parsed.host:
        return "has no host"
    if len(url) > 2048:
        return "is longer than 2048 characters"
    return None


def _host_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def literal_address_problem(url: str) -> str | None:
    """Why the URL itself names a non-public address (``localhost``, or a literal
    address :func:`runner.addresses.non_public_reason` refuses), or None."""
    host = httpx.URL(url).host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is a loopback name"
    address = _host_address(host)
    if address is not None and (reason := non_public_reason(address)) is not None:
        return f"{address} is {reason}"
    return None


async def _checked_addresses(
    url: httpx.URL, allow_private: bool, resolve: Resolver
) -> list[str]:
    """The addresses to connect to: the host resolved once, each address checked."""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        return await checked_addresses(url.host, port, allow_private=allow_private,
                                       resolve=resolve)
    except AddressProblem as exc:
        if exc.kind == "non_public":
            raise AddressProblem(
                exc.kind, f"{exc}; the endpoint does not allow private addresses") from None
        raise


async def resolved_address_problem(
    url: str, *, resolve: Resolver = resolve_host, deadline: float = 5.0
) -> str | None:
    """Why a delivery to ``url`` would be refused today for its addresses, or None.
    Raises ``OSError`` when the host cannot be resolved within ``deadline`` seconds."""
    try:
        async with asyncio.timeout(deadline):
            await _checked_addresses(httpx.URL(url), False, resolve)
    except TimeoutError:
        raise OSError(f"cannot resolve {httpx.URL(url).host!r} within {deadline:g} s") from None
    except AddressProblem as exc:
        if exc.kind == "unresolvable":
            raise OSError(str(exc)) from None
        return str(exc)
    return None


def webhook_client(*, concurrency: int, timeout: float) -> httpx.AsyncClient:
    """The client deliveries need: it ignores proxy variables (a proxy would resolve the
    host again, after our check), follows no redirect (a redirect could lead anywhere;
    the endpoint's URL must be its final one) and keeps no idle connection (the pool is
    keyed by the address connected to, and two endpoints on one address must not share
    a connection made with the other's TLS name)."""
    return httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=0),
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
    )


async def _post(
    http: httpx.AsyncClient, url: httpx.URL, addresses: Sequence[str], body: bytes,
    headers: dict[str, str],
) -> tuple[int, str]:
    """POST to the first checked address that accepts a connection; the status and the
    start of the answer's body."""
    host_header = url.netloc.decode("ascii")
    extensions = {"sni_hostname": url.host} \
        if url.scheme == "https" and _host_address(url.host) is None else {}
    refused: httpx.ConnectError | None = None
    for address in addresses:
        request = http.build_request(
            "POST", url.copy_with(host=address), content=body,
            headers={**headers, "host": host_header}, extensions=extensions)
        try:
            response = await http.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError as exc:
            refused = exc
            continue
        try:
            text = ""
            async for chunk in response.aiter_text():
                text += chunk
                if len(text) >= _ERROR_BODY_CHARS:
                    break
            return response.status_code, " ".join(text.split())[:_ERROR_BODY_CHARS]
        finally:
            await response.aclose()
    assert refused is not None  # there is at least one address
    raise refused


async def attempt_delivery(
    http: httpx.AsyncClient,
    delivery: ClaimedDelivery,
    *,
    deadline: float,
    resolve: Resolver = resolve_host,
) -> AttemptResult:
    """One signed POST of the delivery's event, within ``deadline`` seconds in all.
    Never raises for what the endpoint or the network does: it is the result."""
    if http.trust_env or http.follow_redirects:
        raise ValueError("webhook deliveries need a client that ignores proxy variables and "
                         "follows no redirect (runner.webhooks.webhook_client)")
    body = message_body(delivery)
    try:
        url = httpx.URL(delivery.url)
        async with asyncio.timeout(deadline):
            addresses = await _checked_addresses(url, delivery.allow_private, resolve)
            headers = signed_headers(delivery.secret, delivery.webhook_id, body,
                                     at=dt.datetime.now(dt.UTC))
            status, answer = await _post(http, url, addresses, body, headers)
    except TimeoutError:
        return AttemptResult(False, error=f"no answer within {deadline:g} s")
    except AddressProblem as exc:
        return AttemptResult(False, error=f"refused: {exc}")
    except httpx.TimeoutException:
        return AttemptResult(False, error=f"no answer within {deadline:g} s")
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
        return AttemptResult(False, error=f"{type(exc).__name__}: {exc}".rstrip(": "))
    if 200 <= status < 300:
        return AttemptResult(True, response_status=status)
    if 300 <= status < 400:
        return AttemptResult(False, response_status=status, error=(
            f"HTTP {status}: redirects are not followed; give the endpoint its final URL"))
    return AttemptResult(False, response_status=status,
                         error=f"HTTP {status}" + (f": {answer}" if answer else ""))


# -- one claimed attempt, end to end ----------------------------------------------------


async def _deliver(
    pool: AsyncConnectionPool,
    http: httpx.AsyncClient,
    delivery: ClaimedDelivery,
    options: WebhookOptions,
    resolve: Resolver,
) -> DeliveryReport:
    fields = {"delivery_id": delivery.delivery_id, "endpoint_id": str(delivery.endpoint_id),
              "webhook_id": delivery.webhook_id, "event_type": delivery.event_type,
              "attempt": delivery.attempt}
    # Records are bounded by the lease: past it the attempt is another daemon's anyway.
    policy = sidetasks.TransientPolicy(give_up_after=options.lease)
    try:
        result = await attempt_delivery(http, delivery, deadline=options.timeout,
                                        resolve=resolve)
    except asyncio.CancelledError:
        # The daemon is stopping: hand the attempt back without spending it. The
        # receiver may have had it already; the next attempt has the same webhook-id.
        async def give_back() -> bool:
            async with pool.connection() as conn:
                return await store.release(conn, delivery)

        try:
            await sidetasks.run_to_end(
                sidetasks.retry_transient(give_back, "webhook_release", policy))
        except sidetasks.TRANSIENT_ERRORS:
            pass  # the lease's expiry brings it back
        metrics.webhook_delivery("interrupted")
        logger.info("webhook_delivery_interrupted", extra=fields)
        raise

    async def record() -> str:
        async with pool.connection() as conn:
            return await store.finish(
                conn, delivery, succeeded=result.succeeded,
                response_status=result.response_status, error=result.error,
                retry_delay=options.retry_delay(delivery.attempt),
                retry_window=options.retry_window)

    outcome: DeliveryOutcome
    try:
        status, _ = await sidetasks.run_to_end(
            sidetasks.retry_transient(record, "webhook_record", policy))
        outcome = _OUTCOME_OF_STATUS[status]
    except sidetasks.TRANSIENT_ERRORS as exc:
        outcome = "unrecorded"
        fields["record_error"] = str(exc)
    metrics.webhook_delivery(outcome)
    fields.update(outcome=outcome, response_status=result.response_status)
    if result.error is not None:
        fields["error"] = result.error
    logger.log(logging.INFO if outcome == "delivered" else logging.WARNING,
               "webhook_delivery", extra=fields)
    return DeliveryReport(
        delivery_id=delivery.delivery_id, endpoint_id=delivery.endpoint_id,
        webhook_id=delivery.webhook_id, event_type=delivery.event_type,
        attempt=delivery.attempt, outcome=outcome, response_status=result.response_status,
        error=result.error)


async def _claim(
    pool: AsyncConnectionPool, options: WebhookOptions, *, claimer: str, limit: int
) -> list[ClaimedDelivery]:
    async with pool.connection() as conn:
        return await store.claim(conn, limit=limit, lease_seconds=options.lease,
                                 claimer=claimer, retry_window=options.retry_window)


async def deliver_once(
    pool: AsyncConnectionPool,
    http: httpx.AsyncClient,
    options: WebhookOptions,
    *,
    claimer: str,
    limit: int | None = None,
    resolve: Resolver = resolve_host,
) -> list[DeliveryReport]:
    """Claim up to ``limit`` (default: ``options.concurrency``) due attempts, deliver
    them concurrently, record each; one step of the worker, which tests call directly."""
    claimed = await _claim(pool, options, claimer=claimer,
                           limit=options.concurrency if limit is None else limit)
    return list(await asyncio.gather(
        *(_deliver(pool, http, delivery, options, resolve) for delivery in claimed)))


# -- the side task ----------------------------------------------------------------------


class WebhookWorker:
    """Keeps up to ``options.concurrency`` attempts in flight, claiming as slots free
    up; woken by NOTIFY (an event, a retry, a hand-back) and by polling."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        http: httpx.AsyncClient,
        options: WebhookOptions,
        *,
        conninfo: str,
        claimer: str,
        resolve: Resolver = resolve_host,
    ) -> None:
        self._pool = pool
        self._http = http
        self._options = options
        self._conninfo = conninfo
        self._claimer = claimer
        self._resolve = resolve
        self._in_flight: set[asyncio.Task[DeliveryReport]] = set()
        self._wake = asyncio.Event()
        self._crashed: BaseException | None = None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def fill_once(self) -> tuple[int, int]:
        """Claim as many due attempts as there are free slots and start them;
        (claimed, asked for)."""
        free = self._options.concurrency - len(self._in_flight)
        if free <= 0:
            return 0, 0
        claimed = await _claim(self._pool, self._options, claimer=self._claimer, limit=free)
        for delivery in claimed:
            task = asyncio.create_task(
                _deliver(self._pool, self._http, delivery, self._options, self._resolve),
                name=f"webhook-delivery-{delivery.delivery_id}")
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
        return len(claimed), free

    def _finished(self, task: asyncio.Task[DeliveryReport]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None and self._crashed is None:
            self._crashed = task.exception()
        self._wake.set()

    async def _idle_seconds(self, claimed: int, asked: int) -> float:
        if asked and claimed == asked:
            return 0.0  # maybe more are due
        if len(self._in_flight) >= self._options.concurrency:
            return self._options.poll_interval  # a finished attempt wakes us
        async with self._pool.connection() as conn:
            due = await store.seconds_until_next_due(conn)
        if due is None:
            return self._options.poll_interval
        # A floor, so that rows another daemon holds locked cannot make us spin.
        return min(self._options.poll_interval, max(due, 0.05))

    async def _listen(self) -> None:
        retrying = sidetasks.Retrying("webhook_listen")
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await channels.listen(conn, channels.WEBHOOKS)
                    retrying.succeeded()
                    self._wake.set()  # whatever was written while nobody listened
                    while True:
                        # Run the generator to its end: an abandoned notifies()
                        # generator keeps the connection's lock.
                        async for _ in conn.notifies(timeout=self._options.poll_interval,
                                                     stop_after=1):
                            self._wake.set()
            except sidetasks.TRANSIENT_ERRORS as exc:
                await retrying.failed(exc)

    async def run(self) -> None:
        """Deliver until cancelled; then hand back what is in flight. Connection
        trouble is waited out; a bug raises (and the daemon stops loudly)."""
        listener = asyncio.create_task(self._listen(), name="webhook-listener")
        retrying = sidetasks.Retrying("webhooks")
        try:
            while True:
                if listener.done():
                    listener.result()
                    raise RuntimeError("the webhook listener stopped")
                if self._crashed is not None:
                    raise RuntimeError("a webhook delivery crashed") from self._crashed
                self._wake.clear()
                try:
                    claimed, asked = await self.fill_once()
                    idle = await self._idle_seconds(claimed, asked)
                except sidetasks.TRANSIENT_ERRORS as exc:
                    await retrying.failed(exc)
                    continue
                retrying.succeeded()
                if idle > 0:
                    try:
                        async with asyncio.timeout(idle):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
        finally:
            listener.cancel()
            for task in list(self._in_flight):
                task.cancel()
            await asyncio.gather(listener, *self._in_flight, return_exceptions=True)


async def webhook_side_task(
    pool: AsyncConnectionPool, settings: Settings, *, conninfo: str, daemon_id: UUID
) -> None:
    """The webhook delivery worker for a daemon's life: one of every daemon's side
    tasks."""
    options = WebhookOptions.from_settings(settings)
    async with webhook_client(concurrency=options.concurrency, timeout=options.timeout) as http:
        worker = WebhookWorker(pool, http, options, conninfo=conninfo,
                               claimer=f"daemon {daemon_id}")
        await worker.run()


# -- `agent-runner webhooks test` -------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookTestReport:
    webhook_id: str
    delivery_id: int
    result: AttemptResult
    #: the attempt's recorded status: succeeded, gave_up (a test is never retried), fenced
    status: str


def send_test_event(
    conn: SyncConn, endpoint_id: str, options: WebhookOptions, *,
    resolve: Resolver = resolve_host,
) -> WebhookTestReport | None:
    """Send one ``webhook.test`` event to the endpoint now, from this process, and record
    the attempt (never retried); None when there is no such endpoint."""
    delivery = store.start_test_delivery(
        conn, endpoint_id, lease_seconds=options.lease,
        claimer=f"agent-runner webhooks test (pid {os.getpid()})")
    if delivery is None:
        return None

    async def attempt() -> AttemptResult:
        async with webhook_client(concurrency=1, timeout=options.timeout) as http:
            return await attempt_delivery(http, delivery, deadline=options.timeout,
                                          resolve=resolve)

    result = asyncio.run(attempt())
    status = store.finish_sync(
        conn, delivery, succeeded=result.succeeded, response_status=result.response_status,
        error=result.error, retry_delay=0.0, retry_window=0.0)
    return WebhookTestReport(webhook_id=delivery.webhook_id, delivery_id=delivery.delivery_id,
                      result=result, status=status)
